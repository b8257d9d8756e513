"""docs/inventory.md is generated from the inventory's schema; these fail when the two differ (no hosts)."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from playbooks import inventory_doc
from playbooks.inventory import InventoryError, field_anchor, field_path, load

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "inventory.md"


def _differs(written: str, now: str) -> str:
    diff = list(difflib.unified_diff(written.splitlines(), now.splitlines(), "docs/inventory.md", "generator", lineterm="", n=1))
    return (f"docs/inventory.md differs from what the schema and playbooks/inventory_doc.py give now; regenerate it from the"
            f" repository root with:\n    {inventory_doc.REGENERATE}\nfirst differences:\n" + "\n".join(diff[:30]))


def test_every_schema_field_has_an_entry_and_every_entry_a_field():
    got = inventory_doc.problems()
    assert got == [], "\n".join(got) + f"\nthen regenerate: {inventory_doc.REGENERATE}"


def test_a_missing_and_a_stale_entry_are_both_named(monkeypatch):
    docs = dict(inventory_doc.DOCS)
    del docs["services.<name>.health.port"]
    docs["services.<name>.health.retries"] = inventory_doc.Doc("gone", "retries: 3", "nothing")
    monkeypatch.setattr(inventory_doc, "DOCS", docs)
    got = inventory_doc.problems()
    assert any(p.startswith("services.<name>.health.port: a field of the schema with no entry") for p in got), got
    assert any(p.startswith("services.<name>.health.retries: an entry in DOCS (playbooks/inventory_notes*.py) for a field the"
                            " schema no longer has") for p in got), got


def test_docs_inventory_md_is_what_the_generator_prints():
    written, now = DOC.read_text(), inventory_doc.render()
    if written != now:
        pytest.fail(_differs(written, now), pytrace=False)


def test_the_regenerate_command_prints_the_document():
    out = subprocess.run([sys.executable, "-m", "playbooks.inventory_doc"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == inventory_doc.render()


def test_schema_facts_come_from_the_models():
    rows = {r.path: r for r in inventory_doc.rows()}
    assert rows["services.<name>.health.healthy_deadline"].default == "`60.0`"
    assert rows["services.<name>.health.healthy_deadline"].constraints == "> 0; ≤ 21600"
    assert rows["services.<name>.health.port"].default == "required"
    assert rows["services.<name>.health.port"].constraints == "≥ 1; ≤ 65535"
    assert rows["reverse_proxy.health_port"].default == "`8404`"
    assert "one of `start-first`, `stop-first`, `auto`" in rows["services.<name>.update.order"].constraints
    assert rows["services.<name>.gpus"].type == 'integer or "all"'
    assert "matches `^[a-z0-9][a-z0-9_.-]*$`" in rows["registry.org"].constraints
    assert "further rules" in rows["services.<name>.user"].constraints  # a field_validator checks it


def test_each_field_has_one_anchor_and_it_is_in_the_document():
    text = inventory_doc.render()
    pairs = list(inventory_doc.anchors())
    assert len({a for _p, a in pairs}) == len(pairs)
    assert field_anchor("services.<name>.health.healthy_deadline") == "services-name-health-healthy_deadline"
    for _path, anchor in pairs:
        assert f'<a id="{anchor}"></a>' in text


def _loc(path: str) -> tuple:
    out: list = []
    for part in path.split("."):
        name = part.removesuffix("[]")
        out.append({"<name>": "x1", "<VAR>": "VAR"}.get(name, name))
        if part.endswith("[]"):
            out.append(0)
    return tuple(out)


def test_an_error_location_maps_back_to_its_documented_field():
    for r in inventory_doc.rows():
        assert field_path(_loc(r.path)) == r.path
    # pydantic names the union member it tried: still the documented field
    assert field_path(("services", "web", "env", "TOKEN", "SecretRef", "secret")) == "services.<name>.env.<VAR>.secret"
    assert field_path(("services", "web", "gpus", "int")) == "services.<name>.gpus"
    assert field_path(("nothing",)) is None


def test_validator_errors_link_to_the_field_in_the_reference(tmp_path):
    src = (ROOT / "inventory" / "fleet.yml").read_text()
    bad = src.replace("health: {port: 8100}", "health: {port: 8100, healthy_deadline: -1}")
    bad = bad.replace("health: {port: 8101}", "health: {port: 8199}")
    assert bad.count("healthy_deadline: -1") == 1 and "8199" in bad
    (tmp_path / "fleet.yml").write_text(bad)
    (tmp_path / "phases.yml").write_text((ROOT / "inventory" / "phases.yml").read_text())
    with pytest.raises(InventoryError) as err:
        load(tmp_path / "fleet.yml")
    text = inventory_doc.render()
    schema = next(p for p in err.value.problems if "services.embeddings.health.healthy_deadline" in p)
    assert schema.endswith("(see docs/inventory.md#services-name-health-healthy_deadline)"), schema
    cross = next(p for p in err.value.problems if "services.rag-api.health.port" in p)
    assert "is not one of the service's published host ports" in cross
    assert cross.endswith("(see docs/inventory.md#services-name-health-port)"), cross
    for p in err.value.problems:
        anchor = p.rsplit("#", 1)[1].rstrip(")")
        assert f'<a id="{anchor}"></a>' in text
