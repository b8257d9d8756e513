"""Registry credentials from the agent user's Docker config (agent/registry_auth.py): each form docker login leaves.

Why: pulls and preflight's registry queries must use the login operators made with
`docker login HOST` on each host, read where the docker CLI reads it, from a file only this
user can write, and no message may carry the secret.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from agent import registry_auth
from agent.registry_auth import AuthError, Credentials, lookup

SECRET = "s3cr3t-pa55"


def write(tmp_path, cfg: dict, mode: int = 0o600) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    path.chmod(mode)
    return str(path)


def test_config_path_is_docker_config_or_home(tmp_path):
    assert registry_auth.config_path({"DOCKER_CONFIG": "/etc/dc", "HOME": "/home/u"}) == "/etc/dc/config.json"
    assert registry_auth.config_path({"HOME": "/home/u"}) == "/home/u/.docker/config.json"


@pytest.mark.parametrize("key", ["ghcr.io", "https://ghcr.io", "https://ghcr.io/v1/", "http://ghcr.io/v2/"])
def test_auths_keys_are_matched_as_docker_matches_them(tmp_path, key):
    auth = base64.b64encode(f"bot:{SECRET}".encode()).decode()
    path = write(tmp_path, {"auths": {key: {"auth": auth}, "other.example:5000": {"auth": "eDp5"}}})
    got = lookup("ghcr.io", path)
    assert got.creds == Credentials("ghcr.io", "bot", SECRET, "", path) and got.warning == ""
    assert lookup("reg.example:5000", path).creds is None  # another registry's login is not this one's


def test_username_password_and_identitytoken_forms(tmp_path):
    path = write(tmp_path, {"auths": {"a.example": {"username": "u", "password": SECRET},
                                      "b.example": {"identitytoken": "refresh-tok"},
                                      "c.example": {}}})
    a = lookup("a.example", path).creds
    assert (a.username, a.password) == ("u", SECRET)
    assert a.basic() == "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()
    assert json.loads(base64.urlsafe_b64decode(a.x_registry_auth())) == {
        "username": "u", "password": SECRET, "serveraddress": "a.example"}
    b = lookup("b.example", path).creds
    assert b.identitytoken == "refresh-tok" and b.basic() is None
    assert json.loads(base64.urlsafe_b64decode(b.x_registry_auth())) == {"identitytoken": "refresh-tok",
                                                                         "serveraddress": "b.example"}
    assert lookup("c.example", path).creds is None  # an empty entry (a credsStore placeholder) is no login
    assert SECRET not in repr(a) and "refresh-tok" not in repr(b)


def test_no_config_is_no_login_and_no_warning(tmp_path):
    got = lookup("ghcr.io", str(tmp_path / "none.json"))
    assert (got.creds, got.warning) == (None, "")


def test_a_config_others_may_write_is_ignored_with_a_warning(tmp_path):
    path = write(tmp_path, {"auths": {"ghcr.io": {"username": "u", "password": SECRET}}}, mode=0o666)
    os.chmod(path, 0o666)  # past the umask
    got = lookup("ghcr.io", path)
    assert got.creds is None
    assert got.warning.startswith(f"registry credentials in {path} ignored: writable by group or others (mode 0666)")
    assert f"chmod go-w {path}" in got.warning and SECRET not in got.warning


def test_a_symlinked_config_is_not_followed(tmp_path):
    real = write(tmp_path, {"auths": {"ghcr.io": {"username": "u", "password": SECRET}}})
    link = tmp_path / "link.json"
    link.symlink_to(real)
    got = lookup("ghcr.io", str(link))
    assert got.creds is None and "a symlink is not followed" in got.warning


@pytest.fixture
def helper_path(tmp_path, monkeypatch):
    """A fake docker-credential-fake on PATH: answers for ghcr.io (echoing what it read to a file), not found otherwise."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker-credential-fake"
    script.write_text(f"""#!/bin/sh
read server
echo "$1 $server" > {tmp_path}/asked
case "$server" in
  ghcr.io) echo '{{"ServerURL":"ghcr.io","Username":"bot","Secret":"{SECRET}"}}' ;;
  tok.example) echo '{{"ServerURL":"tok.example","Username":"<token>","Secret":"idtok"}}' ;;
  https://index.docker.io/v1/) echo '{{"ServerURL":"https://index.docker.io/v1/","Username":"hubbot","Secret":"{SECRET}"}}' ;;
  broken.example) echo 'keychain locked' >&2; exit 3 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return tmp_path


def test_a_credential_helper_is_asked_with_the_server_on_stdin(helper_path):
    path = write(helper_path, {"credHelpers": {"ghcr.io": "fake", "tok.example": "fake"}})
    got = lookup("ghcr.io", path).creds
    assert (got.username, got.password) == ("bot", SECRET) and got.source == f"docker-credential-fake ({path})"
    assert (helper_path / "asked").read_text() == "get ghcr.io\n"
    assert lookup("tok.example", path).creds.identitytoken == "idtok"
    assert lookup("other.example", path).creds is None  # no helper for it, no auths: anonymous


def test_creds_store_not_found_is_no_login_and_a_failure_names_the_helper(helper_path):
    path = write(helper_path, {"credsStore": "fake", "auths": {"nothere.example": {}}})
    assert lookup("nothere.example", path).creds is None
    with pytest.raises(AuthError) as exc:
        lookup("broken.example", path)
    msg = str(exc.value)
    assert msg.startswith("registry broken.example: credential helper docker-credential-fake (named in")
    assert "failed (exit 3)" in msg and path in msg and "keychain locked" not in msg


def test_a_missing_helper_is_an_error_naming_it_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = write(tmp_path, {"credsStore": "nosuch"})
    with pytest.raises(AuthError, match=r"registry ghcr.io: credential helper docker-credential-nosuch \(named in .*\) is not"
                                        r" on the agent's PATH; install docker-credential-nosuch"):
        lookup("ghcr.io", path)
    bad = write(tmp_path, {"credsStore": "../../bin/sh"})
    with pytest.raises(AuthError, match="is not a plain name"):
        lookup("ghcr.io", bad)


HUB = "https://index.docker.io/v1/"


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io", "Docker.IO", ""])
def test_docker_hub_names_find_the_login_docker_login_stores(tmp_path, host):
    """`docker login` keys Docker Hub's login as https://index.docker.io/v1/; every Hub name must find it."""
    auth = base64.b64encode(f"hubbot:{SECRET}".encode()).decode()
    path = write(tmp_path, {"auths": {HUB: {"auth": auth}, "ghcr.io": {"auth": base64.b64encode(b"gh:pw").decode()}}})
    assert lookup(host, path).creds == Credentials(HUB, "hubbot", SECRET, "", path)
    assert lookup("ghcr.io", path).creds == Credentials("ghcr.io", "gh", "pw", "", path)  # another registry: as before


def test_docker_hub_helper_is_keyed_by_index_host_and_asked_for_the_index_url(helper_path):
    """As the docker CLI: credHelpers["index.docker.io"], asked with the server URL on stdin."""
    path = write(helper_path, {"credHelpers": {"index.docker.io": "fake"}})
    got = lookup("docker.io", path).creds
    assert (got.serveraddress, got.username, got.password) == (HUB, "hubbot", SECRET)
    assert (helper_path / "asked").read_text() == f"get {HUB}\n"


@pytest.mark.parametrize(("repository", "registry"), [
    ("nginx", "docker.io"), ("org/img", "docker.io"), ("docker.io/org/img", "docker.io"), ("library/nginx", "docker.io"),
    ("localhost/img", "localhost"), ("reg:5000/lab/svc", "reg:5000"), ("ghcr.io/org/img", "ghcr.io"),
    ("Reg/img", "Reg"),
])
def test_registry_of_a_repository_name_is_dockers_reading(repository, registry):
    assert registry_auth.registry_of(repository) == registry
