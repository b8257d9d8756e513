"""Swarm secrets by reference: names asked of the manager's agent, values never seen by the controller.

The manager's agent (agent/swarm_secrets.py) reads each secret from its own secrets directory
(FLEETROLL_SECRETS_DIR there), names its value `fr_NAME_<keyed hash>` and, when told to, makes the
missing Swarm secrets through its own dockerd. The controller sends secret names and gets Swarm
secret names back: nothing else crosses the link.
"""

from __future__ import annotations

from .. import transport
from ..errors import RolloutError
from ..inventory import Inventory

OP = "swarm_secrets"


def on_manager(inv: Inventory, pool: transport.Pool, manager: str, names: list[str],
               create: bool) -> tuple[dict[str, str], list[str]]:
    """({NAME: Swarm secret name}, [Swarm secrets made now]); a RolloutError saying which secret and where to put it."""
    if not names:
        return {}, []
    try:
        res = pool.get(inv, manager).call(OP, {"secrets": names, "create": create}, timeout=60)
    except transport.TransportError as exc:
        raise RolloutError(f"{manager}: naming the Swarm secrets {', '.join(names)} through its agent: {exc}") from None
    if not res.ok:
        raise RolloutError(f"{manager}: Swarm secrets {', '.join(names)}: {res.error}; fix: place each as"
                           f" <FLEETROLL_SECRETS_DIR>/NAME on the manager {manager} (root's, mode 0640 or 0600), then"
                           " run the rollout again")
    data = (res.answer or {}).get("data") or {}
    got = data.get("names") or {}
    missing = [n for n in names if not got.get(n)]
    if missing:
        raise RolloutError(f"{manager}: its agent named no Swarm secret for {', '.join(missing)}; nothing was deployed")
    return got, list(data.get("made") or [])
