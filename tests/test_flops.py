"""The analytic FLOPs model (docs/method.md §5): linear terms against torch's FlopCounterMode, the paper's
token-fraction proxy, token schedules, and the keep-ratio solver."""

import subprocess
import sys

import pytest
import torch
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode

from utrc.flops import (
    block_flops,
    estimate_flops,
    feature_width,
    head_flops,
    linear_flops,
    reduction_flops,
)
from utrc.policy import LayerSpec, ModelSpec, Policy, PolicyError, paper_layers
from utrc.shapes import PAPER_SHAPES, ModelShape

MAMBA2_27B = PAPER_SHAPES["state-spaces/mamba2-2.7b"]
MATMULS = {"mm", "addmm", "bmm", "matmul"}


def _matmul_flops(counts, suffix, ops=MATMULS):
    """Matmul FLOPs that FlopCounterMode attributed to the one module whose name ends in `suffix`."""
    keys = [k for k in counts if k.endswith(suffix)]
    assert len(keys) == 1, (suffix, keys)
    return sum(v for op, v in counts[keys[0]].items() if str(op).rsplit(".", 1)[-1] in ops)


@pytest.mark.parametrize("architecture", ["mamba", "mamba2"])
def test_linear_terms_match_flop_counter(architecture):
    model = tiny_model(architecture)
    shape = ModelShape.of(model)
    batch, L = 2, 13  # 13 is not a multiple of the tiny Mamba-2 chunk (8)
    ids = torch.randint(3, shape.vocab_size, (batch, L))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    counts = counter.get_flop_counts()

    d, e, n = shape.d_model, shape.d_inner, shape.d_state
    in_proj = _matmul_flops(counts, "layers.0.mixer.in_proj")
    out_proj = _matmul_flops(counts, "layers.0.mixer.out_proj")
    lm_head = _matmul_flops(counts, "lm_head")
    mixer_mm = _matmul_flops(counts, "layers.0.mixer", {"mm", "addmm"})
    if architecture == "mamba":
        R = shape.dt_rank
        x_proj = _matmul_flops(counts, "layers.0.mixer.x_proj")
        # transformers runs dt_proj as `dt_proj.weight @ dt` inside the mixer, not through the module
        dt_proj = mixer_mm - in_proj - x_proj - out_proj
        assert in_proj == batch * L * 2 * d * 2 * e
        assert x_proj == batch * L * 2 * e * (R + 2 * n)
        assert dt_proj == batch * L * 2 * R * e
        counted = in_proj + x_proj + dt_proj + out_proj
        # the recurrent scan's readout C·h is the mixer's only bmm: 2·e·n per token
        assert _matmul_flops(counts, "layers.0.mixer", {"bmm"}) == batch * L * 2 * e * n
    else:
        assert mixer_mm == in_proj + out_proj  # no other Linear-like matmul in the Mamba-2 mixer
        counted = in_proj + out_proj
    assert out_proj == batch * L * 2 * e * d
    assert counted == batch * linear_flops(shape, L)
    assert lm_head == batch * (head_flops(shape, L) - L * (4 * d + 2))  # head = final RMSNorm + lm_head
    assert lm_head == batch * L * 2 * d * shape.vocab_size
    # every block costs more than its matmuls
    assert block_flops(shape, L) > linear_flops(shape, L)


