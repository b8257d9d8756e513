"""Which inventory a command reads when it names none: small, so the command line can know it before anything loads."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "fleet.yml"


def default_inventory() -> str:
    """--inventory, else $FLEETROLL_INVENTORY, else ./inventory/fleet.yml here, else (in fleetroll's checkout) its own."""
    here = Path.cwd() / "inventory" / "fleet.yml"
    if os.environ.get("FLEETROLL_INVENTORY"):
        return os.environ["FLEETROLL_INVENTORY"]
    if here.exists() or not CHECKOUT_INVENTORY.exists():
        return str(here)
    return str(CHECKOUT_INVENTORY)
