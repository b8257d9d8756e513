"""The dry run's per-key diff: computed on the host from `docker inspect`, names only, never a value (no hosts)."""

from __future__ import annotations

import json

from agent import container_args, contract
from playbooks.plan import Plan, Step, plan_text


def running(env: dict, ports=None, binds=None, health=None, **kw) -> dict:
    labels = {contract.HEALTH: json.dumps(health or {"port": 8001, "path": "/health"})}
    return {"image": "sha256:x", "name": "svc", "user": "10001:10001", "env": env, "labels": labels,
            "ports": ports or {"8080/tcp": "8001"}, "binds": binds or [], "restart": "unless-stopped", "gpus": 0,
            "stop_timeout": 10, **kw}


def spec(env: dict, **kw) -> dict:
    return {"name": "svc", "env": env, "ports": {"8080/tcp": 8001}, "volumes": [], "user": "10001:10001", "gpus": 0,
            "restart": "unless-stopped", "stop_timeout": 10, "health": {"port": 8001, "path": "/health"}, **kw}


def test_each_env_key_is_named_and_no_value_appears():
    have = running({"MACHINE": "old-secret-value", "GONE": "x", "PATH": "/usr/bin", "HF": {"secret": "hf1"},
                    "FLEETROLL_IMAGE_DIGEST": "sha256:a"})
    want = spec({"MACHINE": "new-secret-value", "NEW": "y", "HF": {"secret": "hf2"}, "FLEETROLL_IMAGE_DIGEST": "sha256:b"})
    out = container_args.diff(have, want, image_env={"PATH": "/usr/bin"})
    assert out == ["env GONE: removed", 'env HF: another secret ({"secret": "hf2"})', "env MACHINE: value changed", "env NEW: added"]
    assert "secret-value" not in json.dumps(out)


def test_ports_volumes_gpu_user_restart_and_health_settings():
    have = running({}, binds=["/srv/models:/models:ro"])
    want = spec({}, ports={"8080/tcp": "127.0.0.1:8002"}, volumes=["/srv/models2:/models:ro"], gpus="all", restart="always",
                health={"port": 8001, "path": "/ready", "healthy_deadline": 60})
    out = container_args.diff(have, want)
    assert "port 8080/tcp: 8001 -> 127.0.0.1:8002" in out
    assert "volume /srv/models2:/models:ro: added" in out and "volume /srv/models:/models:ro: removed" in out
    assert "gpus: none -> all" in out and "restart: unless-stopped -> always" in out
    assert "health.path: /health -> /ready" in out and "health.healthy_deadline: None -> 60" in out
    assert container_args.diff(running({"A": "1"}), spec({"A": "1"})) == []


def test_dry_run_text_lists_the_changes_under_each_changed_service():
    st = Step("mainpc", "svc", "replace", "t1", "sha256:" + "a" * 64, "t2", "sha256:" + "b" * 64, reason="new image",
              changes=["image: t1@sha256:aaaaaaaaaaaa -> t2@sha256:bbbbbbbbbbbb", "env MACHINE: value changed"])
    text = plan_text(Plan("r", "gpu", "op", [st, Step("mainpc", "other", "noop", reason="same", changes=["ignored"])]))
    assert "~ env MACHINE: value changed" in text and "~ image: t1@" in text and "ignored" not in text