def test_block_flops_structure():
    m1 = PAPER_SHAPES["state-spaces/mamba-2.8b"]
    assert block_flops(m1, 2048) == 2 * block_flops(m1, 1024)  # Mamba-1: linear in L
    Q = MAMBA2_27B.chunk_size
    assert block_flops(MAMBA2_27B, 8 * Q) == 8 * block_flops(MAMBA2_27B, Q)  # SSD: whole chunks add up
    # within a chunk the intra-chunk matmuls grow with the chunk length: more than linear
    assert block_flops(MAMBA2_27B, Q) > 2 * block_flops(MAMBA2_27B, Q // 2)
    assert block_flops(MAMBA2_27B, 0) == 0


def test_paper_proxy_numbers():
    spec = ModelSpec.of(MAMBA2_27B)
    est = estimate_flops(MAMBA2_27B, Policy.paper(spec, 0.905), seq_len=2048, protect_last=1)
    assert round(est["token_fraction_proxy"], 3) == 0.298
    assert len(est["tokens_per_layer"]) == 64 and est["seq_len"] == 2048 and est["protect_last"] == 1
    for keep, target in ((0.9729, 0.10), (0.9415, 0.20), (0.9043, 0.30)):
        proxy = estimate_flops(MAMBA2_27B, Policy.paper(spec, keep))["token_fraction_proxy"]
        assert abs(proxy - target) < 0.005, (keep, proxy)


@pytest.mark.parametrize("name", ["state-spaces/mamba2-2.7b", "state-spaces/mamba-1.4b", "state-spaces/mamba-130m"])
def test_reduction_zero_and_monotone(name):
    shape = PAPER_SHAPES[name]
    spec = ModelSpec.of(shape)
    for policy in (Policy.dense(spec), Policy.paper(spec, 1.0)):
        est = estimate_flops(shape, policy)
        assert est["reduction"] == 0.0 and est["token_fraction_proxy"] == 0.0
        assert est["reduced"] == est["dense"]
    previous = {"reduction": 0.0, "token_fraction_proxy": 0.0}
    for keep in (0.99, 0.97, 0.94, 0.9, 0.8, 0.7, 0.6, 0.5):
        est = estimate_flops(shape, Policy.paper(spec, keep))
        for metric, before in previous.items():
            assert est[metric] > before, (keep, metric)
            previous[metric] = est[metric]
    # keep <= 0.5 already removes floor(P/2): nothing more to gain
    assert estimate_flops(shape, Policy.paper(spec, 0.1))["reduction"] == previous["reduction"]


def test_token_schedule_small_case():
    shape = ModelShape("mamba2", 4, 32, 64, 64, 8, 4, 0, 16, 1, 8)
    policy = Policy(method="utrc", model=ModelSpec.of(shape), layers={1: LayerSpec(0.5), 2: LayerSpec(0.8)})
    # after block 1: P = 20 - 3 = 17, r = min(8, 17 - ceil(8.5)) = 8 -> 12
    # after block 2: P = 12 - 3 = 9,  r = min(4, 9 - ceil(7.2)) = 1 -> 11
    assert estimate_flops(shape, policy, 20, 3)["tokens_per_layer"] == [20, 20, 12, 11]
    assert estimate_flops(shape, Policy.dense(ModelSpec.of(shape)), 20, 3)["tokens_per_layer"] == [20] * 4
    assert estimate_flops(shape, policy, 3, 3)["tokens_per_layer"] == [3] * 4  # everything protected

    est = estimate_flops(shape, policy, seq_len=20, protect_last=3)
    width = feature_width(shape, policy)
    assert width == shape.d_inner
    expected = (
        sum(block_flops(shape, n) for n in (20, 20, 12, 11))
        + reduction_flops(shape, "utrc", 17, 8, width)
        + reduction_flops(shape, "utrc", 9, 1, width)
        + head_flops(shape, 11)
    )
    assert est["reduced"] == pytest.approx(expected, rel=1e-12)
    assert est["dense"] == pytest.approx(4 * block_flops(shape, 20) + head_flops(shape, 20), rel=1e-12)
    assert est["token_fraction_proxy"] == pytest.approx(1 - (20 + 20 + 12 + 11) / 80)
    assert est["tokens_per_layer"] == [20, 20, 12, 11]


def test_reduction_step_costs():
    s = MAMBA2_27B
    C, d = s.d_inner, s.d_model
    assert reduction_flops(s, "dense", 100, 10, C) == 0
    assert reduction_flops(s, "utrc", 100, 0, C) == 0  # a step that removes nothing is skipped
    assert reduction_flops(s, "evit", 100, 10, C) == 2 * C * 100
    # P = 101: utrc |A|, |B| = 50, 51; tome (even/odd) 51, 50: the same matrix, tome has no scores
    utrc, tome = reduction_flops(s, "utrc", 101, 10, C), reduction_flops(s, "tome", 101, 10, C)
    assert utrc - tome == 2 * C * 101
    assert tome == (3 * C + 1) * 101 + 2 * 50 * 51 * C + 50 * 51 + 2 * 10 * (4 * d + 1)
    assert feature_width(s, Policy.paper(ModelSpec.of(s), 0.9, importance_source="mixer_output")) == d
    # at the same keep, evit sees the same tokens and pays for scores only
    spec = ModelSpec.of(s)
    evit_layers = {layer: LayerSpec(0.9) for layer in paper_layers(64)}
    evit = estimate_flops(s, Policy(method="evit", model=spec, layers=evit_layers))
    full = estimate_flops(s, Policy.paper(spec, 0.9))
    assert evit["tokens_per_layer"] == full["tokens_per_layer"] and evit["reduced"] < full["reduced"]


def test_estimate_from_model_and_fit_check():
    model = tiny_model("mamba2")
    shape = ModelShape.of(model)
    policy = Policy.paper(ModelSpec.of(shape), 0.7)
    assert estimate_flops(model, policy, seq_len=64) == estimate_flops(shape, policy, seq_len=64)
    with pytest.raises(PolicyError):
        estimate_flops(MAMBA2_27B, policy)


def test_cli_prints_paper_proxy():
    out = subprocess.run(
        [sys.executable, "-m", "utrc.flops", "--model", "state-spaces/mamba2-2.7b"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "mamba2-2.7b" in out and "mamba-2.8b" not in out
    line = next(row for row in out.splitlines() if "0.905" in row)
    assert "proxy 0.298" in line


# --- per-block FLOPs of the two paper shapes, derived by hand ----------------------------------------
# Conventions (utrc/flops.py's docstring, docs/method.md §5): a multiply-add is 2 FLOPs, every other
# elementwise op 1 FLOP per output element (exp, softplus, silu and rsqrt included), RMSNorm(w) per
# token = 4w + 2. Every number below is worked out from the published configs, not from utrc.flops.


def test_paper_shapes_are_the_published_configs():
    assert PAPER_SHAPES["state-spaces/mamba2-2.7b"] == ModelShape(
        "mamba2", n_layer=64, d_model=2560, vocab_size=50288, d_inner=5120, d_state=128, d_conv=4,
        headdim=64, ngroups=1, chunk_size=256,
    )
    assert PAPER_SHAPES["state-spaces/mamba-2.8b"] == ModelShape(
        "mamba", n_layer=64, d_model=2560, vocab_size=50280, d_inner=5120, d_state=16, d_conv=4, dt_rank=160,
    )


# Mamba-2.8B: d = 2560, e = 2·2560 = 5120, n = 16, R = 160, K = 4. Per token:
MAMBA1_28B_PER_TOKEN = {
    "pre-norm RMSNorm(d)": 4 * 2560 + 2,  # 10_242
    "residual add": 2560,
    "in_proj d -> 2e": 2 * 2560 * 10240,  # 52_428_800
    "conv1d K MACs + bias + silu": 5120 * (2 * 4 + 1 + 1),  # 51_200
    "x_proj e -> R + 2n": 2 * 5120 * (160 + 32),  # 1_966_080
    "dt_proj R -> e": 2 * 160 * 5120,  # 1_638_400
    "dt bias + softplus": 2 * 5120,  # 10_240
    "exp(dt·A): multiply, exp": 2 * 5120 * 16,  # 163_840
    "dt·B·x: two multiplies": 2 * 5120 * 16,  # 163_840
    "h = dA·h + dBx: multiply, add": 2 * 5120 * 16,  # 163_840
    "y = C·h: multiply-add over n": 2 * 5120 * 16,  # 163_840
    "D skip: multiply, add": 2 * 5120,  # 10_240
    "gate y·silu(z): silu, multiply": 2 * 5120,  # 10_240
    "out_proj e -> d": 2 * 5120 * 2560,  # 26_214_400
}
MAMBA1_28B_BLOCK_PER_TOKEN = 82_997_762

# Mamba-2-2.7B: d = 2560, e = 5120, n = 128, P = 64, H = 5120/64 = 80, G = 1, K = 4, chunk Q = 256.
# Per token (everything that does not grow with the chunk length):
MAMBA2_27B_PER_TOKEN = {
    "pre-norm RMSNorm(d)": 4 * 2560 + 2,  # 10_242
    "residual add": 2560,
    "in_proj d -> 2e + 2Gn + H": 2 * 2560 * (10240 + 256 + 80),  # 54_149_120
    "conv1d over e + 2Gn = 5376 channels": 5376 * (2 * 4 + 1 + 1),  # 53_760
    "dt_bias + softplus": 2 * 80,  # 160
    "x·dt (e), A·dt (H), cumsum (H)": 5120 + 80 + 80,  # 5_280
    "chunk state: decay exp(sum - cumsum)": 2 * 80,  # 160
    "chunk state: B·decay per head": 80 * 128,  # 10_240
    "chunk state: Bᵀ·X per head": 2 * 5120 * 128,  # 1_310_720
    "readout C·h per head": 2 * 5120 * 128,  # 1_310_720
    "readout ·exp(cumsum)": 80,
    "readout + intra-chunk output": 2 * 5120,  # 10_240 (scale by the head's decay, add)
    "D skip": 2 * 5120,  # 10_240
    "gate y·silu(z)": 2 * 5120,  # 10_240
    "gated RMSNorm(e), one group": 4 * 5120 + 2,  # 20_482
    "out_proj e -> d": 2 * 5120 * 2560,  # 26_214_400
}
MAMBA2_27B_BLOCK_PER_TOKEN = 83_118_644
# Per chunk of q tokens, the q×q intra-chunk products, per q²:
MAMBA2_27B_PER_Q2 = {
    "decay mask exp(segsum): difference, exp, per head": 2 * 80,  # 160
    "C·Bᵀ, one group, over n": 2 * 1 * 128,  # 256
    "(C·Bᵀ) ∘ mask, per head": 80,
    "(C·Bᵀ ∘ mask)·X, per head over P, all heads": 2 * 5120,  # 10_240
}
MAMBA2_27B_INTRA_PER_Q2 = 10_736
# Per chunk boundary, passing the state on: h_c = exp(ΣA·dt)·h_{c-1} + s_c
MAMBA2_27B_PER_CHUNK = 2 * 5120 * 128 + 80  # 1_310_800


def test_hand_derived_per_token_sums():
    # the tables above add up to the totals written down (guards the test's own arithmetic)
    assert sum(MAMBA1_28B_PER_TOKEN.values()) == MAMBA1_28B_BLOCK_PER_TOKEN
    assert sum(MAMBA2_27B_PER_TOKEN.values()) == MAMBA2_27B_BLOCK_PER_TOKEN
    assert sum(MAMBA2_27B_PER_Q2.values()) == MAMBA2_27B_INTRA_PER_Q2


@pytest.mark.parametrize("L", [1, 7, 2048])
def test_mamba1_block_flops_by_hand(L):
    assert block_flops(PAPER_SHAPES["state-spaces/mamba-2.8b"], L) == L * MAMBA1_28B_BLOCK_PER_TOKEN


@pytest.mark.parametrize(
    "L, chunk_lengths",
    [
        (1, [1]),
        (100, [100]),  # shorter than one chunk: one chunk of 100
        (256, [256]),
        (300, [256, 44]),  # a full chunk and a short last one
        (2048, [256] * 8),
    ],
)
def test_mamba2_block_flops_by_hand(L, chunk_lengths):
    expected = (
        L * MAMBA2_27B_BLOCK_PER_TOKEN
        + sum(q * q for q in chunk_lengths) * MAMBA2_27B_INTRA_PER_Q2
        + len(chunk_lengths) * MAMBA2_27B_PER_CHUNK
    )
    assert block_flops(MAMBA2_27B, L) == expected


def test_paper_shapes_dense_prefill_by_hand():
    # one row of 2048 tokens: 64 blocks + final RMSNorm(d) + lm_head on every row
    #   Mamba-2-2.7B block: 2048·83_118_644 + 8·256²·10_736 + 8·1_310_800
    #                     = 170_226_982_912 + 5_628_755_968 + 10_486_400 = 175_866_225_280
    #   head per row: 4·2560 + 2 + 2·2560·50_288 = 10_242 + 257_474_560 = 257_484_802
    m2 = estimate_flops(MAMBA2_27B, Policy.dense(ModelSpec.of(MAMBA2_27B)), seq_len=2048)
    assert m2["dense"] == 64 * 175_866_225_280 + 2048 * 257_484_802
    #   Mamba-2.8B block: 2048·82_997_762 = 169_979_416_576
    #   head per row: 10_242 + 2·2560·50_280 = 10_242 + 257_433_600 = 257_443_842
    m1_shape = PAPER_SHAPES["state-spaces/mamba-2.8b"]
    m1 = estimate_flops(m1_shape, Policy.dense(ModelSpec.of(m1_shape)), seq_len=2048)
    assert m1["dense"] == 64 * 169_979_416_576 + 2048 * 257_443_842
