"""The inventory's YAML, as a person wrote it: line numbers per field, duplicate keys, and errors explained.

pydantic says what is wrong by location; this module turns each location into file:line, a
dotted field, the fix, and a link to the field in docs/inventory.md.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from agent import contract

from .schema import Fleet, Host, InventoryError, Phases, Service

MAX_NODES = 1_000_000  # far above any real fleet (5,000 services are ~100,000 nodes); an alias bomb meets it at once
RAW = ("__raw__",)  # lines[RAW]: {path: a scalar as written}, for fixes that say "quote it" in the operator's own text


class _TooBig(Exception):
    pass


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None, budget: list | None = None) -> dict:
    """Map each dotted path in the document to the 1-based line it starts on (and each scalar to its text as written).

    Aliases share nodes, so a few lines can expand to billions of values (`&a [*b, *b, ...]` nested): walking or
    validating them would never end. The walk counts what it visits and stops at MAX_NODES.
    """
    out = {RAW: {}} if out is None else out
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_index(v, path + (key,), out, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out, budget)
    elif isinstance(node, yaml.ScalarNode) and len(path) <= 8:
        out[RAW][path] = node.value
    return out


def _duplicate_keys(node: yaml.Node, path: Path, trail: tuple = ()) -> list[str]:
    """YAML keeps the last of two equal keys without a word; an inventory treats that as the mistake it usually is."""
    out = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key, line = str(k.value), k.start_mark.line + 1
            if key in seen:
                field = written_field((*trail, key))
                out.append(f"{path}:{line}: {field}: key given twice (lines {seen[key]} and {line}); fix: keep one of them")
            else:
                seen[key] = line
            out += _duplicate_keys(v, path, (*trail, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, path, (*trail, i))
    return out


# libyaml's parser when PyYAML was built with it: every command reads the inventory before its first packet; the
# pure-Python scanner took 7.1 ms a file on the repository's inventory, libyaml 0.5 ms (bench/REPORT.md). Same nodes and
# line marks; syntax errors are worded by libyaml.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> tuple[Any, dict]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InventoryError([f"{path}: cannot read it ({exc.strerror}); check the path"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InventoryError([f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); fix: save the file as UTF-8"
                              " (an editor's 'encoding' setting, or iconv -f latin1 -t utf-8)"]) from None
    loader = _LOADER(text)  # one parse gives both the nodes (lines, duplicates) and the data
    try:
        node = loader.get_single_node()
        # Lines and duplicate keys from the nodes as written, before construct_document: it flattens merge keys
        # (`<<: *anchor`) into the mapping node in place, and an override of a merged key would then look given twice.
        try:
            lines = _line_index(node) if node is not None else {RAW: {}}
        except _TooBig:
            raise InventoryError([f"{path}: expands to more than {MAX_NODES:,} values (YAML aliases repeating aliases?);"
                                  " fix: write the values out, or use anchors only for small repeated blocks"]) from None
        lines[("__duplicates__",)] = _duplicate_keys(node, path) if node is not None else []  # reported with the rest
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InventoryError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax"]) from exc
    finally:
        loader.dispose()
    if node is None or not isinstance(data, dict):
        raise InventoryError([f"{path}:1: expected a YAML mapping at the top level (the file is empty, or is a list or a"
                              f" single value); fix: start from the shape of {DOC} (python -m playbooks.inventory_doc)"])
    return data, lines


_FIXES = {
    "extra_forbidden": "remove it or check its spelling",
    "missing": "add it",
    "name": "rename it (and every reference to it) to lowercase letters, digits, '_', '.', '-'",
    "user": f"leave it out (the image contract's {contract.IMAGE_USER}) or give a numeric uid:gid with uid >= {contract.MIN_UID}"
            " and a gid that is no privileged group's (not root, adm, disk, sudo, shadow, nor the Docker socket's group)",
    "network": f"leave it out (the default {contract.DEFAULT_NETWORK!r}) or name fleetroll's own bridge network, e.g. 'fleetroll-web'",
}


def _known_keys(loc: tuple) -> list[str]:
    """The keys a mapping at `loc` may hold (for "did you mean"): walks the models by the location's names."""
    model: Any = Fleet
    for part in loc:
        if model is Fleet and part in ("hosts", "services"):
            model = {"hosts": Host, "services": Service}[part]
            continue
        if model in (Host, Service) and isinstance(part, str) and part not in model.model_fields:
            continue  # the entry's own name (hosts.<name>)
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        model = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _line_for(lines: dict, loc: tuple) -> int:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


