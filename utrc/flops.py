"""Analytic FLOPs of a Mamba / Mamba-2 prefill, dense and token-reduced (docs/method.md §5).

In the spirit of nanoGPT's `estimate_mfu`: every term is written out from the ops that run
(transformers' `MambaMixer` / `Mamba2Mixer`, which follow the mamba_ssm reference), per token of
ONE batch row, so the cost of a block is a function of the number of tokens it processes and a
reduced model is costed from its per-block token counts.

Conventions
-----------
- A multiply-add is 2 FLOPs: a matmul [m, k] @ [k, n] costs 2·m·k·n (what
  `torch.utils.flop_counter` counts for mm / addmm / bmm).
- Every elementwise op costs 1 FLOP per output element: add, multiply, divide, bias add, and also
  each nonlinearity and transcendental — `exp`, `softplus`, `silu` (x·σ(x)), `rsqrt` — counted as a
  single op (1 FLOP per element; they run in the same fused kernels and are a rounding error
  next to the matmuls). A reduction over k elements (sum, mean, max, argmax) costs k.
- Free (0 FLOPs): the embedding lookup, reshapes, splits, gathers, padding, casts, sorting /
  top-k of per-token scalars and the integer bookkeeping of a reduction plan.
- Biases: the state-spaces checkpoints have no bias in in_proj / out_proj (`bias=False`), so
  none is counted there; conv1d and dt_proj (Mamba-1) / dt_bias (Mamba-2) have one.
- Every count is an integer (returned as a float, exact below 2**53), so a policy that removes
  nothing gives reduction 0 exactly.
- `RMSNorm(w)` per token = w (square) + w (mean) + 2 (+eps, rsqrt) + w (scale) + w (weight)
  = 4w + 2.

Variables: d = d_model, e = d_inner, n = d_state, K = d_conv, R = dt_rank (Mamba-1),
H = nheads, P = headdim (e = H·P), G = ngroups, V = vocab_size, L = tokens in the block.

Block = pre-norm RMSNorm(d) + mixer + residual add (d).

Mamba-1 mixer, per token:
    in_proj   d -> 2e                          4·d·e
    conv1d    depthwise causal, kernel K       e·(2K + 1 + 1)     (MACs, bias, silu)
    x_proj    e -> R + 2n                      2·e·(R + 2n)
    dt_proj   R -> e (`weight @ dt` matmul)    2·R·e
              + bias + softplus                2·e
    scan      exp(Δ·A)                         2·e·n              (Δ·A, exp)
              Δ·B·x                            2·e·n
              h = exp(ΔA)·h + ΔBx              2·e·n
              y = C·h (readout)                2·e·n
              + D·x skip                       2·e
    gate      y·silu(z)                        2·e
    out_proj  e -> d                           2·e·d
  block(L) = L·[ (4d+2) + d + 6de + 2e(R+2n) + 2Re + e(2K+2) + 8en + 6e ]

Mamba-2 mixer (SSD, mamba_ssm's chunked algorithm), per token unless stated:
    in_proj   d -> 2e + 2Gn + H                2·d·(2e + 2Gn + H)
    conv1d    over c = e + 2Gn channels        c·(2K + 2)
    dt        + dt_bias, softplus              2·H
    discretise  x·Δ (e), A·Δ (H), cumsum (H)   e + 2H
  within a chunk of q tokens (q = Q = min(chunk_size, L) except a shorter last chunk), per chunk:
    decay mask  L = exp(segsum(AΔ))            2·H·q²             (difference, exp)
    C·Bᵀ per group                             2·G·n·q²
    (C·Bᵀ ∘ L)                                 H·q²
    (C·Bᵀ ∘ L)·X per head                      2·H·P·q² = 2·e·q²
  so a full chunk costs, per token, (3H + 2Gn + 2e)·Q: the only terms that grow with Q.
    chunk state   decay exp(ΣAΔ - cumsum)      2·H
                  B·decay                      H·n
                  Bᵀ·X per head                2·e·n
    state passing (per chunk boundary, not per token): h_c = exp(ΣAΔ)·h_{c-1} + s_c: 2·e·n + H
    readout       C·h per head                 2·e·n
                  · exp(cumsum), + Y_diag      H + 2·e
    D skip                                     2·e
    gated norm    y·silu(z)                    2·e
                  group RMSNorm(e)             4·e + 2·G
    out_proj  e -> d                           2·e·d
  block(L) = L·[ (4d+2) + d + 2d(2e+2Gn+H) + 2ed + (e+2Gn)(2K+2) + 4en + Hn + 11e + 7H + 2G ]
             + Σ_chunks q²·(3H + 2Gn + 2e) + n_chunks·(2en + H)
  (the reference PyTorch path computes C·Bᵀ per head, pads the last chunk and passes states
  with an O(n_chunks²) einsum; the count here is the algorithm, as the fused kernels run it.)

Head, per output row: final RMSNorm (4d + 2) + lm_head 2·d·V. The reduced model returns logits
for every surviving row, so the head is charged for the rows left after the last reduction.

Reduction step at a layer (one row, reducible prefix of Pp tokens, r removed, feature width C =
d_inner for `ssm_output` / `scan_output`, d_model for `mixer_output`; a step with r = 0 is
skipped by the reduced model and costs 0):
    importance scores                          2·C·Pp             (utrc, evit; tome uses none)
    cosine normalisation (all of A ∪ B)        (3C + 1)·Pp        (square, sum, rsqrt, scale)
    similarity |A|×|B|                         2·|A|·|B|·C
    argmax over B                              |A|·|B|
    merges, both branches (width d)            2 · r · (4d + 1)   (scale source, add into the
        destination, scale destination, divide; +1 for the size). An upper bound: every removed
        token is charged as a merge on both branches with its own destination, though a hybrid or
        prune strategy drops some (free) and sources share destinations.
  utrc: |A| = floor(Pp/2), |B| = Pp - |A|.  tome: A = even positions (ceil(Pp/2)), B = odd.
  evit: scores only.  dense: 0.

`reduction = 1 - reduced / dense`; the paper's proxy is `1 - mean_l(N_l / seq_len)` over blocks.
"""

