"""The agent's Docker client (agent/dockerapi.py over agent/engine.py) against a small fake Engine API on a unix socket.

Why a fake daemon here: the lab tests run the same calls against real dockerd; this one
shows, call by call, what goes on the wire (the create body, stop's `t`, a rename's name)
and what comes back — a pull whose progress stream ends in an error line, a 404, a 409 —
which a real daemon does not produce on demand.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socketserver
import struct
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

import pytest

from agent import container_args, dockerapi, engine
from agent.docker_errors import APIError, DaemonUnreachable, ImageNotFound, NotFound
from agent.motion import transient

DIGEST = "sha256:" + "d" * 64
IMAGE_ID = "sha256:" + "1" * 64


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


class State:
    """What the fake daemon holds: containers by id, images by reference, networks, and every request it saw."""

    def __init__(self) -> None:
        self.containers: dict[str, dict] = {}
        self.images: dict[str, dict] = {}
        self.networks: list[dict] = [{"Name": "fleetroll-proxy-2", "Id": "n0"}]
        self.seen: list[tuple[str, str, dict, object]] = []  # method, path, query, JSON body
        self.headers: list[dict[str, str]] = []  # each request's headers, in the same order

    def find(self, ref: str) -> dict | None:
        return self.containers.get(ref) or next((c for c in self.containers.values() if c["Name"] == "/" + ref), None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version, sys_version = "Docker/20.10.24+dfsg1", "(linux)"  # dockerd's Server header on every answer
    state: State

    def log_message(self, *a) -> None:
        pass

    def address_string(self) -> str:  # a unix socket has no peer address
        return "unix"

    def reply(self, status: int, body: object = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Api-Version", "1.41")  # as dockerd puts on every answer
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, message: str) -> None:
        self.reply(status, {"message": message})

    def chunked(self, pieces: list[bytes], content_type: str = "application/vnd.docker.multiplexed-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for p in pieces:
            self.wfile.write(f"{len(p):x}\r\n".encode() + p + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def handle_one(self, method: str) -> None:
        u = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = urllib.parse.unquote(u.path)
        self.state.seen.append((method, path, q, body))
        self.state.headers.append(dict(self.headers.items()))
        st = self.state
        parts = path.strip("/").split("/")
        if (method, path) == ("POST", "/containers/create"):
            if st.find(q["name"]):
                return self.error(409, f'Conflict. The container name "/{q["name"]}" is already in use by container "c1".'
                                       " You have to remove (or rename) that container to be able to reuse that name.")
            if body["Image"] not in st.images:
                return self.error(404, f"No such image: {body['Image']}")
            cid = f"{len(st.containers) + 1:064x}"
            st.containers[cid] = {"Id": cid, "Name": "/" + q["name"], "Config": {k: body.get(k) for k in ("Image", "User", "Env", "Labels")},
                                  "HostConfig": body["HostConfig"], "State": {"Status": "created", "Running": False},
                                  "HostnamePath": f"/srv/docker/containers/{cid}/hostname"}
            return self.reply(201, {"Id": cid, "Warnings": []})
        if (method, path) == ("GET", "/containers/json"):
            return self.reply(200, [{"Id": cid} for cid in st.containers] + [{"Id": "f" * 64}])  # the last: gone by the inspect
        if (method, path) == ("GET", "/info"):
            return self.reply(200, {"ServerVersion": "20.10.24+dfsg1", "DockerRootDir": "/srv/docker",
                                    "Runtimes": {"runc": {}, "nvidia": {}}})
        if (method, path) == ("POST", "/images/create"):
            ref = f"{q['fromImage']}@{q['tag']}"
            if "missing" in q["fromImage"]:
                return self.error(404, f"pull access denied for {q['fromImage']}, repository does not exist or may require"
                                       " 'docker login'")
            lines = [{"status": f"Pulling from {q['fromImage']}", "id": q["tag"]}]
            if "broken" in q["fromImage"]:
                lines.append({"errorDetail": {"message": "unexpected EOF"}, "error": "unexpected EOF"})
            else:
                st.images[ref] = {"Id": IMAGE_ID, "RepoTags": [], "RepoDigests": [ref]}
                lines.append({"status": f"Digest: {q['tag']}"})
            return self.chunked([json.dumps(x).encode() + b"\r\n" for x in lines], "application/json")
        if parts[0] == "images" and parts[-1] == "tag" and method == "POST":
            img = next((i for i in st.images.values() if i["Id"] == "/".join(parts[1:-1])), None)
            if img is None:
                return self.error(404, f"No such image: {'/'.join(parts[1:-1])}")
            img.setdefault("RepoTags", []).append(f"{q['repo']}:{q['tag']}")
            return self.reply(201)
        if parts[0] == "images" and parts[-1] == "json" and method == "GET":
            ref = "/".join(parts[1:-1])
            img = st.images.get(ref) or next((i for i in st.images.values() if i["Id"] == ref), None)
            return self.reply(200, img) if img else self.error(404, f"No such image: {ref}")
        if parts[0] == "networks":
            if method == "POST":
                st.networks.append({"Name": body["Name"], "Id": "n1", "Labels": body["Labels"]})
                return self.reply(201, {"Id": "n1", "Warning": ""})
            wanted = json.loads(q.get("filters") or "{}").get("name") or []
            return self.reply(200, [n for n in st.networks if any(w in n["Name"] for w in wanted)])  # Docker: a part matches
        if parts[0] == "exec":
            if parts[-1] == "start":  # hijacked: the raw stream, then the connection closes (no length, no chunks)
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.docker.raw-stream")
                self.end_headers()
                self.wfile.write(frame(1, b"out 1\n") + frame(2, b"err\n") + frame(1, b"out 2\n"))
                self.close_connection = True
                return None
            return self.reply(200, {"ExitCode": 3, "Running": False})
        c = st.find(parts[1]) if parts[0] == "containers" and len(parts) > 1 else None
        if c is None:
            return self.error(404, f"No such container: {parts[1] if len(parts) > 1 else path}")
        what = parts[2] if len(parts) > 2 else ""
        if method == "GET" and what == "json":
            return self.reply(200, c)
        if what == "start":
            c["State"] = {"Status": "running", "Running": True}
            return self.reply(204)
        if what == "stop":
            if not c["State"]["Running"]:
                return self.reply(304)
            c["State"] = {"Status": "exited", "Running": False, "ExitCode": 0}
            return self.reply(204)
        if what == "rename":
            if st.find(q["name"]):
                return self.error(409, f'Conflict. The container name "/{q["name"]}" is already in use by container'
                                       f' "{st.find(q["name"])["Id"]}". You have to remove (or rename) that container to be'
                                       " able to reuse that name.")
            c["Name"] = "/" + q["name"]
            return self.reply(204)
        if what == "update":
            c["HostConfig"]["RestartPolicy"] = body["RestartPolicy"]
            return self.reply(200, {"Warnings": []})
        if what == "logs":  # frames cut across chunk boundaries, as a stream may deliver them
            data = frame(1, b"line one\n") + frame(2, b"oops\n") + frame(1, b"line two\n")
            return self.chunked([data[:5], data[5:17], data[17:]])
        if what == "exec":
            return self.reply(201, {"Id": "e1"})
        if method == "DELETE":
            if c["State"]["Running"] and q.get("force") != "1":
                return self.error(409, f"You cannot remove a running container {c['Id']}. Stop the container before"
                                       " attempting removal or force remove")
            del st.containers[c["Id"]]
            return self.reply(204)
        return self.error(500, f"the fake daemon does not know {method} {path}")

    def do_GET(self) -> None:  # noqa: N802
        self.handle_one("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.handle_one("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self.handle_one("DELETE")


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake():
    """(client, state): a fake daemon on a unix socket in a short temp dir (a socket path has ~100 bytes at most)."""
    d = tempfile.mkdtemp(prefix="fre-", dir="/tmp")
    state = State()
    handler = type("H", (Handler,), {"state": state})
    server = UnixServer(f"{d}/docker.sock", handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield dockerapi.DockerClient(engine.Engine(f"{d}/docker.sock", timeout=5)), state
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(d)


ARGS = {"image": f"reg:5000/lab/svc@{DIGEST}", "name": "svc", "user": "10001:10001", "env": {"MACHINE": "mainpc", "N": 1},
        "labels": {"io.fleetroll.managed": "true"}, "ports": {"8080/tcp": "8001", "9090": "127.0.0.1:9091"},
        "binds": ["/srv/data:/data:ro", "/srv/cache:/cache"], "restart": "unless-stopped", "gpus": -1, "stop_timeout": 7,
        "network": "fleetroll-proxy"}


def create(client, args=ARGS) -> str:
    ckw, hkw = container_args.api_kwargs(args)
    return client.api.create_container(**ckw, host_config=client.api.create_host_config(**hkw))["Id"]


def test_create_start_stop_rename_as_the_transaction_calls_them(fake):
    client, st = fake
    st.images[ARGS["image"]] = {"Id": IMAGE_ID}
    cid = create(client)
    method, path, q, body = st.seen[-1]
    assert (method, path, q["name"]) == ("POST", "/containers/create", "svc")
    assert body["Image"] == ARGS["image"] and body["User"] == "10001:10001" and body["StopTimeout"] == 7
    assert body["Env"] == ["MACHINE=mainpc", "N=1"] and body["ExposedPorts"] == {"8080/tcp": {}, "9090/tcp": {}}
    assert body["HostConfig"] == {
        "NetworkMode": "fleetroll-proxy", "RestartPolicy": {"Name": "unless-stopped"},
        "Binds": ["/srv/data:/data:ro", "/srv/cache:/cache:rw"],
        "PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "8001"}], "9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9091"}]},
        "DeviceRequests": [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]}
    c = client.containers.get("svc")
    assert (c.id, c.name, c.labels, c.status) == (cid, "svc", {"io.fleetroll.managed": "true"}, "created")
    c.start()
    c.reload()
    assert c.status == "running" and c.attrs["State"]["Running"]
    c.update(restart_policy={"Name": "no"})
    assert st.seen[-1][3] == {"RestartPolicy": {"Name": "no"}}
    c.stop(timeout=3)
    assert st.seen[-1][:3] == ("POST", f"/containers/{cid}/stop", {"t": "3"})
    c.stop(timeout=3)  # already stopped: Docker's 304 is no error
    c.rename("svc--kept-1")
    assert client.containers.get("svc--kept-1").id == cid
    with pytest.raises(NotFound):
        client.containers.get("svc")
    c.remove(force=True)
    assert st.seen[-1][:3] == ("DELETE", f"/containers/{cid}", {"v": "0", "link": "0", "force": "1"}) and not st.containers


def test_the_create_body_is_the_one_the_docker_sdk_sent():
    """host_config/container_config give the JSON the SDK's create_host_config/create_container gave for the same kwargs."""
    docker = pytest.importorskip("docker")
    sdk = docker.APIClient(base_url="unix:///nonexistent", version="1.41")
    for args in (ARGS, {**ARGS, "binds": [], "ports": {}, "restart": "no", "gpus": 0, "network": ""},
                 {**ARGS, "gpus": 2, "restart": "always", "ports": {"8080": "8002"}}):
        ckw, hkw = container_args.api_kwargs(args)
        assert dockerapi.host_config(**hkw) == dict(sdk.create_host_config(**hkw)), args
        theirs = sdk.create_container_config(ckw.pop("image"), None, host_config=sdk.create_host_config(**hkw), **{
            k: v for k, v in ckw.items() if k != "name"})
        mine = dockerapi.container_config(args["image"], host_config=dockerapi.host_config(**hkw), **{
            k: v for k, v in ckw.items() if k != "name"})
        assert mine == {k: v for k, v in theirs.items() if v is not None}, args


