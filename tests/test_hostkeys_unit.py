"""fab hostkeys' ending, without hosts (the scans and pins run against the lab in test_lab_security.py)."""

from __future__ import annotations


def test_the_ending_says_apart_a_key_not_pinned_and_an_accept_that_named_another_than_the_pinned_one():
    """Found by an exploratory run: --accept mainpc=SHA256:bogus for a pinned mainpc ended 'not pinned: mainpc'
    beside a table saying its key was pinned ('same')."""
    from playbooks import hostkeys as hk

    same, new = hk.Scan("mainpc", "10.0.0.1", None), hk.Scan("pc2", "10.0.0.2", None)
    same.status, new.status = "same", "new"
    assert hk.not_done([same]).startswith("--accept named another key than the one pinned for mainpc (its pin is unchanged)")
    assert hk.not_done([new, same]).startswith("not pinned: pc2; --accept named another key than the one pinned for mainpc")
    assert hk.not_done([]).startswith("not pinned: unreachable hosts")