# A value that may be one of several types fails once per type, each under its type's name (pydantic's union
# branches): one line per field, in the inventory's words, instead.
_BRANCHES = {"str": "a string", "int": "a whole number", "SecretRef": "a secret reference ({secret: NAME})",
             "literal['all']": "'all'"}


def _one_per_union(errors: list[dict]) -> list[dict]:
    """Fold the errors of one field's union branches into one error about the field.

    A branch's error either ends in the branch's name (the value is not of that type) or goes on
    inside it (`env.TOK.SecretRef.as`: a mapping that is a secret reference, with a wrong key).
    When one branch got that far, its errors are the mistake and the other branches' "not a
    string" is noise: one error for `as: files`, not two.
    """
    out: list[dict] = []
    groups: dict[tuple, list[dict]] = {}
    inside: dict[tuple, list[dict]] = {}
    for e in errors:
        loc = tuple(e["loc"])
        at = next((i for i in range(1, len(loc)) if str(loc[i]) in _BRANCHES), None)
        if at is None:
            out.append(e)
        elif at == len(loc) - 1:
            groups.setdefault(loc[:-1], []).append(e)
        else:
            inside.setdefault(loc[:at], []).append({**e, "loc": loc[:at] + loc[at + 1:]})
    for loc, es in inside.items():
        out += es
        groups.pop(loc, None)
    for loc, es in groups.items():
        if len(es) == 1:
            out.append(es[0])
            continue
        wanted = " or ".join(_BRANCHES[str(x["loc"][-1])] for x in es)
        out.append({"loc": loc, "msg": f"must be {wanted}", "type": "union", "input": es[0].get("input")})
    return out


_YAML_TYPE = {bool: "a boolean", int: "a number", float: "a number"}


def _quote_fix(loc: tuple, e: dict, raw: dict) -> str | None:
    """A string field given an unquoted YAML scalar (NO, 1.10, 22:22, no): YAML changed it (False, 1.1, 1342, False).

    The fix quotes what the operator wrote, read back from the file; for env, where a value may be a secret, it
    says how without repeating it."""
    value = e.get("input")
    if type(value) not in _YAML_TYPE or e["type"] not in ("string_type", "literal_error", "union"):
        return None
    seen = f"; unquoted, YAML read it as {_YAML_TYPE[type(value)]}"
    if "env" in loc:
        return f"put the value in quotes exactly as written ({loc[-1]}: \"...\"){seen}"
    written = raw.get(tuple(loc))
    if written is None:
        return None
    return f"quote it as written ({f'{loc[-1]}: ' if isinstance(loc[-1], str) else '- '}\"{written}\"){seen}"


def _shown(loc: tuple, value: Any) -> str:
    """What a message may repeat of the value given: a short scalar, never anything under env (a value may be a secret)
    and never a whole mapping (a service's includes its env)."""
    rest = tuple(loc)[tuple(loc).index("env") + 1:] if "env" in loc else None
    if rest is not None and (len(rest) <= 1 or rest[1] == "str"):  # env, or a variable's value (a reference's fields show)
        return ""
    if not isinstance(value, (str, int, float, bool)) or len(repr(value)) > 80:
        return ""
    return f" (got {value!r})"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # a service, host or env name as written: no quotes needed


def written_field(loc: tuple) -> str:
    """A field as every message writes it: `phases[2].services`, `services.web.ports[0]` (pure).

    A list index is written in brackets after its list, as the checks written by hand do; a name
    that is no plain name is quoted (a newline in it must not start a line of the message).
    """
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            part = str(p) if _PLAIN_KEY.fullmatch(str(p)) else repr(p)
            out += f".{part}" if out else part
    return out