from __future__ import annotations

import argparse

from .counts import removal_count
from .policy import ModelSpec, Policy, paper_layers
from .shapes import PAPER_SHAPES, ModelShape


def _rmsnorm(width: int, groups: int = 1) -> int:
    """Per token: square, mean, (+eps, rsqrt) per group, scale, weight."""
    return 4 * width + 2 * groups


# --- one block ----------------------------------------------------------------------------------


def linear_flops(shape: ModelShape, seq_len: int) -> float:
    """The nn.Linear matmuls of one block for one row of `seq_len` tokens (no biases).

    Mamba-1: in_proj, x_proj, dt_proj (transformers runs it as `dt_proj.weight @ dt`), out_proj.
    Mamba-2: in_proj, out_proj.
    """
    d, e, n, L = shape.d_model, shape.d_inner, shape.d_state, seq_len
    if shape.architecture == "mamba":
        R = shape.dt_rank
        return float(L * (2 * d * 2 * e + 2 * e * (R + 2 * n) + 2 * R * e + 2 * e * d))
    G, H = shape.ngroups, shape.nheads
    return float(L * (2 * d * (2 * e + 2 * G * n + H) + 2 * e * d))


def _chunks(seq_len: int, chunk_size: int) -> tuple[int, int]:
    """(number of chunks, Σ q² over chunk lengths q) for a sequence cut into chunks."""
    full, rem = divmod(seq_len, chunk_size)
    return full + (rem > 0), full * chunk_size**2 + rem**2


def block_flops(shape: ModelShape, seq_len: int) -> float:
    """FLOPs of one block (pre-norm, mixer, residual add) on one row of `seq_len` tokens."""
    if seq_len <= 0:
        return 0.0
    d, e, n, K, L = shape.d_model, shape.d_inner, shape.d_state, shape.d_conv, seq_len
    norm_and_residual = L * (_rmsnorm(d) + d)
    if shape.architecture == "mamba":
        per_token = (
            e * (2 * K + 2)  # conv1d MACs, bias, silu
            + 2 * e  # dt bias, softplus
            + 8 * e * n  # exp(ΔA), ΔB·x, state update, C·h
            + 2 * e  # D skip
            + 2 * e  # y·silu(z)
        )
        return norm_and_residual + linear_flops(shape, L) + L * per_token
    G, H = shape.ngroups, shape.nheads
    conv_channels = e + 2 * G * n
    per_token = (
        conv_channels * (2 * K + 2)  # conv1d MACs, bias, silu
        + 2 * H  # dt_bias, softplus
        + e + 2 * H  # x·Δ, A·Δ, cumsum
        + 2 * H + H * n + 2 * e * n  # chunk states: decay, B·decay, Bᵀ·X
        + 2 * e * n + H + 2 * e  # C·h readout, ·exp(cumsum), + Y_diag
        + 2 * e  # D skip
        + 2 * e + _rmsnorm(e, G)  # gated RMSNorm
    )
    n_chunks, sum_q2 = _chunks(L, min(shape.chunk_size, L))
    intra_chunk = sum_q2 * (2 * H + 2 * G * n + H + 2 * e)  # mask, C·Bᵀ, ∘L, ·X
    state_passing = n_chunks * (2 * e * n + H)
    return norm_and_residual + linear_flops(shape, L) + L * per_token + intra_chunk + state_passing


