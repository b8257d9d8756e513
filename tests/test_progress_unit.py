"""Progress: plain lines when piped; one row per service updated in place, coloured, on a terminal; NO_COLOR honoured."""

from __future__ import annotations

import io

from playbooks.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


EVENTS = [("mainpc", {"event": "pull", "service": "llm-api", "ref": "reg/torch@sha256:ab"}),
          ("mainpc", {"event": "gate", "service": "llm-api"}),
          ("mainpc", {"event": "gate-progress", "service": "llm-api", "message": "still gating after 5s"}),
          ("mainpc", {"event": "committed", "service": "llm-api"}),
          ("mainpc", {"event": "heartbeat"}),
          ("mainpc", {"event": "done", "ok": True})]


def test_piped_output_is_one_plain_line_per_event():
    out = io.StringIO()
    with Progress(stream=out) as p:
        for h, ev in EVENTS:
            p(h, ev)
    assert out.getvalue().splitlines() == [
        "[mainpc] llm-api: pull reg/torch@sha256:ab", "[mainpc] llm-api: gate", "[mainpc] llm-api: gate-progress still gating after 5s",
        "[mainpc] llm-api: committed", "[mainpc] done host finished: ok"]


def test_terminal_output_keeps_one_row_per_service_in_colour(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Tty()
    with Progress(stream=out) as p:
        for h, ev in EVENTS:
            p(h, ev)
    text = out.getvalue()
    assert "\x1b[" in text and "committed" in text
    # the last frame has one row for llm-api (its latest step), not one line per event
    last = text.rsplit("detail", 1)[-1]  # after the last frame's header
    assert last.count("llm-api") == 1 and "committed" in last and "pull" not in last


def test_no_color_is_honoured_on_a_terminal(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Tty()
    with Progress(stream=out) as p:
        for h, ev in EVENTS:
            p(h, ev)
    assert "\x1b[32m" not in out.getvalue() and "\x1b[1;31m" not in out.getvalue()  # no green, no red


def test_disabled_progress_prints_nothing():
    out = Tty()
    with Progress(enabled=False, stream=out) as p:
        for h, ev in EVENTS:
            p(h, ev)
    assert out.getvalue() == ""


FAILING = [("pc2", {"event": "start-new", "service": "rag-api"}),
           ("pc2", {"event": "gate", "service": "rag-api"}),
           ("pc2", {"event": "swap-failed", "service": "rag-api", "reason": "unhealthy 1.0s into the 2s window: container restarting"}),
           ("pc2", {"event": "reverting", "service": "rag-api"}),
           ("pc2", {"event": "reverted", "service": "rag-api"}),
           ("pc2", {"event": "frozen"})]


def test_the_failing_step_is_shown_piped():
    out = io.StringIO()
    with Progress(stream=out) as p:
        for h, ev in FAILING:
            p(h, ev)
    lines = out.getvalue().splitlines()
    assert "[pc2] rag-api: swap-failed unhealthy 1.0s into the 2s window: container restarting" in lines
    assert "[pc2] rag-api: reverted" in lines


def test_the_failing_step_stays_on_its_row_on_a_terminal_while_the_revert_runs(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Tty()
    with Progress(stream=out) as p:
        for h, ev in FAILING:
            p(h, ev)
    last = out.getvalue().rsplit("detail", 1)[-1]
    assert "swap-failed -> reverted" in last and "container restarting" in last


def test_every_step_progress_shows_is_one_the_host_journals():
    from agent.vocabulary import Step
    from playbooks.progress import SHOWN, STYLE

    assert set(SHOWN) <= set(Step) and set(STYLE) <= set(Step)
    assert Step.SWAP_FAILED in SHOWN and Step.REVERT_FAILED in SHOWN


def test_a_switch_that_moved_nothing_is_not_shown_as_a_switch():
    """Found on the lab: a failed start-first release showed '[pc2] web: switched' though the proxy had never moved."""
    from playbooks.progress import describe

    assert describe({"event": "switched", "switched": False, "switch_ms": 0.0}) == ("switched", "the proxy serves it: confirmed, nothing to switch")
    assert describe({"event": "switched", "switched": True, "switch_ms": 3.2}) == ("switched", "the proxy now serves it (3.2 ms)")


def test_a_rollback_shows_reverted_not_the_commit_of_the_version_it_brought_back():
    """Found by an exploratory run: fab rollback's progress read 'committed' then 'reverted' for one service."""
    import io

    from playbooks.progress import Progress

    out = io.StringIO()
    p = Progress(stream=out, live=False)
    p("pc2", {"event": "committed", "service": "embed", "revert": True})
    p("pc2", {"event": "reverted", "service": "embed", "tag": "T0"})
    p("pc2", {"event": "committed", "service": "web"})
    assert out.getvalue().splitlines() == ["[pc2] embed: reverted", "[pc2] web: committed"]
