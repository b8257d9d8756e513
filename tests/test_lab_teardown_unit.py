"""Taking the lab down is interruptible: whatever stops it half-way, the next `fab lab.down` can finish."""

from __future__ import annotations

import shutil

import pytest

from lab import teardown


def test_the_marker_goes_last_so_an_interrupted_teardown_can_be_finished(tmp_path, monkeypatch):
    lab = tmp_path / "frlab9"
    for d in ("hosts/mainpc/docker", "home", "registry"):
        (lab / d).mkdir(parents=True)
    (lab / "lab.json").write_text("{}")
    (lab / teardown.MARKER).write_text("{}")
    monkeypatch.setattr(teardown, "LAB_DIR", lab)
    real = shutil.rmtree
    calls = []

    def interrupted(path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a Ctrl-C, or the test worker killed, in the middle of the removal
        real(path, *a, **kw)

    monkeypatch.setattr(teardown.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        teardown._remove_lab_dir()
    assert (lab / teardown.MARKER).is_file()  # still the lab's own: the next down() may remove it
    monkeypatch.setattr(teardown.shutil, "rmtree", real)
    teardown._remove_lab_dir()
    assert not lab.exists()


def test_what_cannot_be_removed_keeps_the_marker(tmp_path, monkeypatch):
    lab = tmp_path / "frlab9"
    (lab / "hosts").mkdir(parents=True)
    (lab / teardown.MARKER).write_text("{}")
    monkeypatch.setattr(teardown, "LAB_DIR", lab)
    monkeypatch.setattr(teardown.shutil, "rmtree", lambda *a, **kw: None)  # a busy mount: nothing removed
    teardown._remove_lab_dir()
    assert (lab / teardown.MARKER).is_file() and (lab / "hosts").is_dir()
