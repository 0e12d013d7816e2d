"""The reduced forward pass on tiny random models of both architectures (docs/method.md §1, §4)."""

import pytest
import torch
from conftest import VOCAB, tiny_model

from utrc import LayerSpec, ModelShape, ModelSpec, Policy, PolicyError, apply
from utrc.counts import removal_count

METHODS = ["utrc", "evit", "tome"]


def spec_of(model):
    return ModelSpec.of(ModelShape.of(model), name="tiny")


def policy(model, layers, method="utrc", **kw):
    return Policy(method=method, model=spec_of(model), layers={i: LayerSpec(k) for i, k in layers.items()}, **kw)


def ids(batch=3, n=40, seed=1):
    return torch.randint(3, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS + ["dense"])
def test_keep_one_is_the_unmodified_model(model, method):
    x = ids()
    dense = model(x).logits
    out = apply(model, policy(model, {0: 1.0, 1: 1.0, 3: 1.0}, method))(x)
    assert torch.equal(out.logits, dense)
    assert torch.equal(out.positions, torch.arange(40).expand(3, 40))
    assert torch.equal(out.sizes, torch.ones(3, 40))


def test_apply_leaves_the_model_unchanged(model):
    x = ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = model(x).logits
    reduced = apply(model, policy(model, {1: 0.5, 2: 0.6}, importance_source="ssm_output"))
    reduced(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert torch.equal(model(x).logits, dense)
    assert reduced.model is model


@pytest.mark.parametrize("method", METHODS)
def test_removal_counts_per_layer(model, method):
    x = ids(n=50)
    out = apply(model, policy(model, {0: 0.8, 2: 0.55}, method))(x, protect_last=6)
    n1 = 50 - removal_count(44, 0.8)  # 50 - 9 = 41
    n2 = n1 - removal_count(n1 - 6, 0.55)
    assert out.tokens_per_layer[:, 0].tolist() == [50, n1, n1, n2]
    assert out.logits.shape == (3, n2, VOCAB)
    assert out.lengths.tolist() == [n2] * 3
    if method == "evit":
        assert torch.equal(out.sizes, torch.ones_like(out.sizes))
    else:  # residual merges conserve the original token count
        assert out.sizes.sum(1).tolist() == [50.0] * 3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 5, 17])
def test_protected_rows_are_the_last_positions(model, method, k):
    x = ids(n=40)
    out = apply(model, policy(model, {0: 0.5, 1: 0.5, 2: 0.5}, method))(x, protect_last=k)
    assert out.logits.shape[1] < 40
    assert torch.equal(out.positions[:, -k:], torch.arange(40 - k, 40).expand(3, k))
    assert bool((out.positions[:, :-1] < out.positions[:, 1:]).all())  # survivors keep their order


def test_everything_protected_is_dense(model):
    x = ids(n=30)
    out = apply(model, policy(model, {0: 0.5, 2: 0.5}))(x, protect_last=30)
    assert torch.equal(out.logits, model(x).logits)


@pytest.mark.parametrize("method", METHODS)
def test_rows_score_their_own_positions(model, method):
    # Reducing after the last block only gathers rows: every surviving row that received no merge
    # must carry exactly the dense logits of the position it claims. Shifted rows would fail.
    x = ids(n=40)
    dense = model(x).logits
    last = model.config.num_hidden_layers - 1
    out = apply(model, policy(model, {last: 0.5}, method))(x, protect_last=7)
    assert out.logits.shape[1] == 40 - removal_count(33, 0.5)
    untouched = out.sizes == 1
    assert untouched.sum() > 3 * 7  # more than the protected rows are plain survivors
    for b in range(3):
        rows = untouched[b].nonzero().flatten()
        assert torch.equal(out.logits[b, rows], dense[b, out.positions[b, rows]])
    assert torch.equal(out.logits[:, -7:], dense[:, -7:])


