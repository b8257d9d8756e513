"""Preflight's registry facts: a late registry is asked once more, a refusing one is not."""

from __future__ import annotations

from agent import facts
from agent.registry import RegistryError


class _Info:
    def to_json(self) -> dict:
        return {"digest": "sha256:" + "a" * 64}


class _Registry:
    def __init__(self, failures: list[str]):
        self.failures, self.calls = list(failures), 0

    def inspect(self, ref: str, local_config=None) -> _Info:
        self.calls += 1
        if self.failures:
            raise RegistryError("unreachable", f"registry r did not answer: {self.failures.pop(0)}")
        return _Info()


def _images(monkeypatch, registry: _Registry, refs=("r/a:1", "r/b:1")) -> dict:
    monkeypatch.setattr(facts, "RegistryClient", lambda insecure, timeout: registry)
    return facts.images(list(refs), insecure=True, timeout=1)


def test_a_registry_late_once_is_asked_again_and_answers(monkeypatch):
    reg = _Registry(["timed out"])
    out = _images(monkeypatch, reg)
    assert all(v["ok"] for v in out.values()) and reg.calls == 3


def test_a_registry_late_twice_is_unreachable_and_costs_no_more_for_the_other_images(monkeypatch):
    reg = _Registry(["timed out", "timed out"])
    out = _images(monkeypatch, reg)
    assert [v["kind"] for v in out.values()] == ["unreachable", "unreachable"] and reg.calls == 2


def test_a_refused_connection_is_not_retried(monkeypatch):
    reg = _Registry(["Connection refused"])
    out = _images(monkeypatch, reg)
    assert not out["r/a:1"]["ok"] and reg.calls == 1
