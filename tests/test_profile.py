"""utrc.profile on the CPU (the GPU parts, CUDA graphs and kernel traces, run on the H100: docs/benchmarks.md)."""

import torch
from transformers import DynamicCache

from utrc import LayerSpec, ModelShape, ModelSpec, Policy
from utrc.profile import _copy_cache_states, profile

from conftest import VOCAB, tiny_model


def test_copied_cache_states_continue_decoding_exactly(architecture):
    # the CUDA-graph decoder replays against one fixed cache and copies each new prefill into it
    model = tiny_model(architecture)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(3, VOCAB, (2, 30), generator=g), torch.randint(3, VOCAB, (2, 30), generator=g)
    source, fixed = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with torch.no_grad():
        model(x, cache=source, use_cache=True)
        model(y, cache=fixed, use_cache=True)
        _copy_cache_states(fixed, source)
        token = torch.full((2, 1), 5)
        expected = model(input_ids=token, cache=source, use_cache=True).logits
        got = model(input_ids=token, cache=fixed, use_cache=True).logits
    assert torch.equal(got, expected)


def test_profile_on_the_cpu_measures_dense_and_policies():
    model = tiny_model("mamba2")
    spec = ModelSpec.of(ModelShape.of(model), "tiny")
    policy = Policy("utrc", spec, {1: LayerSpec(0.5)})
    result = profile(model, {"half": policy}, seq_len=32, memory_batch=2, prefill_batch=2, generate_batch=2,
                     new_tokens=3, repeats=1, warmup=0, measure=("prefill", "generate"))
    assert result["device"].startswith("CPU") and result["protocol"]["decode_cuda_graphs"] is False
    dense, half = result["results"]["dense"], result["results"]["half"]
    assert dense["prefill_s"] > 0 and half["generate_s"] > 0
    assert half["prefill_speedup"] == dense["prefill_s"] / half["prefill_s"]
    assert 1 < half["ideal_speedup"] < 2
