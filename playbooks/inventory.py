"""The fleet inventory: load, validate, and explain what is wrong with it; the queries every workflow asks of it.

The inventory is the operators' frozen organizer. fleetroll reads it and never writes it,
so every mistake must be reported well enough that a person can fix the file by hand:
each error names the file, the line, the dotted field and what to do. The parts:
schema.py (the pydantic models), inventory_yaml.py (line numbers, explained errors, links
to docs/inventory.md), inventory_checks.py (cross-field rules); this module loads a file
through them and answers questions about the result (Inventory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .inventory_checks import (
    _cross_checks,
    _host_checks,
    _observability_checks,
    _partial_fleet,
    _phase_checks,
    _reverse_proxy_checks,
)
from .inventory_yaml import DOC, KEY_NAMES, _explain, _read_yaml, field_anchor, field_path, with_link  # noqa: F401
from .schema import (  # noqa: F401 - re-exported: the names callers know the inventory by
    DEFAULT_MIN_DRIVER,
    TAG_RE,
    Fleet,
    Health,
    Host,
    InventoryError,
    Phase,
    Phases,
    SecretRef,
    Service,
    Update,
    parse_version,
    tag_problem,
)


@dataclass(frozen=True)
class Inventory:
    """A validated fleet plus its phases, with the paths they came from (for messages)."""

    fleet: Fleet
    phases: list[Phase]
    path: Path
    phases_path: Path

    def image_ref(self, service: str, tag: str | None = None) -> str:
        svc = self.fleet.services[service]
        return f"{self.repo(service)}:{tag or svc.tag}"

    def repo(self, service: str) -> str:
        r = self.fleet.registry
        return f"{r.host}/{r.org}/{self.fleet.services[service].image}"

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.phases)
        raise InventoryError(
            [f"{self.phases_path}: no phase named {name!r}; phases in order are: {known}"]
        )

    def services_for(self, phase: str | None, hosts: list[str] | None = None) -> list[str]:
        """Services of the phase (or all) with a replica on any of `hosts` (or anywhere)."""
        names = self.phase(phase).services if phase else list(self.fleet.services)
        return [n for n in names if hosts is None or any(h in hosts for h in self.fleet.hosts_of(n))]

    def replicas(self, phase: str | None, hosts: list[str] | None = None) -> list[tuple[str, str]]:
        """(service, host) for every container the phase (or the fleet) runs, limited to `hosts`."""
        return [(n, h) for n in self.services_for(phase, hosts) for h in self.fleet.hosts_of(n) if hosts is None or h in hosts]

    def gpu_budgets(self, host: str) -> dict[str, float]:
        """{service: gpu_memory_gb} of the GPU services placed on `host` (any phase) that declare one."""
        return {s: self.fleet.services[s].gpu_memory_gb for s in self.services_for(None, [host])
                if self.fleet.services[s].wants_gpu and self.fleet.services[s].gpu_memory_gb}

    def update_for(self, phase: str) -> Update | None:
        """The phase's canary/batch settings: its own, else those of a service in it (checked to agree at load)."""
        ph = self.phase(phase)
        return ph.update or next((u for s in ph.services if (u := self.fleet.services[s].update) and u.batches), None)

    def select_hosts(self, hosts: list[str] | None, phase: str | None = None, option: str = "--hosts") -> list[str]:
        """Hosts to act on: those named (checked), else those the phase touches, else all. `option`: the flag that named them."""
        if hosts:
            unknown = [h for h in hosts if h not in self.fleet.hosts]
            listed = [h for h in unknown if "," in h and all(x.strip() in self.fleet.hosts for x in h.split(","))]
            if listed:  # a single-host option given a list
                raise InventoryError([f"{self.path}: {option} takes one host, not a list ({listed[0]}): run the command once per"
                                      f" host; known hosts: {', '.join(self.fleet.hosts)}"])
            if unknown:
                raise InventoryError(
                    [
                        f"{self.path}: {option} names {', '.join(unknown)}, not in the inventory;"
                        f" known hosts: {', '.join(self.fleet.hosts)}"
                    ]
                )
            return list(dict.fromkeys(hosts))  # named twice, acted on once
        if phase:
            touched = {h for s in self.phase(phase).services for h in self.fleet.hosts_of(s)}
            return [h for h in self.fleet.hosts if h in touched]
        return list(self.fleet.hosts)

    def known_hosts_for(self, host: str) -> Path:
        h = self.fleet.hosts[host]
        raw = h.known_hosts or self.fleet.ssh.known_hosts
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.path.parent / p)

    def resolve(self, raw: str) -> Path:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def collector_url(self) -> str | None:
        """Where services report at start-up: the collector's host and first published port."""
        name = self.fleet.observability.collector
        if not name:
            return None
        svc = self.fleet.services[name]
        return f"http://{self.fleet.hosts[self.fleet.hosts_of(name)[0]].address}:{svc.port_pairs()[0][0]}"

    def disk_min_free_gb(self, host: str) -> float:
        h = self.fleet.hosts[host]
        return h.disk_min_free_gb if h.disk_min_free_gb is not None else self.fleet.defaults.disk_min_free_gb


