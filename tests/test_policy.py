"""The policy file: round trip, and a PolicyError naming the field for every invalid input (docs/method.md §3)."""

import copy
import json
import re

import pytest
from conftest import tiny_model

from utrc import LayerSpec, ModelSpec, Policy, PolicyError, apply
from utrc.policy import paper_layers

GOOD = {
    "format": "utrc-policy/1",
    "method": "utrc",
    "model": {"name": "state-spaces/mamba2-2.7b", "architecture": "mamba2", "n_layer": 64, "d_model": 2560},
    "layers": {"12": {"keep": 0.905}, "17": {"keep": 0.905, "prune_share": 0.4}},
    "prune_share": 0.5,
    "importance": "clip",
    "importance_source": "ssm_output",
    "hidden_strategy": "hybrid",
    "residual_strategy": "merge",
}


def edited(path, value):
    d = copy.deepcopy(GOOD)
    *parents, last = path
    target = d
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return d


def test_round_trip(tmp_path):
    p = Policy.from_dict(GOOD)
    assert p.layers[17] == LayerSpec(0.905, 0.4)
    assert p.reduction_layers() == {12: (0.905, 0.5), 17: (0.905, 0.4)}
    assert p.to_dict() == GOOD
    path = p.save(tmp_path / "sub" / "policy.json")
    assert Policy.load(path) == p
    with_extras = dict(GOOD, provenance={"study": "s", "trial": 3}, estimates={"seq_len": 2048})
    assert Policy.from_dict(with_extras).to_dict() == with_extras


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("format",), "utrc-policy/2", "format"),
        (("method",), "random", "method"),
        (("bogus",), 1, "unknown key"),
        (("importance",), KeyError, "missing required key"),
        (("model", "architecture"), "transformer", "model.architecture"),
        (("model", "n_layer"), 0, "model.n_layer"),
        (("model", "d_model"), "2560", "model.d_model"),
        (("model", "extra"), 1, "model: unknown key"),
        (("layers", "12", "keep"), 0.0, "layers.12.keep"),
        (("layers", "12", "keep"), 1.5, "layers.12.keep"),
        (("layers", "12", "keep"), "0.9", "layers.12.keep"),
        (("layers", "12", "keep"), True, "layers.12.keep"),
        (("layers", "12", "prune_share"), -0.1, "layers.12.prune_share"),
        (("layers", "12", "ratio"), 0.5, "layers.12: unknown key"),
        (("layers", "64"), {"keep": 0.9}, "layers.64"),
        (("layers", "-1"), {"keep": 0.9}, "layers: key '-1'"),
        (("layers", "x"), {"keep": 0.9}, "layers: key 'x'"),
        (("layers", "20"), {}, "layers.20.keep"),
        (("prune_share",), 1.5, "prune_share"),
        (("importance",), "max", "importance"),
        (("importance_source",), "attention", "importance_source"),
        (("hidden_strategy",), "drop", "hidden_strategy"),
        (("residual_strategy",), None, "residual_strategy"),
    ],
)
def test_invalid_fields_name_the_field(path, value, field):
    with pytest.raises(PolicyError, match=re.escape(field)):
        Policy.from_dict(edited(path, value))


def test_scan_output_is_mamba2_only():
    d = edited(("importance_source",), "scan_output")
    Policy.from_dict(d)
    d["model"]["architecture"] = "mamba"
    with pytest.raises(PolicyError, match="importance_source"):
        Policy.from_dict(d)


def test_load_errors(tmp_path):
    with pytest.raises(PolicyError, match="not found"):
        Policy.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(bad)
    bad.write_text(json.dumps(edited(("layers", "12", "keep"), 2)))
    with pytest.raises(PolicyError, match=r"bad\.json: layers\.12\.keep"):
        Policy.load(bad)


@pytest.mark.parametrize(
    "field, value", [("architecture", "mamba"), ("n_layer", 5), ("d_model", 64)]
)
def test_apply_refuses_a_policy_for_another_model(field, value):
    model = tiny_model("mamba2")  # mamba2, 4 layers, d_model 32
    spec = {"name": "tiny", "architecture": "mamba2", "n_layer": 4, "d_model": 32}
    spec[field] = value
    policy = Policy(method="utrc", model=ModelSpec(**spec), layers={1: LayerSpec(0.5)})
    with pytest.raises(PolicyError, match=f"model.{field}"):
        apply(model, policy)


def test_paper_layers():
    assert paper_layers(64) == (12, 17, 22, 27, 32, 37, 42)
    assert paper_layers(48) == (10, 15, 20, 25, 30, 35)
    assert paper_layers(24) == (4, 6, 8, 10, 12, 14, 16)  # round(l * 24 / 64)
    assert paper_layers(4) == (1, 2, 3)  # duplicates dropped


# --- edge cases: every one is a PolicyError naming the field or the cause, never a raw Python error


@pytest.mark.parametrize("key", ["١", "²", "０", "1_0", " 1", "1 ", "+1", "01", "1" * 5000],
                         ids=lambda k: ascii(k)[:12])
def test_block_index_keys_are_ascii_decimal_integers(key):
    d = edited(("layers", key), {"keep": 0.9})
    with pytest.raises(PolicyError, match=r"layers: key .* is not a block index|layers\.1+…?: block index outside"):
        Policy.from_dict(d)


@pytest.mark.parametrize("path", [("layers", "12", "keep"), ("prune_share",), ("layers", "17", "prune_share")])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
def test_huge_integers_are_refused_naming_the_field(path, value):
    with pytest.raises(PolicyError, match=r"^" + r"\.".join(path) + r": expected a number in .*digits"):
        Policy.from_dict(edited(path, value))


def test_a_policy_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(json.dumps(GOOD).replace("state-spaces", "caf\u00e9").encode("latin-1"))
    with pytest.raises(PolicyError, match=r"latin1\.json: not UTF-8 text: byte 0xe9 at offset \d+"):
        Policy.load(bad)


def test_deep_nesting_is_refused(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps(GOOD)[:-1] + ', "provenance": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    with pytest.raises(PolicyError, match=r"deep\.json: JSON nested deeper than \d+ levels"):
        Policy.load(deep)
    nested = None
    for _ in range(5000):
        nested = {"x": nested}
    with pytest.raises(PolicyError, match=r"^provenance(\.x)+: nested deeper than \d+ levels"):
        Policy.from_dict(dict(GOOD, provenance=nested))


@pytest.mark.parametrize("good, twice, key", [
    ('"method": "utrc"', '"method": "evit", "method": "utrc"', "method"),
    ('"12": {"keep": 0.905}', '"12": {"keep": 0.5}, "12": {"keep": 0.905}', "12"),
])
def test_duplicate_keys_are_refused_naming_the_key(tmp_path, good, twice, key):
    """json.loads lets the last of two equal keys win silently: a policy must say each thing once."""
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(GOOD).replace(good, twice))
    with pytest.raises(PolicyError, match=rf"dup\.json: key '{key}' appears twice"):
        Policy.load(path)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1" + "0" * 5000])
def test_numbers_json_cannot_hold_are_refused(tmp_path, number):
    path = tmp_path / "num.json"
    path.write_text(json.dumps(dict(GOOD, provenance={"kl": 0.5})).replace("0.5}", number + "}"))
    with pytest.raises(PolicyError, match=r"num\.json: .*(not a JSON number|digits)"):
        Policy.load(path)
    with pytest.raises(PolicyError, match=r"^provenance\.kl: .*not a JSON number"):
        Policy.from_dict(dict(GOOD, provenance={"kl": float(number) if len(number) < 20 else float("inf")}))