def test_a_404_is_not_found_and_an_image_404_is_image_not_found(fake):
    client, _ = fake
    with pytest.raises(NotFound) as exc:
        client.containers.get("nothing")
    assert not isinstance(exc.value, ImageNotFound)
    assert exc.value.status == 404 and exc.value.explanation == "No such container: nothing"
    with pytest.raises(ImageNotFound) as img:
        client.images.get(f"reg:5000/lab/svc@{DIGEST}")
    assert img.value.explanation == f"No such image: reg:5000/lab/svc@{DIGEST}"
    with pytest.raises(ImageNotFound):  # create from an image that is not here: the daemon's 404 names the image
        create(client)


def test_a_409_is_an_api_error_with_the_daemons_message(fake):
    client, st = fake
    st.images[ARGS["image"]] = {"Id": IMAGE_ID}
    create(client)
    other = create(client, {**ARGS, "name": "other", "ports": {}})
    with pytest.raises(APIError) as exc:
        client.containers.get(other).rename("svc")
    assert exc.value.status == 409 and not isinstance(exc.value, NotFound)
    assert exc.value.explanation.startswith('Conflict. The container name "/svc" is already in use')
    assert not transient(exc.value)  # a name another container holds stays held: failed at once, not retried
    with pytest.raises(APIError, match="already in use"):
        create(client)
    c = client.containers.get("svc")
    c.start()
    with pytest.raises(APIError, match="You cannot remove a running container") as rm:
        c.remove()
    assert rm.value.status == 409 and not transient(rm.value)