@pytest.mark.parametrize("method", METHODS)
def test_batch_invariance_with_right_padding(model, method):
    lengths = [40, 23, 31, 9]
    x = ids(batch=4, n=40, seed=3)
    mask = (torch.arange(40)[None] < torch.tensor(lengths)[:, None]).long()
    x = x.masked_fill(mask == 0, 0)
    protect = torch.tensor([3, 1, 5, 2])
    reduced = apply(model, policy(model, {0: 0.7, 1: 0.6, 3: 0.5}, method))
    batch = reduced(x, protect_last=protect, attention_mask=mask)
    for b, n in enumerate(lengths):
        alone = reduced(x[b : b + 1, :n], protect_last=int(protect[b]))
        m = int(alone.lengths[0])
        assert int(batch.lengths[b]) == m
        assert torch.equal(batch.positions[b, :m], alone.positions[0])
        assert bool((batch.positions[b, m:] == -1).all())
        torch.testing.assert_close(batch.logits[b, :m], alone.logits[0], rtol=1e-4, atol=1e-4)


def test_scores_do_not_depend_on_padding_content(model):
    x = ids(batch=2, n=30)
    mask = torch.ones_like(x)
    mask[1, 20:] = 0
    reduced = apply(model, policy(model, {0: 0.6, 2: 0.6}))
    a = reduced(x, protect_last=2, attention_mask=mask)
    x2 = x.clone()
    x2[1, 20:] = 5
    b = reduced(x2, protect_last=2, attention_mask=mask)
    assert torch.equal(a.logits[1, : int(a.lengths[1])], b.logits[1, : int(b.lengths[1])])


def test_causal_in_the_protected_suffix(model):
    # The prefix is matched as a whole, but protected rows are never in the matching: changing the
    # last token changes no earlier row.
    x = ids(n=30)
    reduced = apply(model, policy(model, {0: 0.6, 1: 0.6}))
    a = reduced(x, protect_last=4)
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % VOCAB
    b = reduced(x2, protect_last=4)
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.logits[:, :-1], b.logits[:, :-1])
    assert not torch.equal(a.logits[:, -1], b.logits[:, -1])


@pytest.mark.parametrize("source", ["ssm_output", "mixer_output", "scan_output"])
@pytest.mark.parametrize("metric", ["clip", "l1", "l2", "signed"])
def test_every_importance_source_and_metric_reduces(model, source, metric):
    if source == "scan_output" and model.config.model_type == "mamba":
        with pytest.raises(PolicyError, match="importance_source"):
            policy(model, {1: 0.6}, importance_source=source)
        return
    x = ids(n=30)
    dense = model(x).logits
    out = apply(model, policy(model, {1: 0.6}, importance=metric, importance_source=source))(x)
    assert out.logits.shape[1] == 30 - removal_count(29, 0.6)
    assert not torch.allclose(out.logits[:, -1], dense[:, -1])


def test_importance_sources_differ_for_mamba2():
    model = tiny_model("mamba2")
    x = ids(n=30)
    kept = {
        source: apply(model, policy(model, {1: 0.6}, importance_source=source))(x).positions
        for source in ("ssm_output", "scan_output", "mixer_output")
    }
    assert not torch.equal(kept["ssm_output"], kept["scan_output"])
    assert not torch.equal(kept["ssm_output"], kept["mixer_output"])


def test_bad_batch_layout(model):
    reduced = apply(model, policy(model, {1: 0.6}))
    x = ids(batch=2, n=10)
    left = torch.ones_like(x)
    left[0, :3] = 0
    with pytest.raises(ValueError, match="right padding"):
        reduced(x, attention_mask=left)
    with pytest.raises(ValueError, match="protect_last"):
        reduced(x, protect_last=11)
    with pytest.raises(TypeError, match="MambaForCausalLM"):
        apply(torch.nn.Linear(2, 2), policy(model, {1: 0.6}))


