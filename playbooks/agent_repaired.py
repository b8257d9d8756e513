"""What the controller says when a host's agent found its unpacked files changed and unpacked them again.

The bootstrap (agent/bootstrap.py) unpacks the verified archive again when its tree fails the check; the
first answer of that agent process carries `repaired` (agent/answer.py). Said by rollouts, rollbacks and
status alike, never silently: found by an exploratory run, a same-size edit of a file there was repaired
without a word, and an operator should hear that files of the agent on a host changed under it.
"""

from __future__ import annotations


def repaired_words(host: str, tree: str) -> str:
    return (f"{host}: NOTE: the agent's unpacked files ({tree}) no longer matched the verified archive they came from (a"
            " file changed, damaged or added since they were unpacked); they were unpacked again before anything ran. If"
            " nobody on the host changed them (or upgraded its python3, whose new bytecode can do this), find out who could:"
            " they belong to the login account the inventory names")
