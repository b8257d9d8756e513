"""How the containers running under the planned names differ from the plan: the dry run's per-key diff.

Split from agent/facts.py (read by the same facts call). Names only, never a value; a container under
a planned name that fleetroll did not start is reported as such, not diffed (a rollout will not touch it).
"""

from __future__ import annotations

import urllib.parse

from . import contract


def config_diffs(specs: dict[str, dict], inspected: dict[str, dict] | None = None,
                 foreign: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """Per planned service: how its running container's configuration differs from the plan (names only, no values).

    `inspected`: the inspects docker_facts just read in this call, by container name; only a name not among
    them is asked for again. Each image is inspected once however many services run it. A container under a
    service's name that fleetroll did not start is no base for a diff (a rollout refuses to touch it): it goes
    into `foreign` (name -> image and state) instead.
    """
    from . import container_args, engine

    if any(spec.get("role") == "proxy" for spec in specs.values()):
        from . import proxy

        specs = {name: proxy.host_spec(spec, create=False) for name, spec in specs.items()}
    inspected = inspected or {}
    eng = engine.require_engine()
    out: dict[str, list[str]] = {}
    image_envs: dict[str, dict[str, str]] = {}
    with eng:
        for name, spec in specs.items():
            attrs = inspected.get(name)
            if attrs is None:
                try:
                    attrs = eng.get(f"/containers/{urllib.parse.quote(name)}/json")
                except engine.EngineError as exc:
                    if exc.status == 404:
                        continue
                    raise
                if not _managed(attrs):
                    if foreign is not None:
                        foreign[name] = foreign_summary(attrs)
                    continue
            if attrs["Image"] not in image_envs:
                try:
                    image_envs[attrs["Image"]] = _env_of(eng.get(f"/images/{attrs['Image']}/json"))
                except engine.EngineError:
                    image_envs[attrs["Image"]] = {}
            out[name] = container_args.diff(container_args.from_inspect(attrs), spec, image_envs[attrs["Image"]])
    return out


def _managed(attrs: dict) -> bool:
    return ((attrs.get("Config") or {}).get("Labels") or {}).get(contract.MANAGED) == "true"


def foreign_summary(attrs: dict) -> dict[str, str]:
    """A container fleetroll did not start, in the words an operator needs to find it: its image and state."""
    image = str((attrs.get("Config") or {}).get("Image") or attrs.get("Image", ""))
    return {"image": image[:19] if image.startswith("sha256:") else image[:120],
            "status": str((attrs.get("State") or {}).get("Status") or ""), "id": str(attrs.get("Id", ""))[:12]}


def _env_of(image_attrs: dict) -> dict[str, str]:
    return dict(e.partition("=")[::2] for e in (image_attrs.get("Config") or {}).get("Env") or [])


def foreign_by_name(names: list[str]) -> dict[str, dict]:
    """Of these names (services with no fleetroll container here), those a container fleetroll did not start holds.

    One inspect per name; a name the daemon cannot answer about now is left out (the rest of the answer stands).
    """
    from . import engine

    out: dict[str, dict] = {}
    if not names:
        return out
    with engine.require_engine() as eng:
        for name in names:
            try:
                attrs = eng.get(f"/containers/{urllib.parse.quote(name)}/json")
            except Exception:  # noqa: BLE001 - 404 (nothing there) or an answer that says nothing about this name
                continue
            if isinstance(attrs, dict) and not _managed(attrs):
                out[name] = foreign_summary(attrs)
    return out
