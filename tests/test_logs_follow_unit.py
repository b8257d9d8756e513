"""`fab logs -f` on a crash-looping container follows it run after run (agent side, no host)."""

from __future__ import annotations

from agent import ops


class Looping:
    """A container that crashes twice (each run logs a line, then Docker restarts it), then stays stopped."""

    def __init__(self):
        self.runs = 0
        self.states = []  # what reload() shows next
        self.attrs = {"State": {"Running": False, "Restarting": True}, "RestartCount": 0}
        self.status = "restarting"
        self.calls = []

    def logs(self, **kw):
        self.calls.append(kw)
        self.runs += 1
        self.states = ([{"Running": False, "Restarting": True}] * 2 + [{"Running": True, "Restarting": False}]
                       if self.runs < 3 else [{"Running": False, "Restarting": False}])
        return iter([f"crash {self.runs}\n".encode()])

    def reload(self):
        st = self.states.pop(0) if self.states else {"Running": False, "Restarting": False}
        self.attrs = {"State": st, "RestartCount": self.runs}
        self.status = "running" if st["Running"] else ("restarting" if st["Restarting"] else "exited")


def test_follow_reattaches_after_each_restart_without_repeating_lines(monkeypatch):
    from agent import facts

    c = Looping()

    class Client:
        class containers:  # noqa: N801 - the docker SDK's attribute name
            @staticmethod
            def get(name):
                return c

    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: Client)
    monkeypatch.setattr(ops.time, "sleep", lambda s: None)
    ticks = iter(range(10_000))
    monkeypatch.setattr(ops.time, "monotonic", lambda: next(ticks))
    lines = []
    answer = ops.logs_op({"service": "vision-api", "follow": True, "tail": 5}, lambda e: lines.append(e["line"]))
    assert [x for x in lines if x.startswith("crash")] == ["crash 1", "crash 2", "crash 3"]
    assert "-- vision-api restarted (restart 1) --" in lines
    assert answer["ok"] and answer["msg"] == "vision-api stopped (exited)"
    # the first attach shows the last lines; each re-attach only what came after the previous run ended
    assert c.calls[0]["tail"] == 5 and all("since" in k and "tail" not in k for k in c.calls[1:])