# --- YAML with line numbers -------------------------------------------------------------


REPO_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "fleet.yml"
REPO_PHASES = REPO_INVENTORY.parent / "phases.yml"
# Where the repository's phases lived before they moved beside fleet.yml: still read for this one
# release when an inventory/ has no phases.yml, with a note saying to move it.
OLD_REPO_PHASES = Path(__file__).resolve().parent / "phases.yml"


def default_phases_path(inventory_path: Path) -> Path:
    """phases.yml beside the inventory, for every inventory alike (the repository's own included).

    Falling back silently to another file would roll out phases the inventory's author never wrote;
    the one exception, for one release, is the repository's old playbooks/phases.yml, said aloud.
    """
    beside = inventory_path.parent / "phases.yml"
    if not beside.exists() and inventory_path.resolve() == REPO_INVENTORY and OLD_REPO_PHASES.exists():
        import sys

        print(f"note: reading {OLD_REPO_PHASES}; phases now live beside the inventory: git mv it to {beside}"
              " (the old place is read for this release only)", file=sys.stderr)
        return OLD_REPO_PHASES
    return beside


def load(path: str | Path, phases_path: str | Path | None = None) -> Inventory:
    """Read and validate an inventory and its phases; raise InventoryError listing every problem, all in one pass."""
    path = Path(path)
    ppath = Path(phases_path) if phases_path else default_phases_path(path)
    data, lines = _read_yaml(path)
    problems: list[str] = list(lines.pop(("__duplicates__",), []))
    dropped: set[str] = set()
    try:
        fleet: Fleet | None = Fleet.model_validate(data)
    except ValidationError as err:
        problems += _explain(path, lines, err)
        fleet, dropped = _partial_fleet(data)
    if fleet is not None:
        problems += (_cross_checks(fleet, path, lines, dropped) + _observability_checks(fleet, path, lines)
                     + _reverse_proxy_checks(fleet, path, lines, dropped)
                     + _host_checks(fleet, path, lines))
    phases: list[Phase] | None = None
    if not ppath.exists():
        problems.append(f"{ppath}: no phases file beside the inventory {path}; fix: write one (the shape of"
                        f" {REPO_PHASES}) — fleetroll does not fall back to the repository's phases for your inventory")
    else:
        try:
            pdata, plines = _read_yaml(ppath)
        except InventoryError as exc:
            raise InventoryError(problems + exc.problems) from None
        problems += plines.pop(("__duplicates__",), [])
        try:
            phases = Phases.model_validate(pdata).phases
        except ValidationError as err:
            problems += _explain(ppath, plines, err)
        if phases is not None and fleet is not None:
            problems += _phase_checks(phases, fleet, ppath, plines, dropped)
    if problems or fleet is None or phases is None:
        raise InventoryError([with_link(p, ppath if p.startswith(f"{ppath}:") else path) for p in problems]
                             or [f"{path}: not a valid inventory"])
    return Inventory(fleet=fleet, phases=phases, path=path, phases_path=ppath)
