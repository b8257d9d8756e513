"""A failing container's last log lines go into the report and the ledger: every secret value in them is hidden first."""

from __future__ import annotations

from agent.motion import clean_lines, secret_values


def _secrets_dir(tmp_path, monkeypatch, **values: str) -> None:
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(tmp_path))
    for name, value in values.items():
        (tmp_path / name).write_text(value)
        (tmp_path / name).chmod(0o600)


def test_values_are_hidden_beside_a_report_key_which_needs_the_rest_of_the_env(tmp_path, monkeypatch):
    """The plan adds a report-key reference to every container once report keys are on; resolving it alone
    failed (it needs FLEETROLL_HOST/SERVICE/IMAGE_DIGEST), and that failure hid nothing at all."""
    _secrets_dir(tmp_path, monkeypatch, tok="supersecret-token", fleet="fleet-report-secret")
    env = {"FLEETROLL_HOST": "h", "FLEETROLL_SERVICE": "s", "FLEETROLL_IMAGE_DIGEST": "sha256:x",
           "TOKEN": {"secret": "tok", "as": "file"}, "FLEETROLL_REPORT_KEY": {"report_key": "fleet"}}
    hidden = secret_values(env)
    assert "supersecret-token" in hidden and len(hidden) == 2
    assert clean_lines("crashing; token=supersecret-token", hidden) == ["crashing; token=[secret]"]


def test_one_unreadable_secret_hides_nothing_less_of_the_others(tmp_path, monkeypatch):
    _secrets_dir(tmp_path, monkeypatch, tok="supersecret-token")
    env = {"TOKEN": {"secret": "tok"}, "GONE": {"secret": "removed-meanwhile"}, "PLAIN": "x"}
    assert secret_values(env) == ("supersecret-token",)
