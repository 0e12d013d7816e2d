"""Bad workflow configurations: each stops at config load with a line naming the key.

Values the schema's types let through (NaN, infinity, a storage path that cannot exist) are caught
by workflow/schemas/configcheck.py, which workflow/rules/common.smk calls; the property-based test
drives the same check with generated bad configurations (no Snakemake start per example)."""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import faultkit
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
EXAMPLES = 1500
_spec = importlib.util.spec_from_file_location("configcheck", ROOT / "workflow" / "schemas" / "configcheck.py")
configcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configcheck)


def test_values_that_pass_the_schema_types_stop_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "models: [{ref: 'demo:mamba2', budgets: [.inf]}]\n"
        "budgets: [nan]\n"  # a string in YAML: read as a number by the coercion of --config values
        "search: {storage: /dev/null/x}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n",
                           "--configfile", str(config)], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "invalid configuration" in out, out[-3000:]
    assert "budgets[0]: nan is not a finite number" in out
    assert "models[0].budgets[0]: inf is not a finite number" in out
    assert "search.storage: /dev/null is not a folder: the journal /dev/null/x cannot be created" in out
    assert "Building DAG" not in out and "MissingInputException" not in out
    yaml.safe_load(config.read_text())  # the file itself is valid YAML: only the values are wrong


def check(cfg: dict) -> list[str]:
    """What common.smk does with a configuration before any planning: coerce, then list the problems."""
    cfg = copy.deepcopy(cfg)
    configcheck.coerce(cfg, SCHEMA)
    return configcheck.problems(cfg, SCHEMA)


def test_the_shipped_configurations_pass():
    for path in (ROOT / "config.yaml", ROOT / "config" / "paper.yaml", ROOT / "tests" / "data" / "workflow-tiny.yaml"):
        assert check(yaml.safe_load(path.read_text())) == [], path


def leaves(node: dict, path: str = ""):
    """(path, schema) of every value the schema describes, by key, down to the scalars and lists."""
    for key, sub in node.get("properties", {}).items():
        where = f"{path}.{key}" if path else key
        yield where, sub
        yield from leaves(sub, where)


LEAVES = dict(leaves(SCHEMA))
# strings the coercion of --config values would read as numbers, booleans or null are not "wrong type" strings
words = st.text(max_size=8).filter(lambda t: not re.fullmatch(r"\s*[-+]?(\d|\.\d|inf|nan|infinity).*|true|false|null|"
                                                             r"none|~", t.strip().lower()))
anything = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True),
                     words, st.lists(st.integers(), max_size=2), st.dictionaries(words, st.integers(), max_size=2))


def bad_values(schema: dict):
    """Values `schema` refuses: other JSON types, numbers out of its range or not finite, strings
    outside its enum or pattern, too short strings and lists."""
    types = schema.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    for option in schema.get("oneOf", []):
        kind = option.get("type", [])
        types |= {kind} if isinstance(kind, str) else set(kind)
        if "const" in option:
            types.add("const")
    allowed = {"null": lambda v: v is None, "boolean": lambda v: isinstance(v, bool),
               "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
               "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
               "string": lambda v: isinstance(v, str), "array": lambda v: isinstance(v, list),
               "object": lambda v: isinstance(v, dict), "const": lambda v: False}
    out = [anything.filter(lambda v: not any(allowed[t](v) for t in types))]
    if types & {"number", "integer"}:
        out.append(st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf"]))
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        if low is not None:
            out.append(st.integers(-1000, math.ceil(low) - 1 if "minimum" in schema else math.floor(low)))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if high is not None:
            out.append(st.floats(high + (0 if "exclusiveMaximum" in schema else 1e-9), 1e6))
    if "enum" in schema:
        out.append(words.filter(lambda v: v not in schema["enum"]))
    if "pattern" in schema:
        out.append(words.filter(lambda v: not re.search(schema["pattern"], v)))
    if schema.get("minLength"):
        out.append(st.just(""))
    if schema.get("minItems"):
        out.append(st.just([]))
    if isinstance(schema.get("items"), dict) and not schema["items"].get("oneOf"):
        out.append(bad_values(schema["items"]).map(lambda v: ListItem(v)))
    return st.one_of(out)


class ListItem:
    """A bad value put into a list as its second item, after a good one."""

    def __init__(self, value):
        self.value = value


def with_value(base: dict, path: str, value) -> tuple[dict, str]:
    """`base` with `value` at `path` -> (config, the key the error must name)."""
    cfg = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = cfg
    for key in parents:
        target = target.setdefault(key, {})
    if isinstance(value, ListItem):
        good = copy.deepcopy(target.get(last) or BASE_LISTS[path])
        target[last] = good[:1] + [value.value]
        return cfg, f"{path}[1]"
    target[last] = value
    return cfg, path


BASE = yaml.safe_load((ROOT / "config.yaml").read_text())
BASE_LISTS = {"budgets": [0.1], "calibration.keeps": [0.9], "calibration.sensitivity_pairs": ["clip/ssm_output"],
              "search.extra_args": ["--quiet"], "evaluation.methods": ["dense"], "profile.methods": ["tome"],
              "profile.measure": ["memory"], "models": ["demo:mamba2"], "tasks": ["demo_piqa"]}
OBJECTS = [""] + [path for path, schema in LEAVES.items() if schema.get("type") == "object"]
bad_configs = st.one_of(
    st.sampled_from(sorted(LEAVES)).flatmap(lambda path: bad_values(LEAVES[path]).map(
        lambda value: with_value(BASE, path, value))),
    st.tuples(st.sampled_from(OBJECTS), words.filter(lambda k: k not in SCHEMA["properties"] and k)).map(
        lambda t: (with_value(BASE, f"{t[0]}.{t[1]}" if t[0] else t[1], 1)[0], t[0] or "(top level)")),
    words.map(lambda name: (with_value(BASE, "search.storage", f"/dev/null/{name or 'x'}")[0], "search.storage")),
)


def test_bad_configurations_name_their_key():
    seen = Counter()

    @settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
              suppress_health_check=list(HealthCheck))
    @given(bad_configs)
    def run(case):
        cfg, key = case
        lines = check(cfg)
        assert any(line.startswith((f"{key}:", f"{key}[", f"{key}.")) for line in lines), (key, lines)
        seen["refused"] += 1

    run()
    faultkit.record("config: generated bad workflow configurations", bad_inputs=seen["refused"])
    assert seen["refused"] == EXAMPLES