def head_flops(shape: ModelShape, rows: int) -> float:
    """Final RMSNorm + lm_head for `rows` output rows (the embedding lookup is free)."""
    return float(rows * (_rmsnorm(shape.d_model) + 2 * shape.d_model * shape.vocab_size))


# --- reduction ----------------------------------------------------------------------------------


def reduction_flops(shape: ModelShape, method: str, prefix_len: int, removed: int, feature_width: int) -> float:
    """Cost of one reduction step on one row: scores, matching and merges (see the module docstring)."""
    P, r, C, d = prefix_len, removed, feature_width, shape.d_model
    if method == "dense" or r <= 0 or P <= 0:
        return 0.0
    scores = 2 * C * P
    if method == "evit":
        return float(scores)
    if method == "utrc":
        a = P // 2
    elif method == "tome":
        a = (P + 1) // 2
        scores = 0
    else:
        raise ValueError(f"method: expected one of utrc, tome, evit, dense; got {method!r}")
    b = P - a
    normalise = (3 * C + 1) * P
    similarity = 2 * a * b * C + a * b  # matrix + argmax
    merges = 2 * r * (4 * d + 1)  # hidden and residual branch
    return float(scores + normalise + similarity + merges)


def feature_width(shape: ModelShape, policy: Policy) -> int:
    """Width of the importance / matching features: d_inner for the SSM or scan output, d_model for the mixer output."""
    return shape.d_model if policy.importance_source == "mixer_output" else shape.d_inner


# --- token counts -------------------------------------------------------------------------------


def _schedule(n_layer: int, policy: Policy, seq_len: int, protect_last: int):
    """Tokens each block processes for one row of `seq_len` tokens, plus (prefix, removed) of each
    reduction step that removes something. Reduction at block l happens after block l's mixer, so it
    shortens blocks l+1 onward."""
    layers = policy.reduction_layers()
    n, counts, steps = seq_len, [], []
    for block in range(n_layer):
        counts.append(n)
        if block in layers:
            prefix = max(0, n - protect_last)
            r = removal_count(prefix, layers[block][0])
            if r > 0:
                steps.append((prefix, r))
                n -= r
    return counts, steps, n


# --- the model ----------------------------------------------------------------------------------


def estimate_flops(model_or_shape, policy: Policy, seq_len: int = 2048, protect_last: int = 1) -> dict:
    """Dense and reduced prefill FLOPs of one row of `seq_len` tokens under `policy`.

    Returns {"dense", "reduced", "reduction" (= 1 - reduced/dense), "token_fraction_proxy"
    (= 1 - mean over blocks of tokens/seq_len), "seq_len", "protect_last", "tokens_per_layer"}.
    """
    shape = model_or_shape if isinstance(model_or_shape, ModelShape) else ModelShape.of(model_or_shape)
    policy.check_fits(shape)
    if seq_len < 1:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
    if protect_last < 0:
        raise ValueError(f"protect_last: expected a non-negative integer, got {protect_last!r}")
    counts, steps, rows_out = _schedule(shape.n_layer, policy, seq_len, protect_last)
    dense = shape.n_layer * block_flops(shape, seq_len) + head_flops(shape, seq_len)
    width = feature_width(shape, policy)
    reduced = (
        sum(block_flops(shape, n) for n in counts)
        + sum(reduction_flops(shape, policy.method, p, r, width) for p, r in steps)
        + head_flops(shape, rows_out)
    )
    return {
        "dense": dense,
        "reduced": reduced,
        "reduction": 1.0 - reduced / dense,
        "token_fraction_proxy": 1.0 - sum(counts) / (len(counts) * seq_len),
        "seq_len": seq_len,
        "protect_last": protect_last,
        "tokens_per_layer": counts,
    }