def _explain(path: Path, lines: dict, err: ValidationError) -> list[str]:
    out = []
    raw = lines.get(RAW) or {}
    for e in _one_per_union(err.errors()):
        loc = tuple(e["loc"])
        # A name that fails its pattern is shown quoted (a newline in it must not start a line here).
        field = written_field(tuple(p for p in loc if p != "[key]")) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        fix = e.get("fix") or _quote_fix(loc, e, raw) or _FIXES.get(e["type"], "correct the value")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1, cutoff=0.6)
            if close:
                fix = f"did you mean {close[0]!r}? (else remove it)"
        got = "" if e["type"] in ("missing", "extra_forbidden", "name", "network") else _shown(loc, e.get("input"))
        out.append(f"{path}:{_line_for(lines, loc)}: {field}: {msg}{got}; fix: {fix}")
    return out


# --- links from messages to the field reference (docs/inventory.md, python -m playbooks.inventory_doc) ----------

DOC = "docs/inventory.md"
# The placeholder a reference path uses for the keys of a mapping field (default "<name>").
KEY_NAMES = {"env": "<VAR>"}


def field_anchor(path: str) -> str:
    """'services.<name>.health.port' -> 'services-name-health-port': the HTML id of a field in the reference."""
    return path.lower().replace("<", "").replace(">", "").replace("[]", "").replace(".", "-")


def _descend(ann: Any, parts: list, path: str, name: str) -> tuple[Any, str]:
    """Follow a location's mapping keys and list indexes through a field's type: (the model reached or None, its path)."""
    while True:
        if get_origin(ann) is Annotated:
            ann = get_args(ann)[0]
            continue
        origin = get_origin(ann)
        if origin is dict:
            if not parts:
                return None, path
            parts.pop(0)
            path, ann = f"{path}.{KEY_NAMES.get(name, '<name>')}", get_args(ann)[1]
            continue
        if origin is list:
            if not parts or not isinstance(parts[0], int):
                return None, path
            parts.pop(0)
            path, ann = f"{path}[]", get_args(ann)[0]
            continue
        if origin in (Union, types.UnionType):
            models = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            if models and parts and parts[0] == models[0].__name__:
                parts.pop(0)  # pydantic names the union member it tried
            return (models[0] if models else None), path
        return (ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None), path


def field_path(loc: tuple | list) -> str | None:
    """The reference's path of the deepest field a location names: ('services', 'web', 'health', 'port') ->
    'services.<name>.health.port'; ('phases', 0, 'name') -> 'phases[].name'. None when it names no field."""
    parts = list(loc)
    model: Any = Phases if parts[:1] == ["phases"] else Fleet
    found, prefix = None, ""
    while parts and model is not None:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None and isinstance(part, str):  # an alias, as the YAML spells it (`as` for the model's `as_`)
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            break
        found = prefix + part
        model, at = _descend(field.annotation, parts, found, part)
        prefix = at + "."
    return found


def _loc_of(field: str) -> tuple:
    """'phases[0].services' -> ('phases', 0, 'services'), as a message spells a location."""
    out: list = []
    for part in field.split("."):
        m = re.fullmatch(r"(.*?)((?:\[\d+\])*)", part)
        out.append(m[1])
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m[2])]
    return tuple(out)


def with_link(problem: str, file: Path) -> str:
    """`problem` ("<file>:<line>: <field>: ...") with a link to its field's entry in the reference, when it names one."""
    head = f"{file}:"
    if not problem.startswith(head) or "(see " + DOC in problem:
        return problem
    line, _, rest = problem[len(head):].partition(": ")
    field = rest.split(": ", 1)[0]
    if not line.isdigit() or not re.fullmatch(r"[\w.\-'\[\]]+", field):
        return problem
    path = field_path(_loc_of(field))
    return f"{problem} (see {DOC}#{field_anchor(path)})" if path else problem
