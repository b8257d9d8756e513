"""The agent archive's hash from the cache is the build's, and any change to a file of it builds again (no hosts)."""

from __future__ import annotations

import os

from playbooks import agentpack


def test_the_cached_hash_is_the_builds_and_a_changed_file_builds_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "bootstrap.py"
    src.write_text("print('one')\n")
    monkeypatch.setattr(agentpack, "_entries", lambda: [("__main__.py", src)])
    builds = []

    def build():
        builds.append(src.read_text())
        return b"zip", f"{len(builds):064x}"

    build.cache_info = lambda: type("I", (), {"currsize": 0})()
    monkeypatch.setattr(agentpack, "build", build)
    first = agentpack.digest()
    assert agentpack.digest() == first and len(builds) == 1, "the second command reads the cache, builds nothing"
    st = src.stat()
    src.write_text("print('owt')\n")  # the same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # and a modification time 1 ns later
    assert agentpack.digest() != first and len(builds) == 2, "a changed file is built again"
    assert (tmp_path / "cache" / "fleetroll" / "agent-digests.json").exists()


def test_the_real_archive_hash_agrees_with_its_build(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    agentpack.build.cache_clear()
    assert agentpack.digest() == agentpack.build()[1]
    agentpack.build.cache_clear()
    assert agentpack.digest() == agentpack.build()[1], "from the cache, the same hash"


def test_an_unwritable_cache_is_no_cache(tmp_path, monkeypatch):
    (tmp_path / "fleetroll").write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    agentpack.build.cache_clear()
    assert agentpack.digest() == agentpack.build()[1]