def test_pull_by_digest_reads_the_stream_and_an_error_line_is_an_error(fake):
    client, st = fake
    img = client.images.pull("reg:5000/lab/svc", tag=DIGEST)
    assert img.id == IMAGE_ID
    assert st.seen[0][:3] == ("POST", "/images/create", {"fromImage": "reg:5000/lab/svc", "tag": DIGEST})
    assert st.seen[-1][:2] == ("GET", f"/images/reg:5000/lab/svc@{DIGEST}/json")
    img.tag("reg:5000/lab/svc", "20261101-aaaaaaa-prev")
    assert st.seen[-1][2] == {"repo": "reg:5000/lab/svc", "tag": "20261101-aaaaaaa-prev"}
    assert client.images.get(IMAGE_ID).tags == ["reg:5000/lab/svc:20261101-aaaaaaa-prev"]
    with pytest.raises(APIError) as exc:
        client.images.pull("reg:5000/lab/broken", tag=DIGEST)
    assert exc.value.explanation == "unexpected EOF" and not isinstance(exc.value, NotFound)
    with pytest.raises(ImageNotFound, match="repository does not exist"):
        client.images.pull("reg:5000/lab/missing", tag=DIGEST)


def test_pull_sends_the_agent_users_docker_login_for_the_images_registry(fake, tmp_path, monkeypatch):
    """X-Registry-Auth as the SDK sent it (base64url JSON); none without a login, and a broken helper names itself."""
    client, st = fake
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    client.images.pull("reg:5000/lab/svc", tag=DIGEST)
    assert "X-Registry-Auth" not in st.headers[0]  # no config: an anonymous pull, as before
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"reg:5000": {"auth": base64.b64encode(b"bot:pa55").decode()},
                                         "https://tok.example/v1/": {"identitytoken": "idtok"}}}))
    os.chmod(cfg, 0o600)
    client.images.pull("reg:5000/lab/svc", tag=DIGEST)
    sent = st.headers[len(st.headers) - 2]  # the pull, before the inspect that follows it
    assert st.seen[len(st.seen) - 2][1] == "/images/create"
    assert json.loads(base64.urlsafe_b64decode(sent["X-Registry-Auth"])) == {
        "username": "bot", "password": "pa55", "serveraddress": "reg:5000"}
    client.images.pull("tok.example/lab/svc", tag=DIGEST)
    assert json.loads(base64.urlsafe_b64decode(st.headers[len(st.headers) - 2]["X-Registry-Auth"])) == {
        "identitytoken": "idtok", "serveraddress": "tok.example"}
    cfg.write_text(json.dumps({"credsStore": "nosuch-helper"}))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(APIError) as exc:
        client.images.pull("reg:5000/lab/svc", tag=DIGEST)
    assert "docker-credential-nosuch-helper" in exc.value.explanation and "registry reg:5000" in exc.value.explanation


