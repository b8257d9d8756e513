"""Which container's processes use which GPU, and how much memory: NVML's compute processes mapped through cgroups.

NVML names processes by host pid; a container's processes carry its 64-hex id in their
/proc/<pid>/cgroup path (cgroup v1 `/docker/<id>`, v2 `.../docker-<id>.scope`). A GPU service
whose processes are on no GPU after it turned healthy has most likely fallen back to CPU.
"""

from __future__ import annotations

import re
from typing import Any

ID_RE = re.compile(r"[0-9a-f]{64}")


def container_of(pid: int) -> str:
    """The container id in a process's cgroup path ('' for a host process or a pid that is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            m = ID_RE.search(f.read())
    except OSError:
        return ""
    return m.group(0) if m else ""


def processes() -> list[dict[str, Any]]:
    """[{gpu, pid, used_mib, container}] for every compute process NVML reports."""
    import pynvml

    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h):
                used = (p.usedGpuMemory or 0) // (1024 * 1024)
                out.append({"gpu": i, "pid": int(p.pid), "used_mib": int(used), "container": container_of(int(p.pid))})
        return out
    finally:
        pynvml.nvmlShutdown()


def expected_gpus(gpus_count: int) -> set[int] | None:
    """The cards a container was given: Docker's `--gpus N` takes the first N; all (-1) means any (None)."""
    return None if gpus_count < 0 else set(range(gpus_count))


def check(container_id: str, service: str, budget_gb: float, procs: list[dict[str, Any]], tolerance: float = 0.10,
          expected: set[int] | None = None) -> str:
    """'' when the container uses a GPU within its budget (+ tolerance), on the cards it was given; else what is
    wrong, for the gate's reason. Pure."""
    mine = [p for p in procs if p["container"] == container_id]
    if not mine:
        return (f"{service} passed its health check but none of its processes is on a GPU: the model has most likely"
                " fallen back to CPU (check the NVIDIA runtime and the image's CUDA build)")
    elsewhere = sorted({p["gpu"] for p in mine} - expected) if expected is not None else []
    if elsewhere:
        return (f"{service} runs on GPU {', '.join(map(str, elsewhere))}, not on the GPU(s) it was given"
                f" ({', '.join(map(str, sorted(expected or ()))) or 'none'}): check CUDA_VISIBLE_DEVICES in the release")
    used_gb = sum(p["used_mib"] for p in mine) / 1024
    limit = budget_gb * (1 + tolerance)
    if used_gb > limit:
        gpus = ", ".join(sorted({str(p["gpu"]) for p in mine}))
        return (f"{service} uses {used_gb:.1f} GB on GPU {gpus}, more than its declared {budget_gb:.1f} GB"
                f" (+{tolerance:.0%}): raise gpu_memory_gb in the inventory or fix the release")
    return ""
