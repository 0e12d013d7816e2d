"""One reduction layer: score tokens, match them, and apply one plan to every tensor (docs/method.md §1, §2).

The shape follows ToMe's `merge.py`: a matching function looks at the importance source once and
returns a `ReductionPlan`; the plan then shortens the hidden branch, the residual branch, the token
sizes and the original positions the same way, so the two branches can still be added.

Every function works on a whole batch at once. Rows are independent: each row has its own real
length (right padding after it), its own protected suffix and so its own removal count. Slots past
a row's count are padding in the plan's tensors, masked by `valid`.

Notation: B batch, N current sequence length (padded), C importance/feature width, D model width,
A / Bset the less / more important halves of a row's reducible prefix, R the largest removal count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .counts import prune_count, prune_counts, removal_count, removal_counts

# --- importance -------------------------------------------------------------------------------


def importance_scores(source: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-token importance of `source` [B, N, C] -> [B, N] float32 (docs/method.md §1 step 2).
    clip / l1 / signed are exact in the source's dtype and accumulate in float32, so a bf16 source
    is never copied to float32 whole (a [16, 2048, 5120] copy per layer on the 2.7B shape)."""
    if metric == "clip":
        return source.clamp(min=0).mean(-1, dtype=torch.float32)
    if metric == "l1":
        return source.abs().mean(-1, dtype=torch.float32)
    if metric == "l2":
        return source.float().square().mean(-1).sqrt()
    if metric == "signed":
        return source.mean(-1, dtype=torch.float32)
    raise ValueError(f"unknown importance metric {metric!r}")


# --- counts on the host ------------------------------------------------------------------------


