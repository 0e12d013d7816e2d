"""utrc.profile on the CPU (the GPU protocol runs on the GPU machine: benchmarks/gpu_native.sh)."""

import json

import pytest
import torch
from conftest import tiny_model

from utrc import LayerSpec, ModelShape, ModelSpec, Policy
from utrc.profile import budget_policy, main, profile
from utrc.shapes import PAPER_SHAPES


def test_profile_on_the_cpu_measures_dense_and_policies(one_thread):
    model = tiny_model("mamba2")
    spec = ModelSpec.of(ModelShape.of(model), "tiny")
    policy = Policy("utrc", spec, {1: LayerSpec(0.5)})
    seen = []
    result = profile(model, {"half": policy}, seq_len=32, memory_batch=2, prefill_batch=2, generate_batch=2,
                     new_tokens=3, repeats=1, warmup=0, measure=("prefill", "generate"),
                     checkpoint=lambda doc: seen.append(json.loads(json.dumps(doc))), say=lambda msg: None)
    assert result["device"].startswith("CPU") and "CPU" in result["baseline"] and result["complete"]
    assert "transformers-dense" not in result["results"]  # the reference row is a GPU-only addition
    # a checkpoint after every model: a run cut short keeps what it measured
    assert [sorted(doc["results"]) for doc in seen] == [["dense"], ["dense", "half"]]
    assert seen[0]["complete"] is False
    half = result["results"]["half"]
    assert half["prefill_s"] > 0 and half["generate_s"] > 0 and half["prefill_speedup"] > 0
    # keep 0.5 after block 1 of 4: blocks 2-3 and the head see half the tokens, so the ideal lies in (1, 2)
    assert 1 < half["ideal_speedup"] < 2


def test_command_line_writes_one_complete_file_and_nothing_else(tmp_path, one_thread):
    out = tmp_path / "profile.json"
    main(["--model", "demo:mamba2", "--policy", "utrc-paper:0.3", "--seq-len", "64", "--prefill-batch", "1",
          "--generate-batch", "1", "--new-tokens", "2", "--repeats", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["model"] == "demo:mamba2" and doc["protocol"]["seq_len"] == 64
    assert sorted(doc["results"]) == ["dense", "utrc-paper:0.3"]
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]  # no partial or temporary files


def test_cuda_on_a_machine_without_one_is_a_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        main(["--model", "demo:mamba2", "--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_budget_policies_use_the_paper_layers_and_refuse_unknown_runs():
    shape = PAPER_SHAPES["state-spaces/mamba2-2.7b"]
    policy = budget_policy("utrc-paper:0.3", shape)
    assert policy.method == "utrc" and sorted(policy.layers) == [12, 17, 22, 27, 32, 37, 42]
    assert budget_policy("evit:0.3", shape).method == "evit"
    with pytest.raises(ValueError, match="utrc-paper"):
        budget_policy("paper:0.3", shape)
