"""The inventory's fields as the schema declares them: path, type, default and constraints of each.

Read from the pydantic models in playbooks/schema.py (model_fields: annotations, defaults,
ge/gt/le/pattern metadata, Literal choices), so docs/inventory.md cannot drift from what the
validator enforces. The prose the models cannot hold is in playbooks/inventory_notes*.py; the
document is put together by playbooks/inventory_doc.py.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel

from agent import contract

from .inventory import KEY_NAMES, Fleet, Phases

ROOTS = (("fleet.yml", Fleet), ("phases.yml", Phases))


@dataclass(frozen=True)
class Row:
    file: str
    path: str
    type: str
    default: str
    constraints: str


def _children(ann: Any, name: str, suffix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """The models a field's type holds, with the path suffix leading to each ('.<name>' for a mapping, '[]' for a list)."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _children(get_args(ann)[0], name, suffix)
    if origin is dict:
        return _children(get_args(ann)[1], name, f"{suffix}.{KEY_NAMES.get(name, '<name>')}")
    if origin is list:
        return _children(get_args(ann)[0], name, f"{suffix}[]")
    if origin in (Union, types.UnionType):
        return [c for a in get_args(ann) for c in _children(a, name, suffix)]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [(suffix, ann)]
    return []


def _named_key(ann: Any) -> bool:
    """Is this a name checked by inventory._named (HostName, ServiceName, ...)?"""
    return get_origin(ann) is Annotated and any(isinstance(m, AfterValidator) and "_named" in m.func.__qualname__
                                                for m in get_args(ann)[1:])


def type_text(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Annotated:
        return "name" if _named_key(ann) else type_text(get_args(ann)[0])
    if origin is Literal:
        return "string" if all(isinstance(v, str) for v in get_args(ann)) else "literal"
    if origin in (Union, types.UnionType):
        parts = []
        for a in get_args(ann):
            if a is type(None):
                continue
            parts.append(" or ".join(json.dumps(v) for v in get_args(a)) if get_origin(a) is Literal else type_text(a))
        return " or ".join(parts)
    if origin is list:
        return f"list of {type_text(get_args(ann)[0])}"
    if origin is dict:
        key, value = get_args(ann)
        return f"mapping of {type_text(key)} → {type_text(value)}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"mapping ({', '.join(f.alias or n for n, f in ann.model_fields.items())})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(ann, getattr(ann, "__name__", str(ann)))


def _number(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def constraints_text(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    out = []
    for m in f.metadata:
        if isinstance(m, Ge):
            out.append(f"≥ {_number(m.ge)}")
        elif isinstance(m, Gt):
            out.append(f"> {_number(m.gt)}")
        elif isinstance(m, Le):
            out.append(f"≤ {_number(m.le)}")
        elif isinstance(m, Lt):
            out.append(f"< {_number(m.lt)}")
        elif getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
        elif isinstance(m, AfterValidator) and "_named" in m.func.__qualname__:
            out.append(f"a plain name: {contract.NAME_RULE}")
    ann = f.annotation
    if get_origin(ann) is Literal:
        out.append("one of " + ", ".join(f"`{v}`" for v in get_args(ann)))
    if get_origin(ann) is dict and _named_key(get_args(ann)[0]):
        out.append(f"keys are plain names: {contract.NAME_RULE}")
    checked = {fld for d in model.__pydantic_decorators__.field_validators.values() for fld in d.info.fields}
    if name in checked:
        out.append("further rules in the text")
    return "; ".join(out) or "—"


def default_text(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    if f.is_required():
        return "required"
    if f.default is None:
        return "not set"
    if isinstance(f.default, BaseModel):
        return "its fields' defaults"
    return f"`{json.dumps(f.default)}`"


def rows() -> list[Row]:
    """Every field of both files, depth first in the models' own order."""
    out: list[Row] = []

    def walk(model: type[BaseModel], prefix: str, file: str) -> None:
        for name, f in model.model_fields.items():
            path = prefix + (f.alias or name)  # as written in the YAML (`as`, not the model's `as_`)
            out.append(Row(file, path, type_text(f.annotation), default_text(model, name), constraints_text(model, name)))
            for suffix, sub in _children(f.annotation, name):
                walk(sub, f"{path}{suffix}.", file)

    for file, model in ROOTS:
        walk(model, "", file)
    return out
