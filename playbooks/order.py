"""Start-first or stop-first, per swap, with the reason an operator reads in --dry-run and the report. Pure.

Swarm's `update_config.order` says which; none of Swarm, Kamal or Nomad asks whether the GPU
has the memory for a second copy of a model while both run. Here `auto` does: a service
behind the proxy is swapped start-first when the cards it uses have its declared
`gpu_memory_gb` free beside the running copy (plus the inventory's reserve), else
stop-first. An explicit `start-first` that cannot fit is refused before anything stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

START_FIRST, STOP_FIRST = "start-first", "stop-first"


@dataclass(frozen=True)
class Decision:
    order: str  # start-first | stop-first
    reason: str
    refused: str = ""  # set when the operator's explicit order cannot be honoured (the step is blocked)


def _gpus_used(gpus_req: Any, gpus: list[dict]) -> list[dict]:
    """The cards a container lands on: every card for `all`, else Docker's first N."""
    if gpus_req == "all":
        return gpus
    return sorted(gpus, key=lambda g: g.get("index", 0))[: int(gpus_req or 0)]


def _free_gb(g: dict) -> float:
    if "memory_free_mib" in g:
        return g["memory_free_mib"] / 1024
    return (g.get("memory_mib", 0) - g.get("memory_used_mib", 0)) / 1024


def choose(service: str, order: str, proxied: bool, running: bool, gpus_req: Any, budget_gb: float | None,
           reserve_gb: float, nvml: dict | None) -> Decision:
    """How to swap `service` on one host, from the inventory and that host's NVML facts."""
    if not running:
        return Decision(STOP_FIRST, "nothing runs now: the new container is started, then gated")
    if not proxied:
        return Decision(STOP_FIRST, "stop-first, not behind the proxy: its clients reach the container itself, one at a time")
    if order == STOP_FIRST:
        return Decision(STOP_FIRST, "stop-first, as update.order says")
    wants_gpu = gpus_req == "all" or int(gpus_req or 0) > 0
    if not wants_gpu:
        return Decision(START_FIRST, "start-first, behind the proxy and on no GPU"
                        + (" (update.order: start-first)" if order == START_FIRST else ""))
    if not budget_gb:
        if order == START_FIRST:
            return Decision(START_FIRST, "start-first, as update.order says (no gpu_memory_gb declared: GPU memory unchecked)")
        return Decision(STOP_FIRST, "stop-first, declares no gpu_memory_gb, so nothing tells whether a second copy fits"
                                    " on the GPU (declare it to allow start-first)")
    if not nvml or not nvml.get("ok") or not nvml.get("gpus"):
        why = (nvml or {}).get("error") or "no GPU facts"
        if order == START_FIRST:
            return Decision(STOP_FIRST, "", refused=f"update.order: start-first, but GPU memory could not be read ({why});"
                                                    " fix: make NVML answer, or set update.order: auto")
        return Decision(STOP_FIRST, f"stop-first, GPU memory could not be read ({why})")
    cards = _gpus_used(gpus_req, nvml["gpus"])
    tight = min(cards, key=_free_gb)
    free, need = _free_gb(tight), budget_gb + reserve_gb
    needs = f"needs {budget_gb:.1f} GB" + (f" + {reserve_gb:.1f} GB reserve" if reserve_gb else "")
    where = f"{free:.1f} GB free on GPU {tight.get('index', 0)}"
    if free >= need:
        return Decision(START_FIRST, f"start-first, {needs} beside the running copy, {where}")
    if order == START_FIRST:
        return Decision(STOP_FIRST, "", refused=f"update.order: start-first, but it {needs} beside the running copy and"
                                                f" only {where}; fix: free GPU memory, or set update.order: auto"
                                                " (stop-first when it does not fit)")
    return Decision(STOP_FIRST, f"stop-first, {needs} beside the running copy, {where}")
