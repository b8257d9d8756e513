"""Reading a stack through a manager while Swarm trims its task history (observe.read), with a fake manager."""

from __future__ import annotations

import json

import pytest

from playbooks.swarm import observe
from playbooks.swarm.remote import SwarmCommandError


class Manager:
    """A manager whose `docker inspect` of tasks answers as docker does when some listed tasks are gone already."""

    name = "mainpc"

    def __init__(self, gone: set[str], err: str = ""):
        self.gone, self.err = gone, err

    def lines(self, argv):
        if argv[:3] == ["docker", "node", "ls"]:
            return ["n1"]
        if argv[:3] == ["docker", "service", "ls"]:
            return ["s1"]
        return ["t1", "t2", "t3"]  # docker service ps -q: listed a moment before the inspect

    def json(self, argv):
        if argv[:3] == ["docker", "node", "inspect"]:
            return [{"ID": "n1", "Spec": {"Labels": {"fleetroll.host": "mainpc"}}, "Status": {"State": "ready"}}]
        return [{"ID": "s1", "Spec": {"Name": "fr-web_web", "Labels": {}}}]

    def run(self, argv, check=True):
        assert argv[:2] == ["docker", "inspect"] and not check
        there = [{"ID": t, "Status": {"State": "running"}} for t in argv[2:] if t not in self.gone]
        err = self.err or "".join(f"Error: No such object: {t}\n" for t in argv[2:] if t in self.gone)
        return (1 if err else 0), json.dumps(there), err


def test_tasks_swarm_deleted_between_the_listing_and_the_inspect_are_dropped_not_an_error():
    view = observe.read(Manager(gone={"t2"}), "fr-web")
    assert [t["ID"] for t in view.tasks["web"]] == ["t1", "t3"] and view.nodes == {"n1": "mainpc"}


def test_any_other_inspect_failure_is_still_a_failure_naming_the_host():
    with pytest.raises(SwarmCommandError, match="mainpc: .*permission denied"):
        observe.read(Manager(gone=set(), err="Got permission denied while trying to connect to the Docker daemon socket\n"), "fr-web")
