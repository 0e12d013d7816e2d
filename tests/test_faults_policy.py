"""Property-based bad policies (hypothesis, derandomized: the same examples every run).

`Policy.from_dict` gets valid policies with one field made invalid in every way a JSON value can
be (wrong type, out of range, NaN, infinity, integers beyond 1e308 or 4300 digits, non-ASCII digits,
unknown and missing keys, deep nesting); each must raise PolicyError naming that field. `Policy.load`
gets such documents as files, and a valid file cut short, with bytes overwritten or inserted (also
invalid UTF-8) or a key repeated; each must load as a valid policy or raise PolicyError naming the
file, never another exception. docs/method.md §3 defines the format."""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from collections.abc import Mapping

import faultkit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utrc import Policy, PolicyError
from utrc.policy import FORMAT, IMPORTANCE_METRICS, IMPORTANCE_SOURCES, METHODS, STRATEGIES
from utrc.shapes import ARCHITECTURES

FROM_DICT_EXAMPLES = 1000  # each tries its value or key in every field: about 12 bad policies
LOAD_EXAMPLES = 600
GOOD = {
    "format": FORMAT, "method": "utrc",
    "model": {"name": "state-spaces/mamba2-2.7b", "architecture": "mamba2", "n_layer": 64, "d_model": 2560},
    "layers": {"12": {"keep": 0.905}, "17": {"keep": 0.905, "prune_share": 0.4}},
    "prune_share": 0.5, "importance": "clip", "importance_source": "ssm_output", "hidden_strategy": "hybrid",
    "residual_strategy": "merge", "provenance": {"study": "s", "trial": 3},
}
CHOICES = {"format": (FORMAT,), "method": METHODS, "importance": IMPORTANCE_METRICS,
           "importance_source": IMPORTANCE_SOURCES, "hidden_strategy": STRATEGIES, "residual_strategy": STRATEGIES}
OPTIONAL = ("estimates", "measured", "provenance")
SETTINGS = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    # integers beyond a float's range, and beyond the 4300 digits Python converts to text
    st.sampled_from([400, -400, 5000, 19]).map(lambda d: 10 ** abs(d) * (1 if d > 0 else -1)),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["١", "²", "０", "01", "+1", " 1", "1e3", "NaN", "", "utrc", "mamba"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))


def edited(path: tuple, value) -> dict:
    doc = copy.deepcopy(GOOD)
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc


def named(*path) -> str:
    return "^" + re.escape(".".join(path)) + ":"


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# field -> (when a value is bad there, the regex of its PolicyError); one drawn value is tried in every field
FIELDS = {
    **{(key,): (lambda v, key=key: not (isinstance(v, str) and v in CHOICES[key]), named(key)) for key in CHOICES},
    ("model", "name"): (lambda v: not isinstance(v, str), named("model", "name")),
    ("model", "architecture"): (lambda v: not (isinstance(v, str) and v in ARCHITECTURES),
                                named("model", "architecture")),
    ("model", "n_layer"): (lambda v: not positive_int(v), named("model", "n_layer")),
    ("model", "d_model"): (lambda v: not positive_int(v), named("model", "d_model")),
    ("prune_share",): (lambda v: not (is_number(v) and 0 <= v <= 1), named("prune_share")),
    ("layers", "17", "prune_share"): (lambda v: v is not None and not (is_number(v) and 0 <= v <= 1),
                                      named("layers", "17", "prune_share")),
    ("layers", "12", "keep"): (lambda v: not (is_number(v) and 0 < v <= 1), named("layers", "12", "keep")),
    ("layers", "12"): (lambda v: not isinstance(v, Mapping), r"^layers\.12: expected a JSON object"),
    ("layers",): (lambda v: not isinstance(v, Mapping), r"^layers: expected a JSON object"),
    ("model",): (lambda v: not isinstance(v, Mapping), r"^model: expected a JSON object"),
    **{(key,): (lambda v: v is not None and not isinstance(v, Mapping), rf"^{key}: expected a JSON object or null")
       for key in OPTIONAL},
    (): (lambda v: not isinstance(v, Mapping), r"^policy: expected a JSON object"),
}


def bad_policies_with(value) -> list[tuple[object, str]]:
    """Every policy that `value` makes invalid in one field, with the regex naming that field."""
    return [(edited(path, value) if path else value, where) for path, (bad, where) in FIELDS.items() if bad(value)]


