"""Validate SPDX JSON SBOMs with spdx-tools (the SPDX project's own parser and validator)."""

from __future__ import annotations

from pathlib import Path


class SbomError(Exception):
    pass


def validate(path: Path) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    try:
        doc = parse_file(str(path))
    except Exception as exc:  # noqa: BLE001 - spdx-tools raises several parser errors
        raise SbomError(f"{path}: not an SPDX document spdx-tools accepts: {exc}") from None
    problems = validate_full_spdx_document(doc)
    if problems:
        raise SbomError(f"{path}: SPDX validation failed: " + "; ".join(p.validation_message for p in problems[:5]))
