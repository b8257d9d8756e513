"""What each field of fleet.yml's own sections is for, an example, and what reads it (registry to reverse_proxy).

The models cannot say this; it is prose keyed by the field's path. services and phases.yml are
in playbooks/inventory_notes_services.py; playbooks/inventory_doc.py joins both into DOCS and
fails (tests/test_inventory_doc_unit.py) when a field has no entry or an entry names no field.
"""

from __future__ import annotations

from typing import NamedTuple

from agent import contract

from .inventory import DEFAULT_MIN_DRIVER


class Doc(NamedTuple):
    what: str  # what the field is for, what it accepts beyond the schema's own constraints
    example: str  # YAML, as the key is written where it goes
    used_by: str  # the checks and steps that read it


_FORBIDDEN = ", ".join(f"`{p}`" for p in contract.FORBIDDEN_HOST_PATHS)

FLEET_NOTES: dict[str, Doc] = {
    # registry
    "registry": Doc(
        "Where images come from: every service runs `<registry.host>/<registry.org>/<image>:<tag>`.",
        "registry: {host: ghcr.io, org: example-org}",
        "every image reference: preflight `image:<service>`, the plan (tag → digest), the hosts' pulls, `fab build --push`,"
        " `fab prune`."),
    "registry.host": Doc(
        "The registry's host name (and `:port`), without a scheme or path (plain HTTP is `insecure: true`).",
        "host: ghcr.io",
        "image references (see `registry`)."),
    "registry.org": Doc(
        "The organisation (namespace) under the host; lowercase.",
        "org: example-org",
        "image references (see `registry`)."),
    "registry.insecure": Doc(
        "Plain HTTP instead of HTTPS: for the lab's own registry only. fleetroll's registry queries (made from the hosts)"
        " and `fab build --push` then use `http://`; each host's dockerd must trust the registry too"
        " (`--insecure-registry`), as the lab's dockerd does.",
        "insecure: true",
        "preflight `image:<service>` (the manifest query from the host), the plan, the check before any swap that each tag"
        " still names its planned digest, `fab build --push`."),
    # ssh
    "ssh": Doc(
        "How the controller reaches the hosts.",
        "ssh: {known_hosts: known_hosts, connect_timeout: 5, max_parallel: 10, client: auto}",
        "every task that contacts a host."),
    "ssh.known_hosts": Doc(
        "fleetroll's own file of pinned host keys, relative to the inventory's directory unless absolute. Only `fab"
        " hostkeys` writes it, and only keys the operator confirmed; a host whose key is missing from it or different is"
        " refused (no trust on first use). `hosts.<name>.known_hosts` overrides it for one host. See"
        " [hosts.md](hosts.md).",
        "known_hosts: known_hosts",
        "every SSH connection (preflight `ssh`, every task); `fab hostkeys` reads it (new / same / CHANGED) and writes it."),
    "ssh.connect_timeout": Doc(
        "Seconds to wait for a host's TCP connection, SSH banner and authentication: an unreachable host is reported"
        " within it, without delaying the others. It also bounds the registry queries the hosts make (the smaller of 5 s"
        " and this + 2 s).",
        "connect_timeout: 5",
        "every SSH connection (preflight `ssh`), `fab hostkeys`'s key scan, preflight `image:<service>`."),
    "ssh.max_parallel": Doc(
        "How many hosts a task contacts at once; `--max-parallel N` overrides it for one command.",
        "max_parallel: 10",
        "preflight, rollout, rollback, status and every other call on many hosts (playbooks/transport.py)."),
    "ssh.client": Doc(
        "Which SSH client carries the agent's calls. `auto` (the default): the system's OpenSSH `ssh` whenever it is on"
        " PATH and 8.7 or newer, else paramiko. `openssh`: OpenSSH or a clear error. `paramiko`: the Python client. Both refuse unknown"
        " and changed host keys and forward nothing; OpenSSH does the handshake outside the controller's process (less"
        " controller CPU per host), lets `fleetroll rollout/preflight/status` start the logins while the command is"
        " still starting up (FLEETROLL_PREWARM=0 turns that off), honours `@revoked`/`@cert-authority` lines in"
        " known_hosts and the operator's ~/.ssh/config (ProxyJump and the like; never its forwardings or connection"
        " sharing). The Swarm engine's docker commands use paramiko either way.",
        "client: auto",
        "every agent call (playbooks/transport.py, playbooks/openssh.py, playbooks/prewarm.py)."),
    # defaults
    "defaults": Doc(
        "Fleet-wide defaults and limits.",
        "defaults: {disk_min_free_gb: 20}",
        "see its fields."),
    "defaults.disk_min_free_gb": Doc(
        "Free space (GB) each host must have under Docker's data root, unless its `hosts.<name>.disk_min_free_gb` says"
        " otherwise.",
        "disk_min_free_gb: 20",
        "preflight `disk`."),
    "defaults.gpu_memory_reserve_gb": Doc(
        "GPU memory (GB) kept free on every card beyond the services' declared `gpu_memory_gb` (driver, display,"
        " fragmentation).",
        "gpu_memory_reserve_gb: 1.5",
        "preflight `gpu-memory` (every budget placed on a host plus the reserve must fit its cards); the plan's swap"
        " order (`update.order: auto` swaps a GPU service start-first only when its budget plus the reserve is free"
        " beside the running copy; an explicit `start-first` that does not fit is blocked before anything stops)."),
    "defaults.host_paths": Doc(
        "Absolute host directories that services may bind-mount in `volumes:` (they and what is below them); nothing"
        f" else can be bind-mounted. None of them may be, or be under, {_FORBIDDEN}.",
        "host_paths: [/srv/models]",
        "inventory validation of `services.<name>.volumes`; sent with every host call, where the agent checks each bind"
        " source again as it resolves there, at container create, under these prefixes and, when the host sets"
        " `FLEETROLL_HOST_PATHS`, under that list too (the intersection: a plan cannot widen the host's own list)."),
    # security
    "security": Doc(
        "Where the supply-chain gate (risk R4) finds Trivy reports and risk acceptances. Relative paths are relative"
        " to the inventory's directory.",
        "security: {artifacts: ../artifacts, acceptances: ../security/risk-acceptances.yml, missing_report: refuse}",
        "the security gate of `fab rollout` (playbooks/images/security.py), after the plan and before any host"
        " changes."),
    "security.artifacts": Doc(
        "Directory holding `<image>/<tag>/trivy.json` for each image (the image pipeline writes the SBOM"
        " `sbom.spdx.json` beside it; `fab build` writes to the repository's `artifacts/`, or `$FLEETROLL_ARTIFACTS`)."
        " A report counts only if it is Trivy JSON (SchemaVersion 2) whose `Metadata.RepoDigests` names the digest"
        " the plan will run; HIGH, CRITICAL and UNKNOWN findings block.",
        "artifacts: ../artifacts",
        "the security gate."),
    "security.acceptances": Doc(
        "The risk-acceptance file: entries of `image`, `cve`, `owner`, `reason`, `expires` (and optionally `digest`)"
        " that turn a blocking finding into a warning until they expire. `$FLEETROLL_ACCEPTANCES` overrides this"
        " path. A missing file means no acceptances.",
        "acceptances: ../security/risk-acceptances.yml",
        "the security gate; the ledger records which file a rollout used and every acceptance it relied on."),
    "security.missing_report": Doc(
        "What the gate does with an image that has no report for its digest: `refuse` the step, or `warn` and go on"
        " (the lab's inventory uses `warn`).",
        "missing_report: refuse",
        "the security gate."),
    "security.max_acceptance_days": Doc(
        "How far ahead an acceptance's `expires` may reach; one that reaches further is refused, so every finding is"
        " decided again at least this often.",
        "max_acceptance_days: 90",
        "the security gate."),
    # observability
    "observability": Doc(
        "Start-up reports: every container reports its SBOM and git SHA to a collector service.",
        "observability: {collector: fleetroll-collector}",
        "the plan (env of every container)."),
    "observability.collector": Doc(
        "The service that receives the start-up reports. It must publish a port and run on exactly one host. When set,"
        " every container gets `FLEETROLL_COLLECTOR_URL` (`http://<the collector host's address>:<its first published"
        " host port>`) and `FLEETROLL_REPORT_KEY` (its own report key).",
        "collector: fleetroll-collector",
        "inventory validation; the plan."),
    "observability.report_key_secret": Doc(
        "Name of a secret file on the hosts (in the secrets directory, `/etc/fleetroll/secrets` by default) holding the"
        " fleet's report secret; needed on every host that runs a service, and on the collector's, when a collector is"
        " set. Each container gets only a key derived from it for its own host, service and digest; the collector alone"
        " gets the secret itself (`COLLECTOR_FLEET_KEY`).",
        "report_key_secret: fleetroll-report-key",
        "the plan; the agent at container create (agent/secrets.py)."),
    # engine and swarm
    "engine": Doc(
        "Who runs a phase's release: `ssh` (fleetroll's own push: each host's agent swaps, gates and reverts) or `swarm`"
        " (Docker Swarm schedules the phase's stack, fleetroll renders it, gates it before and follows it to the end)."
        " `phases[].engine` overrides it for one phase. Preflight, the security gate, freezes and hooks run the same for"
        " both. See [swarm.md](swarm.md).",
        "engine: swarm",
        "`fab rollout` (which engine a phase goes to), `fab swarm.render`, `fab status`; load-time checks of what Swarm"
        " cannot run (no canary, no address-bound ports, no start-first with a host port)."),
    "swarm": Doc(
        "How phases with `engine: swarm` run: which hosts manage the swarm and how the rendered healthcheck probes"
        " `/health`. Only read when some phase runs on Swarm, and by `fab swarm.form`/`swarm.leave`.",
        "swarm: {managers: [mainpc], healthcheck: python}",
        "`fab swarm.form`, `fab swarm.leave`, `fab swarm.render`, rollouts of swarm phases."),
    "swarm.managers": Doc(
        "Hosts `fab swarm.form` makes managers; the first initialises the swarm (`--advertise-addr` its `address`), the"
        " others join as managers, every other host as a worker. Empty: the inventory's first host. Keep an odd number"
        " (1, 3, 5) for a Raft quorum.",
        "managers: [mainpc]",
        "`fab swarm.form` (init and joins), rollouts of swarm phases and `fab status` (the stack is deployed and read"
        " through the first manager that answers)."),
    "swarm.healthcheck": Doc(
        "What the rendered Swarm healthcheck runs inside the image to judge `health:` as fleetroll's gate does (HTTP 200"
        " and a JSON body with `status: ok`): `python` runs `python3 -c` and parses the body (the family images carry"
        " Python); `wget` runs busybox `sh` + `wget` and matches `\"status\":\"ok\"` in the body (images without Python,"
        " such as the lab's).",
        "healthcheck: wget",
        "`fab swarm.render` and swarm rollouts (the stack's `healthcheck:`)."),
    # hosts
    "hosts": Doc(
        "The machines, by name: the names `-H/--hosts`, placement (`host:`, `hosts:`, `groups:`) and every report use."
        " Adding and replacing a host: [hosts.md](hosts.md).",
        "hosts: {mainpc: {address: 192.168.1.10, user: ops}}",
        "every task."),
    "hosts.<name>.address": Doc(
        "IP address or DNS name of the host's sshd. Two hosts may not share an address and port.",
        "address: 192.168.1.10",
        "SSH (every task); `fab hostkeys` (the known_hosts entry is the address, or `[address]:port`); the collector's"
        " URL."),
    "hosts.<name>.port": Doc(
        "The host's SSH port.",
        "port: 2222",
        "SSH (every task), `fab hostkeys`."),
    "hosts.<name>.user": Doc(
        "The SSH login; the agent runs as this user, so it must be able to drive Docker there (root, or a member of"
        " the Docker socket's group). A POSIX login name.",
        "user: ops",
        "SSH (every task); the agent on the host."),
    "hosts.<name>.role": Doc(
        "A label for people: `gpu`, `cpu` or `infra`. No check or step reads it.",
        "role: gpu",
        "nothing (informational)."),
    "hosts.<name>.key_filename": Doc(
        "The SSH private key for this host (`~` is expanded); it must exist when the inventory is loaded. When set, only"
        " this key is offered (no ssh-agent, no `~/.ssh/id_*`); when not set, paramiko's defaults apply (the ssh-agent"
        " and the usual key files).",
        "key_filename: ~/.ssh/fleetroll_ed25519",
        "inventory validation; SSH (every task)."),
    "hosts.<name>.python": Doc(
        "Absolute path of the Python (3.11 or later) that runs the agent on the host; never the `python3` a login PATH"
        " finds first (often a pyenv or conda shim). If it is not there, the call fails with exit 127 and says so.",
        "python: /usr/bin/python3",
        "every agent call (playbooks/transport.py)."),
    "hosts.<name>.known_hosts": Doc(
        "This host's own known_hosts file, instead of `ssh.known_hosts` (same rules; relative to the inventory's"
        " directory).",
        "known_hosts: known_hosts.lab",
        "SSH to this host; `fab hostkeys` pins its key there."),
    "hosts.<name>.gpus": Doc(
        "The GPUs the host should have. Leave it out on hosts without a GPU: a service asking for `gpus:` cannot be"
        " placed on such a host. The GPU checks fail only when a GPU service is placed on the host in some phase;"
        " otherwise they warn.",
        'gpus: {model: NVIDIA GeForce RTX 4090, count: 1, compute_capability: "8.9", min_driver: "535"}',
        "preflight `nvidia-driver`, `gpus`, `gpu-memory` and the arch-list part of `image:<service>`; inventory"
        " validation of `services.<name>.gpus`."),
    "hosts.<name>.gpus.model": Doc(
        "The GPU's name exactly as NVML reports it (`nvidia-smi --query-gpu=name --format=csv,noheader`).",
        "model: NVIDIA GeForce RTX 4090",
        "preflight `gpus` (each card)."),
    "hosts.<name>.gpus.count": Doc(
        "How many GPUs the host has.",
        "count: 1",
        "preflight `gpus`; inventory validation (a service's `gpus: N` may not exceed it)."),
    "hosts.<name>.gpus.compute_capability": Doc(
        "The cards' compute capability, `MAJOR.MINOR` with one digit after the dot, as `nvidia-smi --query-gpu=compute_cap`"
        " prints it; quote it so YAML keeps it a string.",
        'compute_capability: "8.9"',
        "preflight `gpus` (each card) and `image:<service>` (a GPU image's CUDA arch-list label must cover it; covered"
        " only by PTX of a lower arch is a warning)."),
    "hosts.<name>.gpus.min_driver": Doc(
        f"The lowest NVIDIA driver allowed (`{DEFAULT_MIN_DRIVER}` or `535.104`; compared numerically). Risk R1.",
        f'min_driver: "{DEFAULT_MIN_DRIVER}"',
        "preflight `nvidia-driver`."),
    "hosts.<name>.disk_min_free_gb": Doc(
        "This host's own free-space requirement, instead of `defaults.disk_min_free_gb`.",
        "disk_min_free_gb: 50",
        "preflight `disk`."),
    # groups
    "groups": Doc(
        "Named lists of hosts for replicated services (`group: NAME`). Every member must be a host under `hosts:`.",
        "groups: {cpu-workers: [w1, w2, w3]}",
        "inventory validation; placement of `services.<name>.group`."),
    # reverse proxy
    "reverse_proxy": Doc(
        "Names the per-host reverse proxy (HAProxy, the `fleetroll-proxy` family image) that holds the public ports of"
        " the services with `proxy:`, so they can be swapped without dropping requests. A top-level key, beside"
        " `services:`. Walk-through: [zero-downtime.md](zero-downtime.md).",
        "reverse_proxy: {service: edge}",
        "inventory validation, the plan (the proxy's configuration), preflight `proxy`, the agent's swaps."),
    "reverse_proxy.service": Doc(
        "The proxy's own service under `services:` (image `fleetroll-proxy`). That service publishes no `ports:`, has no"
        " `proxy:`, and its `health.port` equals `reverse_proxy.health_port`. It must run on every host where a service"
        " behind it runs, and be rolled out before them: in an earlier phase, or first in the same phase. Its"
        " HAProxy configuration is rendered per host from the services behind it there; after putting a new service"
        " behind it, roll the proxy's phase out again.",
        "service: edge",
        "inventory validation; the plan (the configuration goes into the proxy container's env; the proxy binds every"
        " `listen` port); preflight `proxy` (it answers on the host and has a backend for each service behind it)."),
    "reverse_proxy.network": Doc(
        "The Docker network the proxy and the services behind it join; the agent creates it (a user-defined bridge)."
        f" `{contract.DEFAULT_NETWORK}`, or `{contract.DEFAULT_NETWORK}-NAME`: never `host`, `none`, another"
        " container's network or the default bridge.",
        f"network: {contract.DEFAULT_NETWORK}-web",
        "the plan (each container's network); the health gate (containers on it are probed at their address there)."),
    "reverse_proxy.health_port": Doc(
        "The port inside the proxy's container where HAProxy answers `GET /health` with 200 `{\"status\":\"ok\"}`. The"
        " proxy service's `health.port` must equal it. At least 1024: the proxy runs as a non-root user.",
        "health_port: 8404",
        "the plan (HAProxy's `fleetroll-health` frontend); the proxy's own health gate; inventory validation."),
}