def test_reduced_prefill_then_cached_decoding(model):
    # keep 1.0: prefill through the reduced loop + decoding with the cache == transformers' greedy generate
    from transformers import DynamicCache

    x = ids(batch=2, n=24)
    expected = model.generate(x, max_new_tokens=5, do_sample=False, min_new_tokens=5)[:, 24:]
    for keep, check in ((1.0, True), (0.6, False)):
        cache = DynamicCache(config=model.config)
        out = apply(model, policy(model, {1: keep, 2: keep}))(x, cache=cache, last_logits_only=True)
        assert out.logits.shape == (2, 1, VOCAB) and out.positions.tolist() == [[23], [23]]
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(4):
            step = model(input_ids=tokens[-1][:, None], cache=cache, use_cache=True)
            tokens.append(step.logits[:, -1].argmax(-1))
        if check:
            assert torch.equal(torch.stack(tokens, 1), expected)
    with pytest.raises(ValueError, match="unpadded"):
        mask = torch.ones_like(x)
        mask[0, -3:] = 0
        apply(model, policy(model, {1: 0.6}))(x, attention_mask=mask, cache=DynamicCache(config=model.config))


@pytest.mark.parametrize("length", [37, 300])
def test_mamba1_padded_scan_matches_the_transformers_mixer(length):
    # utrc.mamba1_scan pads the scan to the kernel's chunk (37 -> 128, 300 -> 512) with zero-size
    # steps. Here transformers' PyTorch scan stands in for mamba_ssm's kernel (same signature):
    # outputs at real positions and the cached conv / recurrent states must be the transformers
    # mixer's, so decoding after a reduced prefill continues from the exact state.
    from transformers import DynamicCache
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    from utrc.mamba1_scan import mamba1_mixer_forward, scan_chunk

    assert (scan_chunk(37), scan_chunk(300), scan_chunk(1990), scan_chunk(2048)) == (128, 512, 2048, 2048)
    model = tiny_model("mamba")
    mixer = model.backbone.layers[1].mixer
    h = torch.randn(2, length, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    expected_cache, cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    captured = []
    handle = mixer.out_proj.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    with torch.no_grad():
        expected = mixer(h, expected_cache)
        handle.remove()
        out, ssm_output = mamba1_mixer_forward(mixer, h, cache, selective_scan=mamba_selective_scan)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ssm_output, captured[0], rtol=1e-5, atol=1e-6)  # the importance source
    for kind in ("conv_states", "recurrent_states"):
        torch.testing.assert_close(getattr(cache.layers[1], kind)[0], getattr(expected_cache.layers[1], kind)[0],
                                   rtol=1e-5, atol=1e-6)


def test_plans_size_their_tensors_from_host_counts(model):
    # ReducedModel passes every row's counts from the host (RowCounts), so no layer reads the GPU;
    # with ragged rows they must agree with the device-side counts of the same formula.
    from utrc.reduction import RowCounts

    lengths, protect = torch.tensor([50, 31, 7]), torch.tensor([6, 1, 7])
    counts = RowCounts.of(lengths, protect, 0.55)
    assert counts.prefix == (44, 30, 0)
    assert counts.removed == tuple(removal_count(p, 0.55) for p in (44, 30, 0)) == (19, 13, 0)
    assert counts.R == 19 and counts.new_lengths == (31, 18, 7)
    assert counts.merges("hybrid", 1.0) is False and counts.merges("merge", 1.0) is True
    assert RowCounts.of([4], [4], 0.5).merges("merge", 0.5) is False


def test_the_gpu_mamba1_path_reduces_like_the_transformers_mixer(monkeypatch):
    # CI has no GPU: route the reduced loop through utrc.mamba1_scan (as on a GPU with mamba_ssm),
    # with transformers' PyTorch scan in place of the kernel; plan and logits must not change.
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    import utrc.transformers_blocks
    from utrc.mamba1_scan import mamba1_mixer_forward

    model = tiny_model("mamba")
    x = ids(n=40)
    p = policy(model, {1: 0.6, 2: 0.7}, importance_source="ssm_output")
    expected = apply(model, p)(x, protect_last=2)
    monkeypatch.setattr(utrc.transformers_blocks, "_uses_mamba1_scan", lambda mixer, h: True)
    monkeypatch.setattr(utrc.transformers_blocks, "mamba1_mixer_forward",
                        lambda mixer, h, cache=None: mamba1_mixer_forward(mixer, h, cache, mamba_selective_scan))
    out = apply(model, p)(x, protect_last=2)
    assert torch.equal(out.positions, expected.positions) and torch.equal(out.sizes, expected.sizes)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
