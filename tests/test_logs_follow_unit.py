"""`fab logs -f` on a crash-looping container follows it run after run (agent side, no host)."""

from __future__ import annotations

from agent import ops


class Looping:
    """A container that crashes twice (each run logs a line, then Docker restarts it), then stays stopped."""

    id = "c-looping"
    labels: dict = {}

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


def test_follow_of_a_quiet_container_ends_when_the_controller_closes_the_session(monkeypatch, tmp_path):
    """`fab logs -f`, then Ctrl-C: the agent must not wait on Docker's stream until the container next says something.

    A fake dockerd on a unix socket answers the inspect, then sends one log line and keeps the
    follow open without another byte. The agent's stdin is a pipe (a session, as the controller
    runs it); closing its write end is the controller going away.
    """
    import io
    import json
    import os
    import socket
    import struct
    import sys
    import threading
    import time

    from agent import container_ops, dockerapi, engine, facts, session

    path = str(tmp_path / "docker.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    held = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            if b"/logs" in head.split(b"\r\n")[0]:
                line = b"one line, then nothing\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + f"{8 + len(line):x}\r\n".encode() + struct.pack(">BxxxL", 1, len(line)) + line + b"\r\n")
                held.append(conn)  # the follow stays open: no end, no further line
                continue
            body = json.dumps({"Id": "c1", "Name": "/quiet", "State": {"Status": "running", "Running": True},
                               "Config": {"Tty": False, "Labels": {}}}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: dockerapi.DockerClient(engine.Engine(path, timeout or 10)))
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.FileIO(r, "r"))))
    monkeypatch.setitem(session.SESSION, "open", True)
    lines: list[str] = []
    done: dict = {}
    follower = threading.Thread(target=lambda: done.update(container_ops.logs_op({"service": "quiet", "follow": True, "tail": 5},
                                                                                    lambda e: lines.append(e["line"]))))
    follower.start()
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lines == ["one line, then nothing"]
    time.sleep(0.2)
    assert follower.is_alive(), "following a container that is still running"
    t0 = time.monotonic()
    os.close(w)  # the controller is gone
    follower.join(5)
    assert not follower.is_alive(), "the follower outlived its controller"
    assert time.monotonic() - t0 < 2
    assert done["ok"] is False and "controller closed the session" in done["msg"]
    srv.close()
    for c in held:
        c.close()


class Once:
    """A container that logs its lines, then stops for good (a swap stopped it, or it was replaced)."""

    def __init__(self, cid: str, lines: list[str], tag: str, removed: bool = False, started: float | None = None,
                 name: str = "vision-api"):
        import time

        self.id, self.lines, self.removed = cid, lines, removed
        self.labels = {"io.fleetroll.tag": tag, "io.fleetroll.service": name}
        when = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(time.time() + 1 if started is None else started))
        self.name = {"Name": f"/{name}", "State": {"Running": True, "StartedAt": when}}
        self.attrs = dict(self.name)
        self.status = "running"
        self.calls: list[dict] = []

    def logs(self, **kw):
        self.calls.append(kw)
        return iter([f"{x}\n".encode() for x in self.lines])

    def reload(self):
        from agent.docker_errors import NotFound

        if self.removed:
            raise NotFound("No such container")
        self.attrs = {**self.name, "State": {**self.name["State"], "Running": False, "Restarting": False}}
        self.status = "exited"


def test_follow_goes_on_with_the_container_that_takes_the_service_s_name(monkeypatch):
    """Found on the lab: logs -f during fab restart ended 'stopped (exited)', exit 0, while the service ran on in a new container."""
    from agent import facts

    old = Once("c-old", ["old serving"], "T1", removed=True)  # a restart: stopped, renamed aside, then removed
    new = Once("c-new", ["new starting", "new serving"], "T1")
    named = iter([old, new, new, new])  # by name: the old at first, then the new one for good

    class Client:
        class containers:  # noqa: N801 - the docker SDK's attribute name
            @staticmethod
            def get(name):
                return next(named, new)

    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: Client)
    monkeypatch.setattr(ops.time, "sleep", lambda s: None)
    ticks = iter(range(10_000))
    monkeypatch.setattr(ops.time, "monotonic", lambda: next(ticks))
    lines: list[str] = []
    answer = ops.logs_op({"service": "vision-api", "follow": True, "tail": 5}, lambda e: lines.append(e["line"]))
    assert lines == ["old serving", "-- vision-api replaced: now container c-new (T1) --", "new starting", "new serving"], lines
    assert answer["ok"] and answer["msg"] == "vision-api stopped (exited)"
    assert "tail" not in new.calls[0] and "since" not in new.calls[0], "every line of the new container"


def test_a_container_given_its_name_back_is_followed_from_when_the_follow_began_not_its_whole_history(monkeypatch):
    """A failed swap restores the very container set aside (maybe days old): its whole log would flood the terminal.

    And a name Docker resolves as an id prefix of another service's container is not a successor."""
    import time

    from agent import facts

    new = Once("c-new", ["new starting"], "T2", removed=True)  # the failed release, removed by the revert
    stranger = Once("c-other", ["someone else's line"], "X", name="vision-api-other")  # not this service
    restored = Once("c-old", ["old again"], "T1", started=time.time() - 5 * 86400)  # days old, given its name back
    named = iter([new, stranger, restored])

    class Client:
        class containers:  # noqa: N801 - the docker SDK's attribute name
            @staticmethod
            def get(name):
                return next(named, restored)

    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: Client)
    monkeypatch.setattr(ops.time, "sleep", lambda s: None)
    ticks = iter(range(10_000))
    monkeypatch.setattr(ops.time, "monotonic", lambda: next(ticks))
    lines: list[str] = []
    t0 = time.time()
    ops.logs_op({"service": "vision-api", "follow": True, "tail": 5}, lambda e: lines.append(e["line"]))
    assert lines == ["new starting", "-- vision-api replaced: now container c-old (T1) --", "old again"], lines
    assert stranger.calls == [], "another container is never followed"
    assert "tail" not in restored.calls[0] and t0 - 1 <= restored.calls[0]["since"] <= time.time(), restored.calls[0]