@pytest.mark.parametrize("repository", ["nginx", "org/img", "docker.io/org/img", "index.docker.io/org/img",
                                        "registry-1.docker.io/org/img"])
def test_a_docker_hub_pull_sends_the_login_docker_login_stored_for_the_hub(fake, tmp_path, monkeypatch, repository):
    """`docker login` keys the Hub as https://index.docker.io/v1/; a registry-less or docker.io name must send it."""
    client, st = fake
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pa55").decode()},
                                         "reg:5000": {"auth": base64.b64encode(b"bot:other").decode()}}}))
    os.chmod(cfg, 0o600)
    client.images.pull(repository, tag=DIGEST)
    assert st.seen[0][1] == "/images/create"
    assert json.loads(base64.urlsafe_b64decode(st.headers[0]["X-Registry-Auth"])) == {
        "username": "hub", "password": "pa55", "serveraddress": "https://index.docker.io/v1/"}


def test_logs_and_exec_read_dockers_multiplexed_streams(fake):
    client, st = fake
    st.images[ARGS["image"]] = {"Id": IMAGE_ID}
    create(client)
    c = client.containers.get("svc")
    assert c.logs(tail=20) == b"line one\noops\nline two\n"
    assert st.seen[-1][2] == {"stdout": "1", "stderr": "1", "timestamps": "0", "tail": "20", "follow": "0"}
    assert b"".join(c.logs(stream=True, follow=True, since=1700000000.5, timestamps=True)) == b"line one\noops\nline two\n"
    assert st.seen[-1][2]["follow"] == "1" and st.seen[-1][2]["since"] == "1700000000.500000"
    res = c.exec_run(["id", "-u"], demux=True)
    assert res.exit_code == 3 and res.output == (b"out 1\nout 2\n", b"err\n")
    assert [s[:2] for s in st.seen[-3:]] == [("POST", f"/containers/{c.id}/exec"), ("POST", "/exec/e1/start"), ("GET", "/exec/e1/json")]
    assert st.seen[-3][3]["Cmd"] == ["id", "-u"] and st.seen[-3][3]["User"] == ""


