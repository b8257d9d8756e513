"""The lock's trust checks say the likely cause: with no Docker socket, dockerd, not the directory's owner.

Found by an exploratory run: with pc2's dockerd stopped, fab status said 'LOCK REFUSED … writable by group docker,
which is not the Docker socket's group; fix: chown root:root …', a fix that would be wrong once dockerd is back.
"""

from __future__ import annotations

import os
import stat

from agent import lock_trust


def _st(mode: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, 0, gid, 0, 0, 0, 0))


def test_no_docker_socket_points_at_dockerd():
    said = lock_trust.dir_problem(_st(0o2770, 999), "/var/lib/fleetroll/lock", 0, {0})
    assert "the Docker socket whose group may write it is not there (is dockerd running?): start dockerd" in said, said


def test_a_socket_of_another_group_keeps_the_chown_fix():
    said = lock_trust.dir_problem(_st(0o2770, 999), "/var/lib/fleetroll/lock", 0, {0, 998})
    assert "which is not the Docker socket's group" in said and "fix: chown root:" in said, said
