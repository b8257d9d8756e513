"""The one vocabulary of a transaction: journal steps, per-service outcomes, rollout states, exit codes.

Every module that writes or reads one of these names (the transaction, recovery, versions,
ops, the controller's progress, report and ledger) takes it from here. Names used to be
string literals in six modules, and they drifted: progress showed a `gate-failed` that
nothing wrote and hid the `swap-failed` the transaction journals. `journal.append` now
refuses a step this module does not define, and tests/test_vocabulary_unit.py fails when
a module compares against or writes a name that is not here.

The agent ships alone, so this module is pure (no imports beyond the standard library) and
the controller imports it like the other pure agent modules.
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    """What a journal record says happened (the `step` field), and what progress events are called."""

    ACCEPTED = "accepted"  # the transaction's arguments, first record of every journal
    WORKER = "worker"  # the detached transaction process started
    CRASHED = "crashed"  # the transaction process raised: recovery finishes it
    FAILPOINT = "failpoint"  # tests: the transaction stops dead here
    PULL = "pull"
    PIN_PREV = "pin-prev"
    PIN_SKIPPED = "pin-skipped"
    SETTLE = "settle"  # a restarting/paused container is made still before it is renamed, stopped or removed
    SECRET_FILES_LEFT = "secret-files-left"  # a secret directory the agent could not remove (paths and why, no value)
    SECRET_FILES_SWEPT = "secret-files-swept"  # secret directories no container mounted any more, removed (names only)
    SET_ASIDE = "set-aside"
    STOP_OLD = "stop-old"
    START_NEW = "start-new"
    CREATED = "created"
    GATE = "gate"
    GATE_PROGRESS = "gate-progress"
    GATED = "gated"
    PROXY_BACKENDS = "proxy-backends"
    PROXY_OVERLAY = "proxy-overlay"  # the old proxy left fr-proxy to be set aside (Docker renames none on it), or rejoined
    SWITCH = "switch"
    SWITCHED = "switched"
    DRAIN = "drain"
    SWAP_FAILED = "swap-failed"  # the new container failed (gate, Docker error): restore follows
    REVERTING = "reverting"
    COMMIT_HOST = "commit-host"  # the host decided to commit: recovery commits what passed
    ABORT_HOST = "abort-host"  # the host decided to restore every touched service
    COMMITTING = "committing"
    # Final per-service steps: their names are the outcomes of the same name.
    COMMITTED = "committed"
    REVERTED = "reverted"
    REMOVED = "removed"
    REVERT_FAILED = "revert-failed"
    REFUSED = "refused"
    SKIPPED = "skipped"
    NEEDS_OPERATOR = "needs-operator"
    # Host-level records.
    FROZEN = "frozen"
    THAWED = "thawed"
    FREEZE_FAILED = "freeze-failed"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    DONE = "done"  # the transaction's summary: its outcome
    BATCH = "batch"  # controller-only progress event: a batch of hosts starts


class Outcome(StrEnum):
    """What became of one service in one transaction, as its host observed it."""

    PENDING = "pending"  # not decided yet (never leaves a host)
    GATED = "gated"  # passed its gate, not yet committed (never leaves a host)
    NOOP = "noop"
    COMMITTED = "committed"
    REVERTED = "reverted"  # the old release runs again, proven healthy after the fact
    REMOVED = "removed"  # it had no earlier version; the new container was removed
    REVERT_FAILED = "revert-failed"  # neither release is proven healthy: an operator must look
    REFUSED = "refused"  # nothing was changed for it
    SKIPPED = "skipped"  # not started (an earlier failure, nothing to do)
    NEEDS_OPERATOR = "needs-operator"  # not observed (no answer, an exception): never claimed as anything else


class State(StrEnum):
    """A rollout's (or rollback's, restart's) state, derived from the outcomes its hosts reported."""

    NOOP = "noop"
    COMMITTED = "committed"
    REVERTED = "reverted"
    REFUSED = "refused"
    FAILED = "failed"
    NEEDS_OPERATOR = "needs-operator"
    DRY_RUN = "dry-run"
    CHANGES_PLANNED = "changes-planned"  # a dry run that plans changes


class HostState(StrEnum):
    """Where one host's transaction left it (the `state` of its `done` record)."""

    GOOD = "good"  # every service in one of its two good states
    NEEDS_OPERATOR = "needs-operator"


class Journal(StrEnum):
    """Where a host's last transaction is, as `fab status` reads it from the journal and the lock."""

    FINISHED = "finished"  # its `done` record is written
    RUNNING = "running"  # a live process holds the lock
    INTERRUPTED = "interrupted"  # no outcome and no holder: the next agent call recovers it


class Record(StrEnum):
    """The kinds of the controller's ledger records that tell a rollout's story (the controller's ledger module)."""

    STARTED = "started"
    FINISHED = "finished"
    REFUSED = "refused"  # refused before any host was asked to change anything
    INTERRUPTED = "interrupted"  # the operator pressed Ctrl-C; the hosts carry on
    RECOVERED = "recovered"  # a later call found the host's interrupted transaction and finished it
    OBSERVED = "observed"  # a later fab status read how the host ended a rollout the controller never finished
    UNLOCKED = "unlocked"  # an operator's fab unlock --force stopped the rollout's live transaction on a host
    REMOVED = "removal"  # fab remove took a service's containers off a host (its own row in fab history)