def test_list_filters_and_networks_by_exact_name(fake):
    client, st = fake
    st.images[ARGS["image"]] = {"Id": IMAGE_ID}
    cid = create(client)
    listed = client.containers.list(all=True, filters={"label": ["io.fleetroll.managed", "io.fleetroll.service=svc"]})
    assert [c.id for c in listed] == [cid]  # the one removed between list and inspect is not there
    assert json.loads(st.seen[1][2]["filters"]) == {"label": ["io.fleetroll.managed", "io.fleetroll.service=svc"]}
    assert st.seen[1][2]["all"] == "1"
    assert client.networks.list(names=["fleetroll-proxy"]) == []  # Docker's filter matched fleetroll-proxy-2 too
    client.networks.create("fleetroll-proxy", driver="bridge", labels={"io.fleetroll.managed": "true"})
    assert [n.name for n in client.networks.list(names=["fleetroll-proxy"])] == ["fleetroll-proxy"]


def test_no_daemon_is_unreachable_and_a_tcp_docker_host_is_refused_by_name(tmp_path, monkeypatch):
    client = dockerapi.DockerClient(engine.Engine(str(tmp_path / "none.sock"), timeout=1))
    with pytest.raises(DaemonUnreachable, match="cannot reach the Docker daemon at"):
        client.containers.get("svc")
    from agent import facts

    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    with pytest.raises(Exception, match="unix socket only") as exc:
        facts.docker_client()
    assert "DOCKER_HOST='tcp://10.0.0.1:2375'" in str(exc.value)
    assert facts.docker_facts() == {"ok": False, "error": str(exc.value)}


