"""docs/inventory.md, generated from the inventory's schema: every field of fleet.yml and phases.yml.

Types, defaults and constraints are read from the pydantic models in playbooks/schema.py
(playbooks/inventory_fields.py), so they cannot drift from what the validator enforces. What the
models cannot say — what a field is for, an example, and which check or step reads it — is the
prose in DOCS, keyed by the field's path (playbooks/inventory_notes.py for fleet.yml's own
sections, playbooks/inventory_notes_services.py for services and phases.yml). tests/test_inventory_doc_unit.py fails when a field has no entry, an entry names a field
that no longer exists, or docs/inventory.md differs from what this prints:

    .venv/bin/python -m playbooks.inventory_doc > docs/inventory.md
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from .inventory import DOC, field_anchor
from .inventory_fields import ROOTS, Row, constraints_text, default_text, rows, type_text  # noqa: F401 - the fields, read from the schema
from .inventory_notes import FLEET_NOTES, Doc  # noqa: F401 - Doc: the shape of an entry (tests build one)
from .inventory_notes_services import SERVICE_NOTES

REGENERATE = f".venv/bin/python -m playbooks.inventory_doc > {DOC}"
DOCS: dict[str, Doc] = {**FLEET_NOTES, **SERVICE_NOTES}


# --- the document -----------------------------------------------------------------------

INTRO = """\
Every field of the inventory: `fleet.yml` (hosts, services, registry, …) and `phases.yml` beside
it. fleetroll reads both and never writes them; change them by hand, commit, then roll out.
Unknown keys are refused (with a "did you mean"), and every error names the file, the line, the
field and a fix, with a link to the field's entry here.

Paths write a mapping's own keys as `<name>` (`services.<name>.health.port` is the `port` under
`health:` of any service) and list items as `[]`. Types, defaults and constraints below are read
from the schema in `playbooks/schema.py`; "further rules" are checks its validators make, told
in the text. Rules across fields (port collisions, placement, the proxy's) are told where they apply.

Related: [zero-downtime swaps, tried in the lab](zero-downtime.md) · [adding and replacing a
host](hosts.md) · [the runbook](runbook.md).
"""


def _entry(row: Row) -> list[str]:
    doc = DOCS[row.path]
    return [
        f'#### <a id="{field_anchor(row.path)}"></a>`{row.path}`',
        "",
        f"- **type** {row.type} · **default** {row.default} · **constraints** {row.constraints}",
        f"- **example** `{doc.example}`",
        f"- **used by** {doc.used_by}",
        "",
        doc.what,
        "",
    ]


def render() -> str:
    all_rows = rows()
    out = [
        "# Inventory reference: `fleet.yml` and `phases.yml`",
        "",
        "<!-- Generated from the schema (playbooks/schema.py) and playbooks/inventory_doc.py; do not edit by hand."
        f" Regenerate: {REGENERATE} -->",
        "",
        INTRO,
    ]
    for file, _model in ROOTS:
        mine = [r for r in all_rows if r.file == file]
        out += [f"## {file}", "", "| field | type | default |", "|---|---|---|"]
        out += [f"| [`{r.path}`](#{field_anchor(r.path)}) | {r.type} | {r.default} |" for r in mine]
        out.append("")
        for top in (r for r in mine if "." not in r.path.replace("[]", "")):
            out += [f"### {top.path}", ""]
            out += [line for r in mine if r.path == top.path or r.path.startswith((top.path + ".", top.path + "[]"))
                    for line in _entry(r)]
    return "\n".join(out).rstrip("\n") + "\n"


def problems() -> list[str]:
    """Fields without prose, prose for fields that are gone, prose left empty: [] when DOCS and the schema agree."""
    paths = [r.path for r in rows()]
    out = [f"{p}: a field of the schema with no entry in DOCS (playbooks/inventory_notes*.py); add one" for p in paths
           if p not in DOCS]
    out += [f"{p}: an entry in DOCS (playbooks/inventory_notes*.py) for a field the schema no longer has; remove it" for p in DOCS
            if p not in paths]
    out += [f"{p}: its entry in DOCS leaves {k} empty" for p, d in DOCS.items() for k, v in d._asdict().items() if not v.strip()]
    return out


def main() -> int:
    missing = problems()
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 1
    try:
        sys.stdout.write(render())
        sys.stdout.flush()
    except BrokenPipeError:  # a reader that left (| head) is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def anchors() -> Iterator[tuple[str, str]]:
    """(path, anchor) of every field, for checks and links."""
    for r in rows():
        yield r.path, field_anchor(r.path)


if __name__ == "__main__":
    sys.exit(main())
