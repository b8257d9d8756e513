"""The host lock trusts the kernel, not the file: ownership checks, /proc/locks parsing, unlock --force.

Run as root (as the agent runs on a host): a file "owned by another account" is made with
chown to 65534 (nobody). The would-be victims of a forged holder record are `sleep`
processes this test starts and then checks are still alive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import lock, ops

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("host_state")

LOCKS = """\
1: FLOCK  ADVISORY  WRITE 3025 fe:00:2147252 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4444 fe:00:2147252 0 EOF
2: POSIX  ADVISORY  WRITE 17352 fe:00:2153886 0 EOF
3: OFDLCK ADVISORY  READ  -1 00:05:1234 0 EOF
4: FLOCK  ADVISORY  WRITE 777 103:0a:2153886 0 EOF
5: LEASE  ACTIVE    READ  900 fe:00:99 0 EOF
garbage line
"""


# --- pure parsing ----------------------------------------------------------------------


def test_proc_locks_lines_parse_with_hex_device_and_waiters_marked():
    got = lock.parse_proc_locks(LOCKS)
    assert lock.KernelLock("FLOCK", "WRITE", 3025, 0xFE, 0, 2147252, False) in got
    assert lock.KernelLock("FLOCK", "WRITE", 4444, 0xFE, 0, 2147252, True) in got
    assert lock.KernelLock("FLOCK", "WRITE", 777, 0x103, 0x0A, 2153886, False) in got
    assert lock.KernelLock("OFDLCK", "READ", -1, 0, 5, 1234, False) in got
    assert len(got) == 6  # the garbage line is no lock
    assert lock.parse_lock_line("lock:\t1: FLOCK  ADVISORY  WRITE 12 fe:00:5 0 EOF") == lock.KernelLock("FLOCK", "WRITE", 12, 0xFE, 0, 5, False)


def test_flock_pids_match_major_minor_and_inode_and_skip_waiters_and_posix_locks():
    dev = os.makedev(0xFE, 0)
    assert lock.flock_pids(LOCKS, dev, 2147252) == [3025]  # not the waiter 4444
    assert lock.flock_pids(LOCKS, dev, 2153886) == []  # a POSIX lock on that inode is not our flock
    assert lock.flock_pids(LOCKS, os.makedev(0x103, 0x0A), 2153886) == [777]
    assert lock.flock_pids(LOCKS, os.makedev(0xFE, 1), 2147252) == []  # same inode, another device
    assert lock.flock_pids(LOCKS, dev, 99) == []  # a lease is not a flock


def test_fdinfo_lock_lines():
    text = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t5\nlock:\t1: FLOCK  ADVISORY  WRITE 12 fe:00:5 0 EOF\n"
    assert lock.fdinfo_holds(text, os.makedev(0xFE, 0), 5)
    assert not lock.fdinfo_holds(text, os.makedev(0xFE, 0), 6)
    assert not lock.fdinfo_holds(text.replace("lock:", "nope:"), os.makedev(0xFE, 0), 5)


# --- the directory and the file ----------------------------------------------------------


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious"
    target.write_text("root's data\n")
    lock.path().symlink_to(target)
    with pytest.raises(lock.LockUnsafe, match="is a symlink") as exc:
        lock.acquire("me", "r1")
    assert str(lock.path()) in str(exc.value) and "remove" in str(exc.value)
    with pytest.raises(lock.LockUnsafe):
        lock.read()
    assert target.read_text() == "root's data\n"


def test_a_lock_file_owned_by_another_account_is_refused(tmp_path):
    lock.acquire("me", "r1").release()
    os.chown(lock.path(), 65534, 65534)
    with pytest.raises(lock.LockUnsafe, match="owned by uid 65534") as exc:
        lock.acquire("me", "r2")
    assert str(lock.path()) in str(exc.value) and "fix: remove" in str(exc.value)
    answer = ops.unlock({"force": True, "reason": "t", "operator": "test"})
    assert not answer["ok"] and "owned by uid 65534" in answer["msg"] and "nothing was signalled" in answer["msg"]


def test_a_world_writable_lock_file_is_refused(tmp_path):
    lock.acquire("me", "r1").release()
    os.chmod(lock.path(), 0o666)
    with pytest.raises(lock.LockUnsafe, match="writable by any user"):
        lock.acquire("me", "r2")


def test_lock_directory_must_be_ours_not_a_symlink_and_not_world_writable(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv("FLEETROLL_LOCK_DIR", str(link))
    with pytest.raises(lock.LockUnsafe, match=f"lock directory {link} is a symlink"):
        lock.acquire("me", "r1")
    assert list(real.iterdir()) == []
    d = tmp_path / "d"
    d.mkdir()
    monkeypatch.setenv("FLEETROLL_LOCK_DIR", str(d))
    os.chmod(d, 0o1777)  # like /run/lock
    with pytest.raises(lock.LockUnsafe, match="writable by any user.*fix: chown root"):
        lock.acquire("me", "r1")
    os.chmod(d, 0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(lock.LockUnsafe, match="owned by uid 65534"):
        lock.acquire("me", "r1")
    os.chown(d, 0, 0)
    lock.acquire("me", "r1").release()


def test_default_lock_directory_is_under_the_state_directory_and_made_private(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETROLL_LOCK_DIR")
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / "state"))
    assert lock.path().parent == tmp_path / "state" / "lock"
    lock.acquire("me", "r1").release()
    st = os.lstat(tmp_path / "state" / "lock")
    assert st.st_uid == os.geteuid() and (st.st_mode & 0o7777) in (0o700, 0o2770)  # 2770 when a Docker socket gives a group
    assert "/run/lock" not in str(lock.path())


# --- who holds it: the kernel ------------------------------------------------------------


def _sleep() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"])


def _forge(victim: subprocess.Popen) -> None:
    """Write a holder record naming the victim (pid and its real start time), as a forger would."""
    time.sleep(0.05)
    lock.path().write_text(json.dumps({"holder": "ops@laptop", "rollout_id": "r-forged", "pid": victim.pid,
                                       "start": lock.start_time(victim.pid), "time": time.time()}))


HOLD = """
import fcntl, json, os, sys, time
from agent import lock
fd = lock.open_file()
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, sys.argv[1].encode(), 0)
print("held", flush=True)
time.sleep(300)
"""


def _child(code: str, *argv: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "FLEETROLL_LOCK_DIR": os.environ["FLEETROLL_LOCK_DIR"],
           "FLEETROLL_STATE_DIR": os.environ["FLEETROLL_STATE_DIR"], "PATH": os.environ["PATH"]}
    p = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_record_naming_a_pid_with_no_flock_is_no_holder_and_unlock_force_signals_nothing(tmp_path):
    victim = _sleep()
    try:
        lock.acquire("me", "r0").release()  # the file exists (as after an earlier rollout), nobody holds it
        _forge(victim)
        assert lock.read() is None, "a record is not a holder: the kernel lists no flock"
        answer = ops.unlock({"force": True, "reason": "stuck", "operator": "test"})
        assert answer["ok"] and "not locked" in answer["msg"]
        time.sleep(0.2)
        assert victim.poll() is None, "unlock --force signalled a process the lock file merely named"
        lock.acquire("me", "r1").release()  # and the forged record blocks nothing
    finally:
        victim.kill()
        victim.wait()


def test_a_holder_whose_record_names_another_process_is_reported_and_nobody_is_signalled(tmp_path):
    victim = _sleep()
    holder = None
    try:
        record = json.dumps({"holder": "ops@laptop", "rollout_id": "r-forged", "pid": victim.pid,
                             "start": lock.start_time(victim.pid), "time": time.time()})
        holder = _child(HOLD, record)
        info = lock.read()
        assert info["pid"] == holder.pid and info["kernel_pid"] == holder.pid and info["record_pid"] == victim.pid
        assert not info["record_agrees"] and f"the record names pid {victim.pid}" in info["note"]
        with pytest.raises(lock.Locked, match=f"pid {holder.pid}.*record is not evidence"):
            lock.acquire("me", "r1")
        answer = ops.unlock({"force": True, "reason": "stuck", "operator": "test"})
        assert not answer["ok"] and "not signalling anything" in answer["msg"], answer["msg"]
        time.sleep(0.2)
        assert victim.poll() is None and holder.poll() is None, "unlock --force signalled on the file's word"
    finally:
        for p in (victim, holder):
            if p is not None:
                p.kill()
                p.wait()


INHERIT = """
import os, sys, time
from agent import lock
held = lock.acquire("worker@test", "r-worker")
if os.fork():
    os._exit(0)  # the taker exits; its child keeps the descriptor (as a rollout's detached worker does)