def realized_flops(
    shape: ModelShape, policy: Policy, tokens_per_layer, protect_last, rows_out
) -> list[tuple[float, float]]:
    """(dense, reduced) FLOPs of each row of prefills that actually ran, from the token counts.

    tokens_per_layer  [n_layer][B] ints: the real tokens each block processed per row
                      (`ReducedOutput.tokens_per_layer.tolist()`); row b's input length is [0][b]
    protect_last      [B] ints: the protected suffix of each row
    rows_out          [B] ints: rows left after the last block (`ReducedOutput.lengths`)

    The same terms as `estimate_flops`, so a row of n tokens with protect k gives exactly
    `estimate_flops(shape, policy, n, k)`'s dense and reduced figures: dense = every block and the
    head on n tokens; reduced = each block on the tokens it processed, the reduction step of every
    layer whose count dropped (prefix = tokens - protect, removed = the drop), the head on the rows
    left. A count that drops after a block the policy does not reduce raises ValueError.
    """
    counts = [list(map(int, layer)) for layer in tokens_per_layer]
    if len(counts) != shape.n_layer:
        raise ValueError(f"tokens_per_layer: expected {shape.n_layer} layers, got {len(counts)}")
    protect, out = list(map(int, protect_last)), list(map(int, rows_out))
    reducing = policy.reduction_layers()
    width = feature_width(shape, policy)
    result = []
    for b in range(len(protect)):
        column = [layer[b] for layer in counts] + [out[b]]
        n = column[0]
        dense = shape.n_layer * block_flops(shape, n) + head_flops(shape, n)
        reduced = head_flops(shape, out[b])
        for block in range(shape.n_layer):
            reduced += block_flops(shape, column[block])
            removed = column[block] - column[block + 1]
            if removed == 0:
                continue
            if block not in reducing or removed < 0:
                raise ValueError(
                    f"row {b}: {column[block]} tokens after block {block} became {column[block + 1]}, which policy "
                    f"{policy.method} with layers {sorted(reducing)} cannot produce"
                )
            reduced += reduction_flops(shape, policy.method, column[block] - protect[b], removed, width)
        result.append((dense, reduced))
    return result


# --- command line -------------------------------------------------------------------------------


def main(argv=None) -> None:
    from .budget import BudgetError, schedule_policy

    ap = argparse.ArgumentParser(
        prog="python -m utrc.flops",
        description="Keep ratios of the paper's schedule fitted to 10/20/30 % analytic FLOPs reduction (utrc.budget).",
    )
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--model", choices=sorted(PAPER_SHAPES), help="only this shape (default: all)")
    args = ap.parse_args(argv)
    names = [args.model] if args.model else list(PAPER_SHAPES)
    print(f"paper schedule (utrc, ssm_output), seq_len {args.seq_len}, protect_last 1")
    print(f"{'model':26} {'target':>7} {'keep':>8} {'reduction':>10} {'proxy':>7}")
    for name in names:
        shape = PAPER_SHAPES[name]
        print(f"{name}  layers {list(paper_layers(shape.n_layer))}")
        for target in (0.10, 0.20, 0.30):
            try:
                policy = schedule_policy("utrc-paper", shape, target, seq_len=args.seq_len)
            except BudgetError as err:
                print(f"{'':26} {target:7.0%}  {err}")
                continue
            keep = next(iter(policy.layers.values())).keep
            est = estimate_flops(shape, policy, args.seq_len, 1)
            print(f"{'':26} {target:7.0%} {keep!s:>8} {est['reduction']:10.4f} {est['token_fraction_proxy']:7.4f}")
        est = estimate_flops(shape, Policy.paper(ModelSpec.of(shape), 0.905), args.seq_len, 1)
        print(
            f"{'':26} {'keep':>7} {0.905!s:>8} {est['reduction']:10.4f} {est['token_fraction_proxy']:7.4f}"
            f"   (keep 0.905: proxy {est['token_fraction_proxy']:.3f}, reduction {est['reduction']:.3f})"
        )


if __name__ == "__main__":
    main()