def bad_policies_with_key(key: str) -> list[tuple[dict, str]]:
    """`key` as an unknown key at each level, and as a block index where it is not one."""
    cases = []
    if key not in GOOD and key not in OPTIONAL:
        cases.append((edited((key,), 1), r"^policy: unknown key"))
    if key not in GOOD["model"]:
        cases.append((edited(("model", key), 1), r"^model: unknown key"))
    if key not in ("keep", "prune_share"):
        cases.append((edited(("layers", "12", key), 1), r"^layers\.12: unknown key"))
    if not re.fullmatch(r"0|[1-9][0-9]{0,17}", key):
        cases.append((edited(("layers", key), {"keep": 0.9}), r"^layers: key .* is not a block index"))
    elif int(key) >= GOOD["model"]["n_layer"]:
        cases.append((edited(("layers", key), {"keep": 0.9}), rf"^layers\.{key}: block index outside the model"))
    return cases


def _nest(depth: int) -> dict:
    doc = {"x": None}
    for _ in range(depth):
        doc = {"x": doc}
    return doc


MISSING = [(edited((k,), KeyError), r"^policy: missing required key") for k in GOOD if k not in OPTIONAL] + [
    (edited(("model", k), KeyError), r"^model: missing key") for k in GOOD["model"]] + [
    (edited(("layers", "12", "keep"), KeyError), r"^layers\.12\.keep: missing")]
NOT_JSON = [(edited((key,), {"kl": [0.1, v]}), rf"^{key}\.kl\[1\]: .* is not a JSON number")
            for key in OPTIONAL for v in (math.nan, math.inf, -math.inf)] + [
    (edited((key,), _nest(depth)), rf"^{key}(\.x)+: nested deeper than") for key in OPTIONAL for depth in (65, 5000)]
cases_from_values = values.map(bad_policies_with)
cases_from_keys = st.one_of(st.text(max_size=10), st.integers(0, 10**18).map(str)).map(bad_policies_with_key)


def test_bad_policies_are_refused_naming_the_field():
    seen = Counter()

    def refused(doc, where):
        with pytest.raises(PolicyError) as error:
            Policy.from_dict(doc)
        assert re.search(where, str(error.value)), (str(error.value), where)
        seen["refused"] += 1

    @settings(SETTINGS, max_examples=FROM_DICT_EXAMPLES)
    @given(st.one_of(cases_from_values, cases_from_keys))
    def check(cases):
        for doc, where in cases:
            refused(doc, where)

    check()
    for doc, where in MISSING + NOT_JSON:
        refused(doc, where)
    Policy.from_dict(GOOD)  # the unedited policy is valid: each case is bad by its one edit
    faultkit.record("policy: Policy.from_dict of generated bad policies", bad_inputs=seen["refused"])
    assert seen["refused"] >= 8000


TEXT_CAUSES = r"not UTF-8 text|not valid JSON|is not a JSON number|digits is too long|appears twice|nested deeper"
good_bytes = json.dumps(GOOD, indent=1).encode()
damaged_files = st.one_of(
    st.one_of(cases_from_values, cases_from_keys).map(lambda cases: [
        (json.dumps(doc).encode(), where) for doc, where in cases if _dumpable(doc)]),
    st.integers(0, len(good_bytes) - 1).map(lambda cut: [(good_bytes[:cut], None)]),
    st.tuples(st.integers(0, len(good_bytes) - 1), st.binary(min_size=1, max_size=4)).map(
        lambda t: [(good_bytes[:t[0]] + t[1] + good_bytes[t[0] + len(t[1]):], None)]),
    st.tuples(st.integers(0, len(good_bytes)), st.binary(min_size=1, max_size=4)).map(
        lambda t: [(good_bytes[:t[0]] + t[1] + good_bytes[t[0]:], None)]),
    st.sampled_from(sorted(GOOD)).map(lambda k: [(good_bytes.replace(
        b'{\n "', f'{{\n "{k}": {json.dumps(GOOD[k])},\n "'.encode(), 1), rf"key '{k}' appears twice")]),
)


def _dumpable(doc) -> bool:
    try:
        json.dumps(doc)
    except (ValueError, RecursionError):  # an integer beyond 4300 digits, nesting beyond Python's stack
        return False
    return True


def test_damaged_policy_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "policy.json"
    seen = Counter()

    @settings(SETTINGS, max_examples=LOAD_EXAMPLES)
    @given(damaged_files)
    def check(cases):
        for data, where in cases:
            path.write_bytes(data)
            try:
                Policy.load(path)
            except PolicyError as refused:
                message = str(refused)
                assert message.startswith(f"{path}: "), message
                if where is not None:
                    assert re.search(where.lstrip("^"), message) or re.search(TEXT_CAUSES, message), (message, where)
                seen["refused"] += 1
            else:
                assert where is None  # a damage that left a valid policy (e.g. one digit of a keep changed)
                seen["still valid"] += 1

    check()
    faultkit.record("policy: Policy.load of generated bad or damaged files", bad_inputs=seen["refused"],
                    still_valid=seen["still valid"])
    assert seen["refused"] >= 2000
