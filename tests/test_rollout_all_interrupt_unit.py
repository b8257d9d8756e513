"""Ctrl-C during `fab rollout --all`: earlier phases are not forgotten, later ones are named as never started.

Found reading the code: an interruption while the second phase was still planning said
"interrupted before any host was asked to change anything; nothing was changed" though the
first phase had committed; and no interruption named the phases it never started.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from playbooks import rollout
from playbooks.ending import Interrupted, RolloutReport


def _inv(*names: str):
    return SimpleNamespace(phases=[SimpleNamespace(name=n) for n in names], fleet=SimpleNamespace(reverse_proxy=None))


def _fake_rollout(states: dict[str, str], stop_at: str, how: BaseException):
    def run(inv, phase, **kw):
        if phase == stop_at:
            raise how
        return RolloutReport(rollout_id=f"r-{phase}", phase=phase, ok=True, state=states[phase])

    return run


@pytest.mark.parametrize("how", [KeyboardInterrupt(), Interrupted("r-web", "web", ["pc2"])], ids=["planning", "running"])
def test_an_interrupted_second_phase_names_what_the_first_did_and_what_never_started(monkeypatch, how):
    monkeypatch.setattr(rollout, "rollout", _fake_rollout({"edge": "committed"}, "web", how))
    with pytest.raises(Interrupted) as caught:
        rollout.rollout_all(_inv("edge", "web", "gpu-mainpc", "gpu-pc2"))
    words = str(caught.value)
    assert "this run's phases ended: edge committed" in words
    assert words.endswith("Not started: gpu-mainpc, gpu-pc2")
    assert "nothing was changed" not in words
    if isinstance(how, Interrupted):
        assert "rollout r-web of web had these hosts in its plan: pc2" in words and "fab status --follow" in words
    else:
        assert "interrupted before phase web asked any host to change anything" in words


def test_an_interrupted_first_phase_keeps_its_own_words(monkeypatch):
    monkeypatch.setattr(rollout, "rollout", _fake_rollout({}, "edge", KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        rollout.rollout_all(_inv("edge", "web"))


def test_ctrl_c_while_a_phases_report_and_hooks_are_written_is_not_called_nothing_changed(monkeypatch, tmp_path):
    """Found by a review: Ctrl-C in a phase's post-rollout hook (after the hosts had ended) left rollout() as a bare
    KeyboardInterrupt, which --all then called 'interrupted before phase web asked any host to change anything'."""
    from playbooks import transport

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    plan = SimpleNamespace(rollout_id="r-web", phase="web", hosts=["pc2"], changes=[1])
    ro = SimpleNamespace(plan=plan, report=SimpleNamespace(timings=None, preflight=SimpleNamespace(ok=True)), common={},
                         pool=SimpleNamespace(finish=lambda: None, times={}), failpoint=None, hosts=None)

    def hooks_cut(ro, results):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollout.targets, "check", lambda *a, **k: None)
    monkeypatch.setattr(rollout, "_decide", lambda *a, **k: ro)
    monkeypatch.setattr(rollout, "_stop_before_changing", lambda *a, **k: False)
    monkeypatch.setattr(rollout, "_run", lambda ro: {})
    monkeypatch.setattr(rollout, "_record", hooks_cut)
    inv = SimpleNamespace(fleet=SimpleNamespace(engine_of=lambda p: "ssh"), phase=lambda name: name)
    with transport.Pool() as pool:
        with pytest.raises(Interrupted) as caught:
            rollout._rollout(inv, "web", pool=pool)
    assert "after the hosts of phase web had ended their transactions" in str(caught.value)
