"""What a command's --hosts/--service filter selects, refused when it selects nothing (pure).

A filter that names nothing used to select nothing silently: `fab rollback -p gpu-mainpc -H
nohost` found no service, asked no host, and reported REVERTED with exit 0. A filter is
input: a name that is not a host, a host the phase does not touch, or a service not placed
there is an error (exit 1) that lists the valid names, before any host is asked or anything
is ledgered.
"""

from __future__ import annotations

from .errors import RolloutError
from .inventory import Inventory


class TargetError(RolloutError):
    """A --hosts/--service filter that selects nothing; its text is the one line the operator reads."""


def phase_hosts(inv: Inventory, phase: str | None) -> list[str]:
    if not phase:
        return list(inv.fleet.hosts)
    touched = {h for s in inv.phase(phase).services for h in inv.fleet.hosts_of(s)}
    return [h for h in inv.fleet.hosts if h in touched]


def phase_of_service(inv: Inventory, service: str) -> str:
    """The one phase a service is in (each service is in exactly one); a name that is none is an input error."""
    known_service(inv, service)
    return next((p.name for p in inv.phases if service in p.services), "")


def check(inv: Inventory, phase: str | None, hosts: list[str] | None = None, service: str | None = None) -> None:
    """Raise TargetError unless every named host and the named service exist and meet in `phase`."""
    where = f"phase {phase}" if phase else "the inventory"
    if hosts:
        unknown = [h for h in hosts if h not in inv.fleet.hosts]
        if unknown:
            raise TargetError(f"--hosts {', '.join(unknown)}: no such host in {inv.path}; hosts: {', '.join(inv.fleet.hosts)}")
        mine = phase_hosts(inv, phase)
        outside = [h for h in hosts if h not in mine]
        if outside:
            raise TargetError(f"--hosts {', '.join(outside)}: {where} has no service there; its hosts: {', '.join(mine) or '(none)'}")
    if service:
        names = inv.phase(phase).services if phase else list(inv.fleet.services)
        if service not in names:
            raise TargetError(f"--service {service}: not a service of {where}; its services: {', '.join(names) or '(none)'}")
        placed = inv.fleet.hosts_of(service)
        if hosts and not any(h in placed for h in hosts):
            raise TargetError(f"--service {service} has no replica on {', '.join(hosts)}; it runs on {', '.join(placed)}")


def known_service(inv: Inventory, service: str | None) -> str:
    """The service named by --service, or one line saying which ones there are."""
    if not service or service not in inv.fleet.services:
        known = ", ".join(sorted(inv.fleet.services))
        raise RolloutError(f"--service {service!r} is not in the inventory (services: {known})" if service
                           else f"--service is required (services: {known})")
    return service


def replica_host(inv: Inventory, service: str, host: str | None) -> str:
    """The one host an operation on `service` goes to: its only one, or the replica `host` names."""
    known_service(inv, service)
    placed = inv.fleet.hosts_of(service)
    if host:
        if host not in placed:
            raise RolloutError(f"{service} has no replica on {host!r}; it runs on {', '.join(placed)}")
        return host
    if len(placed) > 1:
        raise RolloutError(f"{service} runs on {len(placed)} hosts ({', '.join(placed)}): name one with --host")
    return placed[0]


def replica_hosts(inv: Inventory, service: str, hosts: list[str] | None) -> list[str]:
    """The hosts an operation on every replica goes to, in inventory order: all of `service`'s, or those `hosts` names."""
    known_service(inv, service)
    placed = inv.fleet.hosts_of(service)
    if not hosts:
        return list(placed)
    outside = [h for h in hosts if h not in placed]
    if outside:
        raise RolloutError(f"{service} has no replica on {', '.join(outside)}; it runs on {', '.join(placed)}")
    return [h for h in placed if h in hosts]