time.sleep(0.1)
held.record("worker@test")
print("held", flush=True)
print(os.getpid(), flush=True)
time.sleep(300)
"""


def test_unlock_force_stops_a_confirmed_holder_that_inherited_the_lock(tmp_path):
    """/proc/locks names the taker (exited); the worker's fdinfo shows it carries the lock: that one is stopped."""
    p = _child(INHERIT)
    worker = int(p.stdout.readline())
    try:
        info = lock.read()
        assert info["pid"] == worker and info["record_agrees"] and info["kernel_pid"] != worker
        assert info["holder"] == "worker@test" and info["rollout_id"] == "r-worker"
        answer = ops.unlock({"force": True, "reason": "stuck", "operator": "test"})
        assert answer["ok"] and f"stopped pid {worker}" in answer["msg"], answer["msg"]
        assert lock.start_time(worker) == ""
        assert lock.read() is None
        lock.acquire("me", "r2").release()
    finally:
        try:
            os.kill(worker, 9)
        except ProcessLookupError:
            pass
        p.wait()


def test_unlock_without_force_tells_another_account_it_may_not_stop_the_holder(monkeypatch):
    """Found by an exploratory run: the second operator account was told '--force stops that process'; its --force then
    (rightly) refused, the holder being the first account's."""
    import os

    from agent import unlock_op

    mine = {"pid": os.getpid()}
    assert unlock_op._force_words(mine).startswith("--force stops that process")
    monkeypatch.setattr(os, "geteuid", lambda: 12345)  # another, unprivileged account; pid 1 is root's
    words = unlock_op._force_words({"pid": 1})
    assert words.startswith("that process belongs to another account (uid 0)") and "--force stops" not in words
