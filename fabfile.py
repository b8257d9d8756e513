"""fleetroll's Fabric entry point: `fab --list` from the repository root."""

from playbooks.tasks import ns  # noqa: F401
