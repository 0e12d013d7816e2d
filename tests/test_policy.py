"""The policy file: round trip, and a PolicyError naming the field for every invalid input (SPEC §3)."""

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
