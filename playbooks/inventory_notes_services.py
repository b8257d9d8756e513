"""What each field of a service and of phases.yml is for, an example, and what reads it.

The rest of fleet.yml is in playbooks/inventory_notes.py; playbooks/inventory_doc.py joins both.
"""

from __future__ import annotations

from agent import contract

from .inventory_notes import Doc

_GIDS = ", ".join(f"{gid} ({name})" for gid, name in sorted(contract.FIXED_PRIVILEGED_GIDS.items()))
_BATCH = ("Only the batch settings of a phase are one (`phases[].update` wins over its services' own); a phase whose"
          " replicated services give different `canary`/`max_parallel` needs its own `update:`.")

SERVICE_NOTES: dict[str, Doc] = {
    # services
    "services": Doc(
        "What runs, by name. Each service is one container per host it is placed on, named after the service.",
        "services: {web: {image: family-cpu-py311, tag: 20250817-0a1b2c3, host: mainpc, ports: [\"8080:8080\"],"
        " health: {port: 8080}}}",
        "every task."),
    "services.<name>.image": Doc(
        "The image's repository name under `registry.host/registry.org`, lowercase (a family image, e.g."
        " `family-cpu-py311`): components joined by `/`, each separated inside only by `.`, `_`, `__` or `-`, as"
        " Docker's reference grammar has it.",
        "image: family-cpu-py311",
        "image references (preflight `image:<service>`, the plan, pulls, `fab prune`); the security gate (reports at"
        " `<artifacts>/<image>/<tag>/trivy.json`, acceptances by image)."),
    "services.<name>.tag": Doc(
        "The release: `YYYYMMDD-<git_sha>` (a UTC calendar date, a dash, 7–40 lowercase hex digits of the commit), as"
        " `fab build` tags images. Changing it is how a release is rolled out: the plan resolves it to a digest and the"
        " hosts pull by digest.",
        "tag: 20250817-0a1b2c3",
        "inventory validation; preflight `image:<service>` (the tag exists in the registry as seen from the host); the"
        " plan; the security gate; the check before any swap that the tag still names the planned digest."),
    "services.<name>.host": Doc(
        "Run one container, on this host. Exactly one of `host`, `hosts` and `group`.",
        "host: mainpc",
        "placement: the plan, preflight (the host's services), status."),
    "services.<name>.hosts": Doc(
        "Run one container on each of these hosts (a replicated service; each replica is shown as its host and"
        " service). Exactly one of `host`, `hosts` and `group`.",
        "hosts: [mainpc, pc2]",
        "placement; rollout batches (`update.canary`, `update.max_parallel`)."),
    "services.<name>.group": Doc(
        "Run one container on each host of this group (`groups:`). Exactly one of `host`, `hosts` and `group`.",
        "group: cpu-workers",
        "placement; rollout batches."),
    "services.<name>.replicas": Doc(
        "Phases on `engine: swarm` only: run this many tasks over the hosts of `hosts:`/`group:` instead of one on each;"
        " Swarm places them (at most one per host) and reschedules a task whose node is lost. At most the number of its"
        " hosts; refused with `host:` and on an `engine: ssh` phase. See [swarm.md](swarm.md).",
        "replicas: 1",
        "`fab swarm.render` (replicated mode, placement), swarm rollouts (a host without a task is `noop`), `fab status`"
        " (where each task runs now)."),
    "services.<name>.update": Doc(
        "How the service is swapped: canary and batches across its replicas, and each swap's order and drain. "
        + _BATCH,
        "update: {canary: 1, max_parallel: 2, order: auto, drain_s: 2}",
        "the rollout's batches (playbooks/batches.py); the plan's swap order (playbooks/order.py)."),
    "services.<name>.update.canary": Doc(
        "Replicated services only: this many hosts (in inventory order) form a first batch of their own, gated before"
        " any other host changes; a failure there touches nothing else.",
        "canary: 1",
        "the rollout's batches; the dry run prints the order."),
    "services.<name>.update.max_parallel": Doc(
        "Replicated services only: after the canary, this many hosts at a time, each batch gated before the next; 0 ="
        " all the rest at once.",
        "max_parallel: 2",
        "the rollout's batches."),
    "services.<name>.update.order": Doc(
        "How each swap runs. `start-first`: the new container starts beside the old one, is gated, then the proxy"
        " switches to it (the service must be behind the proxy). `stop-first`: the old container stops first. `auto`:"
        " start-first behind the proxy, except that a GPU service goes start-first only when its `gpu_memory_gb` (plus"
        " `defaults.gpu_memory_reserve_gb`) is free beside the running copy (stop-first when it declares no budget);"
        " stop-first when not behind the proxy. The dry run and the report say which, and why.",
        "order: start-first",
        "the plan (playbooks/order.py); inventory validation (`start-first` needs `proxy:`); the agent's swap."),
    "services.<name>.update.drain_s": Doc(
        "Seconds the old container keeps finishing its requests after the proxy switched away from it, before it"
        " stops (kept for revert). After it (also with 0, and on a revert switching back) the agent waits, up to 2 s"
        " more, until the proxy reports no request in flight on the server it left.",
        "drain_s: 2",
        "the agent's swap behind the proxy."),
    "services.<name>.ports": Doc(
        "Host ports to publish: `[ADDRESS:]HOST:CONTAINER[/tcp|udp]`, quoted. A service behind the proxy publishes"
        " none. Two services may not publish one host port on one host (on the same address, or when either takes"
        " every address).",
        'ports: ["8080:8080", "10.0.0.5:9090:9090/udp"]',
        "inventory validation; preflight `ports` (free, or held by the service itself); container create; the health"
        " gate (see `health.port`)."),
    "services.<name>.proxy": Doc(
        "Put the service behind the host's reverse proxy: the proxy publishes `listen` on the host, the container"
        " publishes nothing and joins `reverse_proxy.network`. Needs `reverse_proxy:`, and the proxy service placed on"
        " every host this service runs on. See [zero-downtime.md](zero-downtime.md).",
        'proxy: {listen: "18080", port: 8080}',
        "inventory validation; the plan (swap order, the proxy's configuration); preflight `proxy`; the agent switches"
        " the proxy to a new container once it passed its gate (and back on revert)."),
    "services.<name>.proxy.listen": Doc(
        "`[ADDRESS:]PORT` the proxy binds on the host, PORT 1024–65535: where clients connect. A string: quote it.",
        'listen: "18080"',
        "the proxy's configuration (a frontend per service); inventory validation (host port collisions); preflight"
        " `ports`."),
    "services.<name>.proxy.port": Doc(
        "The container port the proxy forwards to (over the proxy network, by container name). The health gate probes"
        " the container on this port too, so `health.port` must equal it.",
        "port: 8080",
        "the proxy's configuration (the backend's servers); inventory validation."),
    "services.<name>.env": Doc(
        "Environment variables: a string, or `{secret: NAME}` read on the host when the container is created. fleetroll"
        " adds `FLEETROLL_SERVICE`, `FLEETROLL_HOST` (and the collector's variables when `observability.collector` is"
        " set); names starting with `FLEETROLL_` are its own and refused here. A name is letters, digits, `_`, `.` and"
        " `-`, not starting with a digit; a value holds no NUL. Values never appear in the ledger, pins, `--json`,"
        " progress, `fab status` or an inventory error: only keyed hashes.",
        "env: {MACHINE: mainpc, HF_TOKEN: {secret: hf_token}}",
        "the plan; container create."),
    "services.<name>.env.<VAR>.secret": Doc(
        "Name of a file in the host's secrets directory (`/etc/fleetroll/secrets`, or `$FLEETROLL_SECRETS_DIR` in the"
        " agent's environment): a regular file, no symlink, owned by root, mode 0640 or 0600. Its content becomes the"
        " variable's value at container create; only the reference is recorded. A value rotated on the host reaches"
        " the container when it is next created (`fab restart -s S`, or a release; not a restart by its policy or a"
        " reboot); until then `fab status` names the secret"
        " in its drift column (by the file's modification time: values are never compared).",
        "HF_TOKEN: {secret: hf_token}",
        "the agent at container create (agent/secrets.py)."),
    "services.<name>.env.<VAR>.as": Doc(
        "How the secret reaches the container: `env` (the variable holds the value; visible to anyone who can run"
        " `docker inspect` on the host) or `file`: the value becomes the file `/run/secrets/<secret>` (on a tmpfs under"
        " `/run/fleetroll` on the host, never on a disk; readable by the container's uid alone; mounted read-only) and"
        " the variable holds that path, so the value is in neither the environment nor `docker inspect`. Needs"
        " `/run/fleetroll` on a tmpfs: a root agent makes it; for an agent account that is not root, root makes it once"
        " per boot (`d /run/fleetroll 2770 root docker -` in tmpfiles.d). Changing it replaces the container.",
        "HF_TOKEN: {secret: hf_token, as: file}",
        "the agent at container create (agent/secret_files.py); the spec hash and the freeze fingerprint."),
    "services.<name>.gpus": Doc(
        "GPUs given to the container: `0` (none), a count (Docker's first N cards) or `all`. A GPU service must be"
        " placed on hosts with `gpus:` and may not ask for more cards than they have.",
        "gpus: all",
        "inventory validation; preflight `nvidia-runtime`, the GPU checks (fail rather than warn) and the arch-list part"
        " of `image:<service>`; the plan's swap order."),
    "services.<name>.gpu_memory_gb": Doc(
        "GPU memory (GB) the service needs on its card; only with `gpus`. After the HTTP gate passes, the gate also"
        " checks through NVML that the container's process is on a GPU and uses at most this + 10 %: a model that fell"
        " back to CPU, or uses more, fails the gate and is reverted.",
        "gpu_memory_gb: 14",
        "inventory validation; preflight `gpu-memory`; the plan's swap order (`update.order: auto`); the agent's gate."),
    "services.<name>.user": Doc(
        f"The container's user as numeric `uid:gid`: uid ≥ {contract.MIN_UID}, gid none of {_GIDS}. On the host the agent"
        f" also refuses the gid of any of its groups {', '.join(contract.PRIVILEGED_GROUPS)} and of the Docker socket's"
        f" group. Images themselves must run as `{contract.IMAGE_USER}`.",
        f'user: "{contract.IMAGE_USER}"',
        "inventory validation; the agent's checks before container create."),
    "services.<name>.restart": Doc(
        "Docker's restart policy for the container. Rollback, restart and a swap switch it off while they wait for the"
        " old container to hold still.",
        "restart: unless-stopped",
        "container create."),
    "services.<name>.stop_timeout": Doc(
        "Seconds Docker gives the container after SIGTERM before SIGKILL when fleetroll stops it.",
        "stop_timeout: 30",
        "container create; the agent stopping an old container."),
    "services.<name>.volumes": Doc(
        "`NAME:/path` (a named volume) or `/host/path:/path` (a bind mount, only under `defaults.host_paths`), each"
        " optionally `:ro` or `:rw`. The container path has no `..` component.",
        'volumes: ["models:/models:ro", "/srv/models/llm:/weights:ro"]',
        "inventory validation; the agent checks each bind source again on the host, as it resolves there."),
    "services.<name>.health": Doc(
        "The health gate: `GET <path>` on `port` must answer HTTP 200 with the JSON `{\"status\": \"ok\"}` within"
        " `healthy_deadline`, then keep doing so for `min_healthy_time`. A restart or exit of the container fails it."
        " A redirect is followed (up to four) only on the same address and port: another host's answer is not this"
        " container's health.",
        "health: {port: 8080, healthy_deadline: 180, min_healthy_time: 15}",
        "the agent's gate (agent/health.py) after every start: rollout, revert, rollback, restart; `fab status` (one"
        " probe of the same URL)."),
    "services.<name>.health.path": Doc(
        "The path probed; starts with `/`, then letters, digits and `. _ ~ / % -` only.",
        "path: /healthz",
        "the gate; `fab status`."),
    "services.<name>.health.port": Doc(
        "Which port the gate probes. Without `proxy:`: one of the host ports published under `ports:`, probed on"
        " 127.0.0.1 (or on the address the mapping binds). Behind the proxy: the container port, equal to `proxy.port`,"
        " probed at the container's own address on the proxy network (not through the proxy). For the proxy service"
        " itself: `reverse_proxy.health_port` (8404 by default).",
        "port: 8080",
        "the gate; `fab status`; inventory validation."),
    "services.<name>.health.healthy_deadline": Doc(
        "Seconds a new container has to become healthy. Changing this (or `min_healthy_time`, `interval`) and nothing"
        " else replaces no running container: the gate uses the new value from the service's next swap or restart.",
        "healthy_deadline: 180",
        "the gate."),
    "services.<name>.health.min_healthy_time": Doc(
        "Seconds it must then stay healthy: a failed probe, a restart or an exit inside this window fails the gate.",
        "min_healthy_time: 15",
        "the gate."),
    "services.<name>.health.interval": Doc(
        "Seconds between probes; each probe waits at most 4 × interval for an answer, between 0.5 and 2 s.",
        "interval: 0.5",
        "the gate."),
    # phases.yml
    "phases": Doc(
        "The rollout phases, in order, in `phases.yml` beside `fleet.yml`. `fab rollout --all` runs them top to bottom,"
        " each only after the one before succeeded. Every service of the inventory belongs to exactly one phase (one"
        " in none would never be deployed: refused). A freeze is kept under its phase's name: renaming a phase leaves"
        " the freeze holding its hosts until thawed by the old name.",
        "phases: [{name: core-infra, services: [gateway]}]",
        "`-p/--phase` of preflight, rollout, rollback, freeze and thaw; `fab rollout --all`."),
    "phases[].name": Doc(
        "The phase's name, as `-p/--phase` takes it; unique.",
        "name: gpu-mainpc",
        "every task with `-p`; freezes (kept per phase on the hosts); rollout ids."),
    "phases[].description": Doc(
        "Text for people. No check or step reads it.",
        "description: GPU services on MainPC",
        "nothing (informational)."),
    "phases[].services": Doc(
        "The phase's services by name, in order. A service behind the proxy comes after its proxy (a phase of its own"
        " before, or first here).",
        "services: [edge, web]",
        "the plan; preflight `-p` (only the hosts and images the phase needs) and its `proxy` check."),
    "phases[].update": Doc(
        "Canary and batches across the phase's hosts, instead of its services' own. " + _BATCH,
        "update: {canary: 1, max_parallel: 4}",
        "the rollout's batches (playbooks/batches.py)."),
    "phases[].update.canary": Doc(
        "This many of the phase's hosts with changes (in inventory order) form a first batch, gated before any other"
        " host changes.",
        "canary: 1",
        "the rollout's batches; the dry run prints the order."),
    "phases[].update.max_parallel": Doc(
        "After the canary, this many hosts at a time, each batch gated before the next; 0 = all the rest at once.",
        "max_parallel: 4",
        "the rollout's batches."),
    "phases[].update.order": Doc(
        "Accepted, but not read here: the swap order is each service's own (`services.<name>.update.order`).",
        "order: auto",
        "nothing."),
    "phases[].update.drain_s": Doc(
        "Accepted, but not read here: the drain is each service's own (`services.<name>.update.drain_s`).",
        "drain_s: 2",
        "nothing."),
    "phases[].engine": Doc(
        "`ssh` or `swarm` for this phase, overriding the inventory's `engine`. A swarm phase is deployed as one stack"
        " (`fr-<phase>`) through a manager; `--hosts` does not apply to it.",
        "engine: swarm",
        "`fab rollout` (dispatch), `fab swarm.render -p`, load-time checks of what Swarm cannot run."),
}
