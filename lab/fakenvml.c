/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 used by the lab fleet.
 *
 * The lab has no GPU, but we want the agent's real pynvml code path to run: pynvml
 * loads "libnvidia-ml.so.1" with ctypes and calls these C symbols. Each lab host gets
 * its answers from environment variables that its sshd sets (SetEnv):
 *
 *   FAKE_NVML_DRIVER   driver version string, e.g. "550.54.14"
 *   FAKE_NVML_CUDA     CUDA driver version as NVML encodes it, e.g. 12040
 *   FAKE_NVML_GPUS     ";"-separated devices, each "name|major.minor|memory MiB"
 *   FAKE_NVML_FAIL     if set, nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED (9)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define MAX_GPUS 16

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { char name[96]; int major, minor; unsigned long long mib; } fake_gpu;

static fake_gpu gpus[MAX_GPUS];
static unsigned int gpu_count;

static void parse(void) {
    const char *spec = getenv("FAKE_NVML_GPUS");
    gpu_count = 0;
    if (!spec) return;
    char buf[2048];
    strncpy(buf, spec, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    char *save = NULL;
    for (char *dev = strtok_r(buf, ";", &save); dev && gpu_count < MAX_GPUS;
         dev = strtok_r(NULL, ";", &save)) {
        fake_gpu *g = &gpus[gpu_count];
        char *bar = strchr(dev, '|');
        if (!bar) continue;
        *bar = 0;
        strncpy(g->name, dev, sizeof g->name - 1);
        g->major = g->minor = 0;
        g->mib = 0;
        sscanf(bar + 1, "%d.%d|%llu", &g->major, &g->minor, &g->mib);
        gpu_count++;
    }
}

static int fill(char *out, unsigned int len, const char *value) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

static int handle_index(void *handle) {
    long i = (long)handle - 1;
    return (i >= 0 && i < (long)gpu_count) ? (int)i : -1;
}

int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (getenv("FAKE_NVML_FAIL")) return NVML_ERROR_DRIVER_NOT_LOADED;
    parse();
    return NVML_SUCCESS;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlInit(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    const char *v = getenv("FAKE_NVML_DRIVER");
    return fill(version, length, v ? v : "0.0");
}
int nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return fill(version, length, "12.550.0");
}
int nvmlSystemGetCudaDriverVersion(int *v) {
    const char *s = getenv("FAKE_NVML_CUDA");
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = s ? atoi(s) : 0;
    return NVML_SUCCESS;
}
int nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}
int nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
    if (!device || index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (void *)(long)(index + 1);
    return NVML_SUCCESS;
}
int nvmlDeviceGetHandleByIndex(unsigned int index, void **device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

int nvmlDeviceGetName(void *device, char *name, unsigned int length) {
    int i = handle_index(device);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    return fill(name, length, gpus[i].name);
}

int nvmlDeviceGetCudaComputeCapability(void *device, int *major, int *minor) {
    int i = handle_index(device);
    if (i < 0 || !major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = gpus[i].major;
    *minor = gpus[i].minor;
    return NVML_SUCCESS;
}

/* Memory in use per GPU, in MiB, read at every call from $FAKE_NVML_USED_FILE (numbers in GPU index
 * order), so tests can change it while hosts run. No file: nothing in use. */
static unsigned long long used_mib(int index) {
    const char *path = getenv("FAKE_NVML_USED_FILE");
    unsigned long long v = 0, out = 0;
    if (!path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    for (int i = 0; i <= index && fscanf(f, "%llu", &v) == 1; i++)
        if (i == index) out = v;
    fclose(f);
    return out;
}

int nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *memory) {
    int i = handle_index(device);
    if (i < 0 || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = gpus[i].mib * 1024ULL * 1024ULL;
    unsigned long long used = used_mib(i) * 1024ULL * 1024ULL;
    memory->used = used < memory->total ? used : memory->total;
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

int nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length) {
    int i = handle_index(device);
    char buf[80];
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(buf, sizeof buf, "GPU-fa4e0000-0000-4000-8000-%012d", i);
    return fill(uuid, length, buf);
}

/* Compute processes per GPU, read at every call from $FAKE_NVML_PROCS_FILE: one "GPU_INDEX PID USED_MIB"
 * per line, so a test can put a container's process "on" a GPU (or leave it off: a CPU fallback). */
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId; } nvmlProcessInfo_v2_t;

int nvmlDeviceGetComputeRunningProcesses_v2(void *device, unsigned int *count, nvmlProcessInfo_v2_t *infos) {
    int i = handle_index(device);
    if (i < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0, cap = *count;
    const char *path = getenv("FAKE_NVML_PROCS_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    int gpu;
    unsigned int pid;
    unsigned long long mib;
    int overflow = 0;
    if (f) {
        while (fscanf(f, "%d %u %llu", &gpu, &pid, &mib) == 3) {
            if (gpu != i) continue;
            if (infos && n < cap) {
                infos[n].pid = pid;
                infos[n].usedGpuMemory = mib * 1024ULL * 1024ULL;
                infos[n].gpuInstanceId = infos[n].computeInstanceId = 0xFFFFFFFF;
            } else if (!infos || n >= cap) {
                overflow = 1;
            }
            n++;
        }
        fclose(f);
    }
    *count = n;
    if (n == 0) return NVML_SUCCESS;
    return overflow ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}