def test_facts_read_the_daemon_with_one_info_and_one_inspect_per_container_and_image(fake, monkeypatch):
    """dockerd runs runc and docker-init for each /version and /info: facts ask /info only (its version, the
    Api-Version header), and the plan's diffs reuse the containers facts just inspected, one image inspect each."""
    from agent import container_diffs, facts

    client, state = fake
    monkeypatch.setenv("DOCKER_HOST", f"unix://{client.engine.path}")
    state.images["reg:5000/lab/svc:1"] = {"Id": IMAGE_ID, "Config": {"Env": ["PATH=/bin"]}}
    for name in ("a", "b"):
        create(client, {**ARGS, "name": name, "image": "reg:5000/lab/svc:1"})
    for c in state.containers.values():
        c["Image"] = IMAGE_ID
    state.seen.clear()
    inspected: dict[str, dict] = {}
    got = facts.docker_facts(inspected)
    assert (got["ok"], got["version"], got["api_version"], got["root_dir"], got["runtimes"]) == (
        True, "20.10.24+dfsg1", "1.41", "/srv/docker", ["nvidia", "runc"])
    assert sorted(c["name"] for c in got["containers"]) == ["a", "b"] and sorted(inspected) == ["a", "b"]
    specs = {n: {"name": n, "repo": "reg:5000/lab/svc", "tag": "1", "ports": {}, "env": {}, "volumes": [], "user": "10001:10001",
                 "gpus": 0, "restart": "unless-stopped", "stop_timeout": 7} for n in ("a", "b", "c")}
    diffs = container_diffs.config_diffs(specs, inspected)
    assert sorted(diffs) == ["a", "b"]  # c has no container: nothing to compare
    paths = [p for _m, p, _q, _b in state.seen]
    assert "/version" not in paths and paths.count("/info") == 1
    assert paths.count("/containers/c/json") == 1  # only the one facts had not inspected
    assert [p for p in paths if p.startswith("/images/")] == [f"/images/{IMAGE_ID}/json"]
    # a container fleetroll did not start under a planned name: no diff against it, named as foreign (found on the lab:
    # the dry run said "create … not running yet" beside a diff read off the hand-made container)
    create(client, {**ARGS, "name": "c", "image": "reg:5000/lab/svc:1", "labels": {}})
    foreign: dict[str, dict] = {}
    diffs = container_diffs.config_diffs(specs, inspected, foreign)
    assert sorted(diffs) == ["a", "b"] and list(foreign) == ["c"] and foreign["c"]["id"], foreign
    # without a phase (no diffs asked) the names are looked at one by one: fleetroll's and absent ones are not foreign
    assert list(container_diffs.foreign_by_name(["c", "nosuch", "a"])) == ["c"]


def test_a_host_without_gpus_is_read_without_info_unless_nothing_else_names_the_root(fake, monkeypatch):
    """/info makes dockerd run runc and docker-init (~7 ms of the host's CPU): a host whose runtimes nobody asks about
    gets its version from the Server header and its data root from a container's own files; /info only when
    no container names the root or the daemon's Server header is not Docker's."""
    from agent import facts

    client, state = fake
    monkeypatch.setenv("DOCKER_HOST", f"unix://{client.engine.path}")
    state.seen.clear()
    got = facts.docker_facts(runtimes=False)
    assert (got["version"], got["root_dir"], got["runtimes"]) == ("20.10.24+dfsg1", "/srv/docker", ["nvidia", "runc"])
    assert [p for _m, p, _q, _b in state.seen].count("/info") == 1  # no container yet: /info says the root
    state.images["reg:5000/lab/svc:1"] = {"Id": IMAGE_ID, "Config": {}}
    create(client, {**ARGS, "name": "a", "image": "reg:5000/lab/svc:1"})
    state.seen.clear()
    got = facts.docker_facts(runtimes=False)
    assert (got["ok"], got["version"], got["api_version"], got["root_dir"], got["runtimes"], got["image_store"]) == (
        True, "20.10.24+dfsg1", "1.41", "/srv/docker", None, "")
    assert "/info" not in [p for _m, p, _q, _b in state.seen]
    monkeypatch.setattr(Handler, "server_version", "Libpod/4.3")
    assert facts.docker_facts(runtimes=False)["runtimes"] == ["nvidia", "runc"]  # not Docker's header: /info


