"""A local user on a host cannot take fleetroll's lock or kill through it (issue 21, item 1), on a real lab host.

The lock used to live in /run/lock (mode 1777): any user could create the file first, hold a
flock on it and write a holder record naming a root process, which `fab unlock --force` then
signalled. Now it lives in a directory root owns (group of the Docker socket, 2770) and the
holder is whatever the kernel says holds the flock, never what the file says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lab import fleet, images
from playbooks import executor

from .conftest import FAB, ROOT, baseline, new_tag, with_tags

pytestmark = pytest.mark.lab
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _lock_path(h) -> str:
    code = "from agent import lock; print(lock.path())"
    env = {**fleet._host_env(h), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_a_local_user_cannot_forge_the_lock_and_unlock_force_signals_nothing_it_does_not_hold(lab, tmp_path):
    baseline(lab)
    h = lab.host("mainpc")
    path = _lock_path(h)
    d = os.path.dirname(path)
    # An unprivileged account cannot make the file, nor a symlink in its place, nor read the directory.
    probe = ("import os, sys\n"
             "for make in (lambda p: os.open(p, os.O_CREAT | os.O_WRONLY, 0o666), lambda p: os.symlink('/etc/passwd', p)):\n"
             "    try:\n        make(sys.argv[1] + '.forged')\n        print('MADE')\n"
             "    except PermissionError:\n        print('denied')\n")
    r = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", probe, path], capture_output=True, text=True)
    assert r.stdout.split() == ["denied", "denied"], r.stdout + r.stderr
    assert oct(os.stat(d).st_mode & 0o7777) == "0o2770" and os.stat(d).st_uid == 0
    # The file's content is information only: a record naming a root process that holds no flock is no holder.
    victim = subprocess.Popen(["sleep", "600"])
    try:
        with open(f"/proc/{victim.pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        with open(path, "w") as f:
            json.dump({"holder": "ops@laptop", "rollout_id": "r20250101T000000Z-core-abcdef", "pid": victim.pid, "start": start,
                       "time": 0}, f)
        os.chmod(path, 0o660)
        # ... so a rollout is not blocked by it ...
        tag = new_tag()
        images.push(lab, "vision-svc", tag, "healthy", arch="89;86")
        rep = executor.rollout(with_tags(lab, tmp_path, {"vision-api": tag}), "gpu-mainpc")
        assert rep.state == "committed", rep.messages
        # ... and unlock --force signals nothing it does not hold.
        r = subprocess.run([FAB, "unlock", "--host", "mainpc", "--force", "--reason", "stuck", "--inventory", lab.inventory],
                           cwd=ROOT, capture_output=True, text=True)
        assert "stopped pid" not in r.stdout, r.stdout + r.stderr
        assert victim.poll() is None, "the process the file named is alive"
    finally:
        victim.kill()
        victim.wait()
