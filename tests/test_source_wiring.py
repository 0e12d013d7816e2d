"""Importance is read from the tensor the policy names (docs/method.md §1 step 2), checked from outside.

A dense pass of the unmodified transformers model records each candidate source with forward hooks:
  ssm_output    the input of the mixer's `out_proj` (Mamba-2: after the gated RMSNorm)
  scan_output   Mamba-2 only: the first input of the mixer's gated `norm` (the scan output before it)
  mixer_output  the output of `out_proj`, i.e. of the mixer
The test then works out, in plain Python, which tokens the reduction layer must remove for each source
and compares with the positions `utrc.apply(model, policy)` keeps. Only the first reduction layer is
used, so everything before it is the dense model and the recorded tensors are exactly what the
reduced model sees there. Swapping two sources in the library makes the kept positions differ.
"""

import math

import pytest
import torch
from conftest import VOCAB, tiny_model

from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply

LAYER = 1  # the one reduction layer (of the tiny models' 4 blocks)
KEEP = 0.75
N = 24
PROTECT = torch.tensor([2, 3])  # per row: the last 2 / 3 tokens are protected
# reducible prefix P = 22 / 21; removed r = min(floor(P/2), P - ceil(0.75·P)):
#   row 0: min(11, 22 - ceil(16.5) = 22 - 17) = 5;  row 1: min(10, 21 - ceil(15.75) = 21 - 16) = 5
REMOVED = [5, 5]
SOURCES = {"mamba2": ("ssm_output", "scan_output", "mixer_output"), "mamba": ("ssm_output", "mixer_output")}


def input_ids():
    return torch.randint(3, VOCAB, (2, N), generator=torch.Generator().manual_seed(7))


def recorded_sources(model, x):
    """{source: [B, N, C] float32} at block LAYER of a dense pass, read with forward hooks."""
    mixer = model.backbone.layers[LAYER].mixer
    seen = {}
    hooks = [
        mixer.out_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("ssm_output", args[0])),
        mixer.out_proj.register_forward_hook(lambda m, args, out: seen.__setitem__("mixer_output", out)),
    ]
    if hasattr(mixer, "norm"):  # Mamba-2's gated RMSNorm: norm(scan output, gate)
        hooks.append(mixer.norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("scan_output", args[0])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.detach().float() for k, v in seen.items()}


def clip_scores(y):
    """The paper's default score: mean over channels of max(0, y)."""
    return [[sum(max(0.0, c) for c in token) / len(token) for token in row] for row in y.tolist()]


def evit_removed(scores, prefix, r):
    """The r lowest-score tokens of the prefix (ties: smaller position)."""
    return set(sorted(range(prefix), key=lambda i: (scores[i], i))[:r])


def utrc_removed(scores, feats, prefix, r):
    """UTRC steps 3-5 written out: classify by (score, position), match A to B by cosine similarity
    (ties: smaller position), remove the r A tokens with the most similar partner (ties: lower score,
    then smaller position)."""
    order = sorted(range(prefix), key=lambda i: (scores[i], i))
    a_set, b_set = order[: prefix // 2], sorted(order[prefix // 2 :])

    def cos(i, j):
        dot = sum(p * q for p, q in zip(feats[i], feats[j], strict=True))
        return dot / (math.sqrt(sum(p * p for p in feats[i])) * math.sqrt(sum(q * q for q in feats[j])))

    best = {a: max(cos(a, b) for b in b_set) for a in a_set}
    return set(sorted(a_set, key=lambda a: (-best[a], scores[a], a))[:r])


def kept_positions(removed):
    return [i for i in range(N) if i not in removed]


def reduced_positions(model, method, source):
    spec = ModelSpec.of(ModelShape.of(model), name="tiny")
    policy = Policy(method=method, model=spec, layers={LAYER: LayerSpec(KEEP)}, importance_source=source)
    out = apply(model, policy)(input_ids(), protect_last=PROTECT)
    return out.positions.tolist()


@pytest.mark.parametrize("method", ["evit", "utrc"])
@pytest.mark.parametrize("architecture", ["mamba2", "mamba"])
def test_importance_is_read_from_the_named_source(architecture, method):
    model = tiny_model(architecture)
    x = input_ids()
    sources = recorded_sources(model, x)
    assert set(sources) == set(SOURCES[architecture])
    expected = {}
    for source in SOURCES[architecture]:
        y = sources[source]  # [B, N, C]
        scores = clip_scores(y)
        rows = []
        for b in range(2):
            prefix = N - int(PROTECT[b])
            if method == "evit":
                removed = evit_removed(scores[b], prefix, REMOVED[b])
            else:
                removed = utrc_removed(scores[b], y[b].tolist(), prefix, REMOVED[b])
            assert len(removed) == REMOVED[b]
            rows.append(kept_positions(removed))
        expected[source] = rows
    # the sources must lead to different reductions, or this test could not tell them apart
    names = SOURCES[architecture]
    assert len({str(expected[s]) for s in names}) == len(names), expected

    for source in names:
        assert reduced_positions(model, method, source) == expected[source], source