@dataclass(frozen=True)
class RowCounts:
    """One reduction layer's token counts per batch row, as host integers.

    A plan's tensor widths (R, |A|, |Bset|, N') are maxima of these counts. Reading them off the
    GPU would stall the launch queue several times per layer; `ReducedModel` tracks every row's
    length on the host instead (they follow from the policy alone) and hands the counts over."""

    lengths: tuple[int, ...]  # real tokens per row before the layer
    prefix: tuple[int, ...]  # reducible prefix P per row
    removed: tuple[int, ...]  # r per row (docs/method.md §1 step 1)

    @classmethod
    def of(cls, lengths, protect, keep: float) -> "RowCounts":
        """lengths, protect: [B] int tensors (read once) or sequences of ints."""
        lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
        protect = protect.tolist() if isinstance(protect, torch.Tensor) else list(protect)
        prefix = [max(0, n - p) for n, p in zip(lengths, protect, strict=True)]
        return cls(tuple(lengths), tuple(prefix), tuple(removal_count(p, keep) for p in prefix))

    @property
    def R(self) -> int:
        return max(self.removed, default=0)

    @property
    def new_lengths(self) -> tuple[int, ...]:
        return tuple(n - r for n, r in zip(self.lengths, self.removed, strict=True))

    def merges(self, strategy: str, prune_share: float) -> bool:
        """Whether a branch with this strategy merges any token (else it only drops rows)."""
        if strategy == "prune":
            return False
        if strategy == "hybrid":
            return any(r - prune_count(r, prune_share) > 0 for r in self.removed)
        return self.R > 0


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class ReductionPlan:
    """What one reduction layer does to each row. Index tensors point into the current sequence.

    src            [B, R] the removed tokens, in order of increasing score (ties: position)
    dst            [B, R] the token each source is matched to (its merge destination)
    valid          [B, R] slot r < removed[b]
    merge_hidden   [B, R] the source is merged into dst on the hidden branch (else pruned)
    merge_residual [B, R] the same on the residual branch
    keep           [B, N'] the survivors in original order; slots past new_lengths[b] are padding
    keep_valid     [B, N']
    new_lengths    [B] real tokens per row after this layer
    new_index      [B, N] where each current token lands in the output (meaningful for survivors)
    hidden_merges, residual_merges  host flags: the branch merges at least one token somewhere
    ragged         host flag: some row is shorter than N' (its tail slots are padding)
    """

    src: torch.Tensor
    dst: torch.Tensor
    valid: torch.Tensor
    merge_hidden: torch.Tensor
    merge_residual: torch.Tensor
    keep: torch.Tensor
    keep_valid: torch.Tensor
    new_lengths: torch.Tensor
    new_index: torch.Tensor
    hidden_merges: bool
    residual_merges: bool
    ragged: bool

    @property
    def removed(self) -> torch.Tensor:  # [B]
        return self.valid.sum(1)

    def hidden(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Reduce the hidden branch (the mixer output) x [B, N, D] -> [B, N', D]."""
        return self._merge_and_gather(x, sizes, self.merge_hidden, self.hidden_merges)

    def residual(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Reduce the residual branch (the stream before the add) x [B, N, D] -> [B, N', D]."""
        return self._merge_and_gather(x, sizes, self.merge_residual, self.residual_merges)

    def sizes(self, sizes: torch.Tensor) -> torch.Tensor:
        """Token sizes after the layer: destinations grow by the sizes merged into them on the
        residual branch (the branch that carries the stream on). [B, N] -> [B, N'], 0 on padding."""
        added = torch.zeros_like(sizes).scatter_add_(1, self.dst, self._source_weights(sizes, self.merge_residual))
        return self._gather(sizes + added)

    def positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Original position of every surviving row [B, N] -> [B, N'], -1 on padding."""
        return positions.gather(1, self.keep).masked_fill(~self.keep_valid, -1)

    def _source_weights(self, sizes: torch.Tensor, merge: torch.Tensor) -> torch.Tensor:
        return torch.where(merge, sizes.gather(1, self.src), torch.zeros((), dtype=sizes.dtype, device=sizes.device))

    @functools.cached_property
    def _merge_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows of the flattened input [B*N, D] that are sources, rows of the flattened output
        [B*N', D] they merge into), both [B*R]: the same for both branches, so computed once."""
        B, N = self.new_index.shape
        Np = self.keep.shape[1]
        batch = torch.arange(B, device=self.src.device)[:, None]
        src_rows = (self.src + batch * N).reshape(-1)
        # a padding slot's destination may be a removed token (index -1): any row will do, weight 0
        dst_rows = (self.new_index.gather(1, self.dst).clamp(min=0) + batch * Np).reshape(-1)
        return src_rows, dst_rows

    def _merge_and_gather(self, x: torch.Tensor, sizes: torch.Tensor, merge: torch.Tensor,
                          merges: bool) -> torch.Tensor:
        out = self._gather(x)  # [B, N', D]
        if not merges:
            return out
        # Size-weighted mean of each destination and the sources merged into it, with the sizes as
        # they were before this layer, in float32. Every slot takes part (weight 0 where the source is
        # not merged on this branch), so no step waits on the GPU for a count. Only destination rows
        # are rewritten: a row no source merges into keeps its exact bits.
        B, N, D = x.shape
        Np = out.shape[1]
        w_src = self._source_weights(sizes, merge).reshape(-1).float()  # [B*R]
        src_rows, dst_rows = self._merge_rows  # [B*R] rows of x, rows of out
        x_src = x.reshape(B * N, D).index_select(0, src_rows).float() * w_src[:, None]  # [B*R, D]
        num = torch.zeros(B * Np, D, device=x.device).index_add_(0, dst_rows, x_src)  # [B*N', D]
        den = torch.zeros(B * Np, device=x.device).index_add_(0, dst_rows, w_src)  # [B*N']
        w_dst = self._gather(sizes).reshape(-1).float()  # [B*N']
        out_rows = out.view(B * Np, D)
        current = out_rows.index_select(0, dst_rows)  # [B*R, D]
        w_d, d_in = w_dst[dst_rows], den[dst_rows]  # [B*R]
        merged = (current.float() * w_d[:, None] + num.index_select(0, dst_rows)) / (w_d + d_in)[:, None]
        # several slots may name one row: each computes the same value, so the write order is moot
        out_rows.index_copy_(0, dst_rows, torch.where((d_in > 0)[:, None], merged.to(out.dtype), current))
        return out

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Survivor rows of t [B, N] or [B, N, D], padding slots set to 0."""
        if t.dim() == 2:
            return t.gather(1, self.keep) * self.keep_valid
        B, N, D = t.shape
        flat = (self.keep + torch.arange(B, device=t.device)[:, None] * N).reshape(-1)
        out = t.reshape(B * N, D).index_select(0, flat).view(B, -1, D)  # row copies, faster than gather
        if self.ragged:
            out.masked_fill_(~self.keep_valid[..., None], 0)
        return out


def _arange_mask(count: torch.Tensor, width: int) -> torch.Tensor:
    """[B] counts -> [B, width] bool, True where slot < count."""
    return torch.arange(width, device=count.device)[None, :] < count[:, None]


def _first_where(mask: torch.Tensor, width: int, slot: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the True entries of each row of mask [B, N], in order, padded with 0 -> [B, width].
    `slot`: mask.cumsum(1) - 1 if the caller has it. Each True entry is scattered to its slot (the
    others to a spare column, dropped): no sort."""
    B, N = mask.shape
    slot = mask.cumsum(1) - 1 if slot is None else slot  # [B, N] slot of each True entry
    slot = torch.where(mask & (slot < width), slot, width)
    out = torch.zeros(B, width + 1, dtype=torch.int64, device=mask.device)
    return out.scatter_(1, slot, torch.arange(N, device=mask.device).expand(B, N))[:, :width]


def _finish(
    src: torch.Tensor,
    dst: torch.Tensor,
    valid: torch.Tensor,
    merge_hidden: torch.Tensor,
    merge_residual: torch.Tensor,
    lengths: torch.Tensor,
    N: int,
    counts: RowCounts,
    hidden_merges: bool,
    residual_merges: bool,
) -> ReductionPlan:
    """Survivors: every real token that is not a source, in original order."""
    B = lengths.shape[0]
    # scatter_add, not scatter: padding slots point at index 0 and must not overwrite a real source there
    removed = torch.zeros(B, N, dtype=torch.int32, device=lengths.device).scatter_add_(1, src, valid.int()) > 0
    survivor = _arange_mask(lengths, N) & ~removed
    new_index = survivor.cumsum(1) - 1  # [B, N]
    new_lengths = lengths - valid.sum(1)
    width = max(counts.new_lengths, default=0)
    return ReductionPlan(
        src=src,
        dst=dst,
        valid=valid,
        merge_hidden=merge_hidden & valid,
        merge_residual=merge_residual & valid,
        keep=_first_where(survivor, width, new_index),
        keep_valid=_arange_mask(new_lengths, width),
        new_lengths=new_lengths,
        new_index=new_index,
        hidden_merges=hidden_merges,
        residual_merges=residual_merges,
        ragged=min(counts.new_lengths, default=0) < width,
    )


def _cosine_best_match(features, a_idx, a_valid, b_idx, b_valid):
    """For each A slot, the Bset token with the highest cosine similarity (ties: smallest position,
    since b_idx is in position order and max returns the first maximum).
    -> (best similarity [B, |A|] with -inf on invalid A slots, destination index [B, |A|])."""
    B, N, C = features.shape
    if b_idx.shape[1] % 8:  # an output row of a multiple of 16 bytes keeps cuBLAS on its aligned kernels
        pad = 8 - b_idx.shape[1] % 8
        b_idx, b_valid = F.pad(b_idx, (0, pad)), F.pad(b_valid, (0, pad))  # index 0, never valid
    flat = features.reshape(B * N, C)
    offset = torch.arange(B, device=features.device)[:, None] * N
    fa = flat.index_select(0, (a_idx + offset).reshape(-1)).view(B, -1, C)  # [B, |A|, C]
    fb = flat.index_select(0, (b_idx + offset).reshape(-1)).view(B, -1, C)  # [B, |Bset|, C]
    # dot products first, norms after: one pass over the features instead of normalising a copy
    norms = torch.linalg.vector_norm(features, dim=-1, dtype=torch.float32).clamp(min=1e-12)  # [B, N]
    sim = torch.bmm(fa, fb.transpose(1, 2)).float()  # [B, |A|, |Bset|]
    sim = sim / (norms.gather(1, a_idx)[:, :, None] * norms.gather(1, b_idx)[:, None, :])
    sim = sim.masked_fill(~b_valid[:, None, :], float("-inf"))
    best, j = sim.max(dim=-1)
    best = best.masked_fill(~a_valid, float("-inf"))
    return best, b_idx.gather(1, j)


def _strategy_mask(strategy: str, pruned: torch.Tensor) -> torch.Tensor:
    """Which selected sources a branch merges (the others it drops)."""
    if strategy == "hybrid":
        return ~pruned
    if strategy == "merge":
        return torch.ones_like(pruned)
    if strategy == "prune":
        return torch.zeros_like(pruned)
    raise ValueError(f"unknown strategy {strategy!r}")


def _layer_counts(lengths, protect, keep, counts):
    """(host counts, prefix [B], r [B]): each row's reducible prefix and removal count on the
    device, and the same numbers on the host (computed from the device ones if not given)."""
    counts = counts or RowCounts.of(lengths, protect, keep)
    prefix = (lengths - protect).clamp(min=0)
    return counts, prefix, removal_counts(prefix, keep)


# --- the three matchers -----------------------------------------------------------------------


def utrc_plan(
    scores: torch.Tensor,
    features: torch.Tensor,
    lengths: torch.Tensor,
    protect: torch.Tensor,
    keep: float,
    prune_share: float = 0.5,
    hidden_strategy: str = "hybrid",
    residual_strategy: str = "merge",
    counts: RowCounts | None = None,
) -> ReductionPlan:
    """UTRC (docs/method.md §1 steps 1-7).

    scores [B, N] float32, features [B, N, C], lengths [B] real tokens, protect [B] protected suffix.
    counts: the same lengths on the host (`RowCounts.of(lengths, protect, keep)`, computed here if
    not given, at the cost of one read of the GPU).
    """
    B, N = scores.shape
    counts, prefix, r = _layer_counts(lengths, protect, keep, counts)  # prefix, r: [B]
    a_count = prefix // 2
    R = counts.R
    A_max = max((p // 2 for p in counts.prefix), default=0)
    B_max = max((p - p // 2 for p in counts.prefix), default=0)
    if R == 0:
        return _no_reduction(lengths, N, counts)

    # 3. classify: order the prefix by (score, position); the first floor(P/2) are A
    in_prefix = _arange_mask(prefix, N)
    order = torch.sort(scores.masked_fill(~in_prefix, float("inf")), dim=1, stable=True).indices  # [B, N]
    a_idx = order[:, :A_max]  # [B, |A|] in (score, position) order
    a_valid = _arange_mask(a_count, A_max)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=order.device).expand(B, N))
    b_idx = _first_where(in_prefix & (rank >= a_count[:, None]), B_max)  # [B, |Bset|] in position order
    b_valid = _arange_mask(prefix - a_count, B_max)

    # 4. match each A token to its most similar Bset token
    best, dst_of_a = _cosine_best_match(features, a_idx, a_valid, b_idx, b_valid)

    # 5. select the r A tokens with the most similar partner (ties: A order, i.e. lower score, then position)
    chosen = torch.sort(best, dim=1, descending=True, stable=True).indices[:, :R]  # A slots, [B, R]
    valid = _arange_mask(r, R)
    # back into A order so that the lowest-score sources come first (step 6 prunes those)
    chosen = torch.sort(chosen.masked_fill(~valid, A_max), dim=1).values.clamp(max=A_max - 1)
    src = a_idx.gather(1, chosen)
    dst = dst_of_a.gather(1, chosen)

    # 6. split: the floor(q*r + 0.5) lowest-score sources are pruned, the rest merged
    pruned = _arange_mask(prune_counts(r, prune_share), R)
    return _finish(
        src,
        dst,
        valid,
        _strategy_mask(hidden_strategy, pruned),
        _strategy_mask(residual_strategy, pruned),
        lengths,
        N,
        counts,
        counts.merges(hidden_strategy, prune_share),
        counts.merges(residual_strategy, prune_share),
    )


def evit_plan(
    scores: torch.Tensor, lengths: torch.Tensor, protect: torch.Tensor, keep: float, counts: RowCounts | None = None
) -> ReductionPlan:
    """EViT-style pruning: drop the r lowest-score prefix tokens (ties: position) from both branches."""
    B, N = scores.shape
    counts, prefix, r = _layer_counts(lengths, protect, keep, counts)
    R = counts.R
    if R == 0:
        return _no_reduction(lengths, N, counts)
    in_prefix = _arange_mask(prefix, N)
    order = torch.sort(scores.masked_fill(~in_prefix, float("inf")), dim=1, stable=True).indices
    valid = _arange_mask(r, R)
    src = order[:, :R].masked_fill(~valid, 0)
    never = torch.zeros_like(valid)
    return _finish(src, torch.zeros_like(src), valid, never, never, lengths, N, counts, False, False)


def tome_plan(
    features: torch.Tensor, lengths: torch.Tensor, protect: torch.Tensor, keep: float, counts: RowCounts | None = None
) -> ReductionPlan:
    """ToMe / PuMer bipartite merging: A = even indices of the current prefix, Bset = odd ones; the r
    best-matching A tokens are merged into their partners on both branches."""
    B, N = features.shape[:2]
    counts, prefix, r = _layer_counts(lengths, protect, keep, counts)
    R = counts.R
    if R == 0:
        return _no_reduction(lengths, N, counts)
    P_max = max(counts.prefix)
    device = features.device
    a_idx = torch.arange(0, P_max, 2, device=device).expand(B, -1)  # [B, ceil(P/2)]
    b_idx = torch.arange(1, P_max, 2, device=device).expand(B, -1)  # [B, floor(P/2)]
    a_valid = a_idx < prefix[:, None]
    b_valid = b_idx < prefix[:, None]
    best, dst_of_a = _cosine_best_match(features, a_idx, a_valid, b_idx, b_valid)
    chosen = torch.sort(best, dim=1, descending=True, stable=True).indices[:, :R]  # ties: smaller position
    valid = _arange_mask(r, R)
    src = a_idx.gather(1, chosen).masked_fill(~valid, 0)
    dst = dst_of_a.gather(1, chosen).masked_fill(~valid, 0)
    return _finish(src, dst, valid, valid, valid, lengths, N, counts, True, True)


def _no_reduction(lengths: torch.Tensor, N: int, counts: RowCounts) -> ReductionPlan:
    B = lengths.shape[0]
    empty = torch.zeros(B, 0, dtype=torch.int64, device=lengths.device)
    none = torch.zeros(B, 0, dtype=torch.bool, device=lengths.device)
    return _finish(empty, empty, none, none, none, lengths, N, counts, False, False)
