"""The installed `fleetroll` command: the same task collection as `fab` in the checkout, from any directory.

`pip install` of the project puts `fleetroll` on PATH. It is an invoke program whose namespace
is fleetroll's own collection, so it needs no fabfile and works in an operator's own
infrastructure repository. The inventory comes from --inventory, $FLEETROLL_INVENTORY, or
./inventory/fleet.yml of the directory it runs in.

It runs on invoke alone, not Fabric's `fab` program: fleetroll's tasks open their own SSH
connections (playbooks/transport.py, when a task runs), so Fabric's program would only add
paramiko and Fabric's Connection to the start-up of every command (`fleetroll --help` included),
and core options (-H, -i) that mean something else than the tasks' own flags.
"""

from __future__ import annotations


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleetroll")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without installing
        return "0+checkout"


def main() -> None:
    import gc
    import sys

    from . import prewarm
    from .inventory_path import default_inventory
    from .program import interrupted_while_starting, keep_bytecode

    interrupted_while_starting()

    # First, before invoke, pydantic and the inventory load: the hosts' logins run while this process starts up.
    prewarm.start(sys.argv[1:], default_inventory)

    from .taskkit import invoke, name_the_program, quiet_when_the_reader_leaves
    from .tasks import ns

    class Config(invoke.Config):
        prefix = "fabric"  # the configuration files and FABRIC_* variables it read as a Fabric program

    class Fleetroll(invoke.Program):
        def parse_core(self, argv) -> None:
            super().parse_core(argv)
            keep_bytecode()  # invoke has just turned bytecode caching off; the tasks' modules load after this

        def print_version(self) -> None:  # importlib.metadata only for --version, not every command
            print(f"fleetroll {_version()}")

    quiet_when_the_reader_leaves()
    name_the_program(ns, "fleetroll")  # help and hints are written as `fab …`; here they say `fleetroll …`
    try:
        Fleetroll(name="fleetroll", namespace=ns, config_class=Config, binary="fleetroll", binary_names=["fleetroll"]).run()
    finally:
        # The interpreter's own exit walks every object the imports made (pydantic's schemas, invoke, the inventory's
        # models) looking for cycles: ~0.03 s a command waits for after its last line. Frozen, the collector skips them;
        # nothing else about the exit changes (atexit handlers, finalizers and closing files run as before).
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
