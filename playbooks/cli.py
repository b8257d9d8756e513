"""The installed `fleetroll` command: the same task collection as `fab` in the checkout, from any directory.

`pip install` of the project puts `fleetroll` on PATH. It is a Fabric program whose namespace
is fleetroll's own collection, so it needs no fabfile and works in an operator's own
infrastructure repository. The inventory comes from --inventory, $FLEETROLL_INVENTORY, or
./inventory/fleet.yml of the directory it runs in.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("fleetroll")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without installing
        return "0+checkout"


def main() -> None:
    from fabric import Config, Executor
    from fabric.main import Fab

    from .tasks import ns

    try:
        Fab(name="fleetroll", version=_version(), namespace=ns, executor_class=Executor, config_class=Config,
            binary="fleetroll", binary_names=["fleetroll"]).run()
    except BrokenPipeError:  # `fleetroll --list | head`: the reader left; stop quietly, as Unix tools do
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