@pytest.mark.parametrize(("server", "version"), [("Docker/20.10.24+dfsg1 (linux)", "20.10.24+dfsg1"), ("Docker/27.3.1", "27.3.1"),
                                                  ("Libpod/4.3.1 (linux)", ""), ("", ""), ("Docker/", ""), ("Docker", "")])
def test_the_daemon_version_from_its_server_header(server, version):
    from agent import facts

    assert facts.server_version(server) == version


def test_the_data_root_from_a_containers_own_files_only():
    from agent import facts

    cid = "a" * 64
    assert facts.root_from_container({"Id": cid, "HostnamePath": f"/var/lib/docker/containers/{cid}/hostname"}) == "/var/lib/docker"
    assert facts.root_from_container({"Id": cid, "HostnamePath": "", "ResolvConfPath": f"/srv/d/containers/{cid}/resolv.conf"}) == "/srv/d"
    # --network container:other names the other container's resolv.conf: not this one's, so not evidence
    assert facts.root_from_container({"Id": cid, "ResolvConfPath": f"/var/lib/docker/containers/{'b' * 64}/resolv.conf"}) is None
    assert facts.root_from_container({"Id": cid, "HostsPath": f"containers/{cid}/hosts"}) is None
    assert facts.root_from_container({"Id": "", "HostsPath": "/x/containers//hosts"}) is None
    assert facts.root_from_container({}) is None


def test_an_image_config_is_read_from_docker_only_under_its_own_digest(fake, monkeypatch):
    from agent import facts

    client, state = fake
    monkeypatch.setenv("DOCKER_HOST", f"unix://{client.engine.path}")
    state.images["reg:5000/lab/svc:1"] = {"Id": IMAGE_ID, "Config": {"User": "10001:10001", "Labels": {"a": "b"}}}
    assert facts._local_image_config(IMAGE_ID) == {"User": "10001:10001", "Labels": {"a": "b"}}
    assert facts._local_image_config("sha256:" + "2" * 64) is None  # not held: the registry's blob is read
    state.seen.clear()
    assert facts._local_image_config("reg:5000/lab/svc:1") is None  # not a config digest: Docker is not even asked
    assert facts._local_image_config("sha256:../../x") is None and state.seen == []


def test_which_image_store_dockerd_keeps_and_what_is_on_path(monkeypatch, tmp_path):
    from agent import facts

    assert facts.image_store({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]}) == "classic"
    assert facts.image_store({"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}) == "containerd"
    assert facts.image_store({}) == "classic"
    hook = tmp_path / facts.HOOK
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    assert facts._on_path(facts.HOOK) == str(hook)
    monkeypatch.setenv("PATH", "")
    monkeypatch.chdir(tmp_path)
    assert facts._on_path(facts.HOOK) is None  # an empty PATH holds nothing, not the current directory


@pytest.mark.parametrize(("store", "local"), [("classic", True), ("containerd", False), ("", True)])
def test_gather_reads_configs_from_docker_only_where_images_are_named_by_their_config(monkeypatch, tmp_path, store, local):
    from agent import facts

    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(facts, "docker_facts", lambda inspected, runtimes: {"ok": True, "root_dir": "/", "runtimes": [],
                                                                              "image_store": store, "containers": []})
    asked = []
    monkeypatch.setattr(facts, "images", lambda refs, insecure, timeout, local: asked.append(local) or {})
    facts.gather({"gpu": False, "images": ["reg:5000/lab/svc:1"]})
    assert asked == [local]