# Per-service outcome transitions, as data: from each outcome, what it may become next.
# `committed` may still become `reverted`/`removed`/`revert-failed` through a phase-wide revert
# or `fab rollback`, and `needs-operator` when the revert gave no observed answer.
TRANSITIONS: dict[Outcome, frozenset[Outcome]] = {
    Outcome.PENDING: frozenset({Outcome.GATED, Outcome.NOOP, Outcome.REFUSED, Outcome.SKIPPED, Outcome.REVERTED,
                                Outcome.REMOVED, Outcome.REVERT_FAILED, Outcome.NEEDS_OPERATOR}),
    Outcome.GATED: frozenset({Outcome.COMMITTED, Outcome.REVERTED, Outcome.REMOVED, Outcome.REVERT_FAILED, Outcome.NEEDS_OPERATOR}),
    Outcome.COMMITTED: frozenset({Outcome.REVERTED, Outcome.REMOVED, Outcome.REVERT_FAILED, Outcome.NEEDS_OPERATOR}),
    Outcome.NOOP: frozenset(),
    Outcome.REVERTED: frozenset(),
    Outcome.REMOVED: frozenset(),
    Outcome.REVERT_FAILED: frozenset(),
    Outcome.REFUSED: frozenset(),
    Outcome.SKIPPED: frozenset(),
    Outcome.NEEDS_OPERATOR: frozenset(),
}

# Outcomes a host may report (the transient ones never leave it).
REPORTED = frozenset(TRANSITIONS) - {Outcome.PENDING, Outcome.GATED}
# The release did not go in for this service.
FAILED = frozenset({Outcome.REVERTED, Outcome.REMOVED, Outcome.REVERT_FAILED, Outcome.REFUSED, Outcome.NEEDS_OPERATOR})
# The service is in one of its two good states (or untouched).
GOOD = frozenset({Outcome.COMMITTED, Outcome.NOOP, Outcome.REVERTED, Outcome.REMOVED, Outcome.REFUSED, Outcome.SKIPPED})
# An operator must look: nothing proves the service healthy.
NEEDS = frozenset({Outcome.REVERT_FAILED, Outcome.NEEDS_OPERATOR})
# A journal step that ends a service's part of a transaction.
FINAL_STEPS = frozenset({Step.COMMITTED, Step.REVERTED, Step.REMOVED, Step.REVERT_FAILED, Step.REFUSED, Step.SKIPPED,
                         Step.NEEDS_OPERATOR})
# A step that means the new container failed (versions: "failed its gate").
FAILED_STEPS = frozenset({Step.SWAP_FAILED})
# What the live progress shows (everything else is bookkeeping); the failing step is one of them.
PROGRESS = frozenset({Step.BATCH, Step.PULL, Step.PIN_PREV, Step.SETTLE, Step.STOP_OLD, Step.START_NEW, Step.GATE,
                      Step.GATE_PROGRESS, Step.SWITCHED, Step.SWAP_FAILED, Step.REVERTING, Step.COMMITTED, Step.REVERTED,
                      Step.REVERT_FAILED, Step.REFUSED, Step.REMOVED, Step.NEEDS_OPERATOR, Step.FROZEN, Step.DONE})

# The contract scripts rely on (README): 0 committed or nothing to do, 1 bad input (raised, not a state),
# 2 a dry run that plans changes, 3 refused before any change, 4 rolled back (every host good), 5 an operator must look.
EXIT_CODES: dict[State, int] = {State.COMMITTED: 0, State.NOOP: 0, State.DRY_RUN: 0, State.CHANGES_PLANNED: 2,
                                State.REFUSED: 3, State.FAILED: 3, State.REVERTED: 4, State.NEEDS_OPERATOR: 5}
EXIT_ORDER = (0, 2, 3, 4, 5)  # worse to the right: the worst state of several phases decides


def is_step(name: str) -> bool:
    return name in Step._value2member_map_


def can_become(before: str, after: str) -> bool:
    """May a service's outcome `before` become `after`? (Unknown names may not.)"""
    try:
        return Outcome(after) in TRANSITIONS[Outcome(before)]
    except ValueError:
        return False


def state_of(outcomes: list[str], unobserved: bool = False) -> State:
    """A rollout's state from its services' observed outcomes (pure).

    `unobserved`: some host or service gave no outcome at all; that alone needs an operator.
    """
    if unobserved or any(o in NEEDS or o not in REPORTED for o in outcomes):
        return State.NEEDS_OPERATOR
    if any(o in (Outcome.REVERTED, Outcome.REMOVED) for o in outcomes):
        return State.REVERTED
    if any(o == Outcome.REFUSED for o in outcomes):
        return State.REFUSED
    if outcomes and all(o in (Outcome.NOOP, Outcome.SKIPPED) for o in outcomes):
        return State.NOOP
    return State.COMMITTED


def rollback_state(state: str, outcomes: list[str]) -> str:
    """A rollback's state (pure): `reverted` is its success, so a service it refused (nothing recorded to go back to,
    a hard rule, a locked host) is not hidden behind the others' success: the rollback as a whole is `refused` (3),
    and the report's lines say which services did go back. (A rollout's revert still outranks a refusal: 4.)"""
    if state == State.REVERTED and Outcome.REFUSED in outcomes:
        return State.REFUSED
    return state


def exit_code(states: list[str]) -> int:
    """The worst of the states' codes (a later phase never hides an earlier one's revert); unknown names are 5."""
    codes = [EXIT_CODES.get(State(s), 5) if s in State._value2member_map_ else 5 for s in states]
    return max(codes, key=EXIT_ORDER.index, default=0)
