"""The check of the workflow's configuration: the JSON schema (workflow/schemas/config.schema.yaml)
and what a schema cannot say. workflow/rules/common.smk calls `problems` before any planning; it
needs only jsonschema, so the tests drive it with generated configurations without Snakemake.

What the schema's types let through, checked here:

* numbers must be finite: YAML's `.nan` / `.inf`, or `nan` given with `--config`, are numbers to
  JSON Schema, but every bound compares false with NaN (`budgets: [nan]` would plan a study named
  `flopsnan` and fail much later, naming no key);
* integers must be written as integers: JSON Schema takes `threads: 2.0` for an integer, the
  command line it becomes (`--threads 2.0`) does not;
* `search.storage`, when it is a path, must be a journal file that can be created (a path under
  `/dev/null` would fail in every search job).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import jsonschema

_BASE = jsonschema.Draft202012Validator
Validator = jsonschema.validators.extend(_BASE, type_checker=_BASE.TYPE_CHECKER.redefine_many({
    "number": lambda checker, x: _BASE.TYPE_CHECKER.is_type(x, "number") and math.isfinite(x),
    "integer": lambda checker, x: isinstance(x, int) and not isinstance(x, bool),  # not 2.0: `--threads 2.0` fails
}))


def coerce(value, schema):
    """Numbers and booleans given as strings -> numbers and booleans where the schema wants them.
    `--config budgets=[0.25]` reaches the workflow as ['0.25'] (Snakemake reads nested values as strings)."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                value[key] = coerce(value[key], sub)
        return value
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, v in enumerate(value):
                value[i] = coerce(v, items)
        return value
    if isinstance(value, str):
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        for option in schema.get("oneOf", []):
            option_types = option.get("type", [])
            types += [option_types] if isinstance(option_types, str) else option_types
        if "boolean" in types and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if "null" in types and value.lower() in ("null", "none", "~"):
            return None
        for kind, parse in (("integer", int), ("number", float)):
            if kind in types:
                try:
                    return parse(value)
                except ValueError:
                    pass
    return value


def problems(cfg: dict, schema: dict) -> list[str]:
    """One 'key: what is wrong' line per problem of `cfg` (coerced), in key order; [] if none."""
    lines = []
    for e in sorted(Validator(schema).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path]):
        deeper = [c for c in e.context or () if len(c.absolute_path) > len(e.absolute_path)]
        if e.validator == "oneOf" and deeper:  # the value has one alternative's type: say what is wrong inside
            lines += [f"{_where(c)}: {_message(c)}" for c in deeper]
        elif e.validator == "oneOf" and e.context:  # say what each alternative wanted
            lines.append(f"{_where(e)}: {e.message} (" + "; ".join(sorted({_message(c) for c in e.context})) + ")")
        else:
            lines.append(f"{_where(e)}: {_message(e)}")
    search = cfg.get("search")
    storage = search.get("storage") if isinstance(search, dict) else None
    problem = storage_problem(storage) if isinstance(storage, str) and storage else None
    if problem:
        lines.append(f"search.storage: {problem}")
    return sorted(lines)


def storage_problem(storage: str) -> str | None:
    """Why a journal file cannot be created at `storage` (a path; a URL is the database's to check)."""
    if "://" in storage:
        return None
    path = Path(storage).expanduser()
    if path.exists() and not path.is_file():
        return f"{storage} exists and is not a file: give the journal file's path, e.g. {storage}/study.journal"
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder: the journal {storage} cannot be created"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable: the journal {storage} cannot be created"
    return None


def _where(e) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
    return where or "(top level)"


def _message(e) -> str:
    if e.validator == "type" and isinstance(e.instance, float) and not math.isfinite(e.instance):
        return f"{e.instance} is not a finite number"
    return e.message
