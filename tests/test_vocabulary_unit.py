"""One vocabulary: every step, outcome and state comes from agent/vocabulary.py, and its transitions hold together.

The names used to be string literals in six modules and drifted apart (progress showed a
`gate-failed` nothing wrote and hid the `swap-failed` the transaction journals). This test
reads the source of every module that writes or reads them and fails on a literal where a
vocabulary name belongs, or on a vocabulary name that does not exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent import journal, vocabulary
from agent.vocabulary import FAILED, NEEDS, REPORTED, TRANSITIONS, Outcome, State, Step

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["agent/transaction.py", "agent/motion.py", "agent/decisions.py", "agent/prepare.py", "agent/proxyswitch.py",
           "agent/restore.py", "agent/reverts.py", "agent/recovery.py", "agent/versions.py", "agent/ops.py", "agent/journal.py",
           "playbooks/progress.py", "playbooks/rollout.py", "playbooks/rollback.py", "playbooks/ending.py", "playbooks/render.py",
           "playbooks/ledger.py"]
NAMES = {str(x) for enum in (Step, Outcome, State, vocabulary.HostState, vocabulary.Record,
                                      vocabulary.Journal) for x in enum}
# Hyphenated words that are not transaction vocabulary: update orders, failure policies, Docker's and the lab's words.
NOT_VOCABULARY = {"created", "running", "link-lost", "start-first", "stop-first", "revert-phase", "revert-service", "phase-revert", "foreign-container",
                  "not-running", "not-this-rollout", "no-such-version", "no-recorded-config", "image-gone", "container-config",
                  "image-user", "image-entrypoint", "set-aside-unknown", "spec-hash", "unless-stopped", "on-failure"}
ENUMS = {"Step": Step, "Outcome": Outcome, "State": State, "HostState": vocabulary.HostState, "Record": vocabulary.Record,
         "Journal": vocabulary.Journal}


def _strings(node: ast.AST) -> list[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [c for e in node.elts for c in _strings(e)]
    return []


def _looks_like_vocabulary(s: str) -> bool:
    if s in NOT_VOCABULARY:  # "created", "running": Docker's state words too; journal writes are checked at run time
        return False
    return s in NAMES or ("-" in s and s.islower() and " " not in s and s not in NOT_VOCABULARY and len(s) < 30)


def problems_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def flag(node: ast.AST, what: str) -> None:
        out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            pos = 1 if name == "append" and isinstance(fn, ast.Attribute) and getattr(fn.value, "id", "") == "journal" else 0
            if name in ("j", "hit") or pos == 1:
                if len(node.args) > pos:
                    for c in _strings(node.args[pos]):
                        flag(c, f"step {c.value!r} written as a literal: use vocabulary.Step")
            for kw in node.keywords:
                if kw.arg in ("outcome", "final", "state"):
                    for c in _strings(kw.value):
                        if _looks_like_vocabulary(c.value):
                            flag(c, f"{kw.arg}={c.value!r} as a literal: use the vocabulary")
        elif isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for c in _strings(side):
                    if _looks_like_vocabulary(c.value):
                        flag(c, f"compares with {c.value!r} as a literal: use the vocabulary")
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "outcome" or isinstance(t, ast.Tuple) and any(
                        isinstance(e, ast.Attribute) and e.attr == "outcome" for e in t.elts):
                    for c in _strings(value) + [x for e in getattr(value, "elts", []) for x in _strings(e)]:
                        if c.value in NAMES:
                            flag(c, f"outcome {c.value!r} assigned as a literal: use vocabulary.Outcome")
            if all(isinstance(t, ast.Name) for t in targets) and isinstance(value, ast.Set | ast.Tuple | ast.List) and any(
                    c.value in NAMES for c in _strings(value)):
                flag(node, "a list of step/outcome names as literals: derive it from agent/vocabulary.py")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ENUMS:
            if not hasattr(ENUMS[node.value.id], node.attr):
                flag(node, f"{node.value.id}.{node.attr} is not defined in agent/vocabulary.py")
    return out


@pytest.mark.parametrize("module", MODULES)
def test_module_writes_and_reads_only_vocabulary_names(module):
    assert problems_in(ROOT / module) == []


def test_the_scan_catches_what_drifted_before(tmp_path):
    bad = ROOT / "tests" / "_vocab_probe.py"
    bad.write_text('SHOWN = {"pull", "gate-failed"}\n\ndef f(self, r):\n    self.j("gate-failed", "svc")\n'
                   '    if r.outcome == "unknown-outcome":\n        r.outcome = "reverted"\n    print(Step.NO_SUCH)\n')
    try:
        found = problems_in(bad)
    finally:
        bad.unlink()
    assert len(found) == 5, found


def test_transition_table_is_closed_and_every_outcome_is_reachable():
    assert set(TRANSITIONS) == set(Outcome)
    for before, afters in TRANSITIONS.items():
        assert afters <= set(Outcome), before
    seen, todo = {Outcome.PENDING}, [Outcome.PENDING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(Outcome)
    # a final outcome goes nowhere; the transient ones never leave a host
    assert all(not TRANSITIONS[o] for o in REPORTED - {Outcome.COMMITTED})
    assert Outcome.PENDING not in REPORTED and Outcome.GATED not in REPORTED
    assert NEEDS <= FAILED and not (NEEDS & vocabulary.GOOD)
    # every outcome a host reports is also the name of the journal step that ends it
    assert {str(o) for o in REPORTED - {Outcome.NOOP}} <= {str(s) for s in vocabulary.FINAL_STEPS}


def test_state_and_exit_code_come_from_observed_outcomes_only():
    assert vocabulary.state_of([Outcome.COMMITTED]) == State.COMMITTED
    assert vocabulary.state_of([Outcome.COMMITTED, Outcome.REVERTED]) == State.REVERTED
    assert vocabulary.state_of([Outcome.REVERTED], unobserved=True) == State.NEEDS_OPERATOR
    assert vocabulary.state_of(["something-else"]) == State.NEEDS_OPERATOR
    assert vocabulary.state_of([Outcome.SKIPPED]) == State.NOOP
    assert vocabulary.exit_code([State.COMMITTED, State.REVERTED]) == 4
    assert vocabulary.exit_code([State.CHANGES_PLANNED]) == 2 and vocabulary.exit_code(["nonsense"]) == 5
    assert {vocabulary.exit_code([s]) for s in State} <= {0, 2, 3, 4, 5}


def test_the_journal_refuses_a_step_outside_the_vocabulary(host_state):
    with pytest.raises(ValueError, match="gate-failed"):
        journal.append("r-x", "gate-failed", service="svc")
    assert journal.append("r-x", Step.SWAP_FAILED, service="svc")["step"] == "swap-failed"
