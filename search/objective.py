"""Quality of a policy: the KL divergence of its next-token distribution from dense, on a dev set.

`DenseReference` runs the dense model once over the dev windows and keeps two things:

* the residual stream entering block `start_layer` (the first block any policy of the search may
  reduce at; every block before it computes exactly what the dense model computes), and
* the dense log-probabilities at the scored positions: the last `score_last` tokens of every
  window, which are protected (SPEC §4), so every policy keeps them and they sit at the end of
  each reduced row.

`DenseReference.score(policy)` then runs only blocks `start_layer..n_layer-1` through
`utrc.apply` (the public reduced forward pass), applies the final norm to all surviving rows but
the lm_head only to the scored rows, and returns the mean KL(dense || reduced) over scored
positions. Nothing is reloaded or recomputed per call: the model, the cached stream and the dense
log-probabilities are reused. tests/test_search.py checks that the result equals a full
`utrc.apply(model, policy)` pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from utrc import ModelShape, ModelSpec, Policy, PolicyError, apply


@dataclass(frozen=True)
class PolicyScore:
    kl: float  # mean over scored positions of KL(dense || reduced), nats
    top1_agreement: float  # share of scored positions where both argmaxes agree
    positions: int  # scored positions averaged over


class DenseReference:
    """Dense outputs of `model` on a dev set, cached for scoring many policies.

    input_ids    [N, L] token rows; rows shorter than L are right-padded (give `lengths`)
    lengths      [N] real tokens per row (None: every row has L); rows are best sorted by length,
                 so that a batch holds rows of similar length
    score_last   the last `score_last` real tokens of each row are protected and scored (>= 1)
    start_layer  the first block a scored policy may reduce at; blocks before it are run once here
    batch_size   rows per forward pass (None: all at once)
    """

    def __init__(self, model, input_ids: torch.Tensor, score_last: int = 8, start_layer: int = 0,
                 batch_size: int | None = None, lengths: torch.Tensor | None = None):
        shape = ModelShape.of(model)
        if input_ids.dim() != 2 or input_ids.shape[0] < 1:
            raise ValueError(f"dev set: expected token rows [N, L] with N >= 1, got shape {tuple(input_ids.shape)}")
        N, L = input_ids.shape
        lengths = torch.full((N,), L, dtype=torch.int64) if lengths is None else lengths.to(torch.int64).cpu()
        if lengths.shape != (N,) or int(lengths.max()) > L:
            raise ValueError(f"lengths: expected [N] = [{N}] values <= {L}, got {tuple(lengths.shape)}")
        if not 1 <= score_last < int(lengths.min()):
            raise ValueError(
                f"score_last: expected 1 <= score_last < shortest row ({int(lengths.min())} tokens), got {score_last}"
            )
        if not 0 <= start_layer < shape.n_layer:
            raise ValueError(f"start_layer: expected 0 <= start_layer < {shape.n_layer}, got {start_layer}")
        self.model = model
        self.shape = shape
        self.input_ids = input_ids
        self.lengths = lengths
        self.score_last = score_last
        self.start_layer = start_layer
        self.batch_size = batch_size or N
        self._tail = TailModel(model, start_layer)
        scored = lengths[:, None] - score_last + torch.arange(score_last)  # [N, S] positions scored
        with torch.inference_mode():
            hidden, final = None, []
            for start in range(0, N, self.batch_size):
                rows = slice(start, start + self.batch_size)
                width = int(lengths[rows].max())
                h, out = _dense_pass(model, input_ids[rows, :width], start_layer)
                if hidden is None:
                    hidden = h.new_zeros(N, L, h.shape[-1])
                hidden[rows, :width] = h
                idx = scored[rows].to(out.device)
                final.append(out.gather(1, idx[:, :, None].expand(-1, -1, out.shape[-1])))
            self.start_hidden = hidden  # [N, L, D] input of block start_layer (0 on padding)
            self.dense_logp = _log_probs(model, torch.cat(final))  # [N, S, V]

    def score(self, policy: Policy) -> PolicyScore:
        """KL of `policy` from dense on the cached dev set. Raises PolicyError if the policy reduces
        before `start_layer` or does not fit the model."""
        policy.check_fits(self.shape)
        return score_from(self._tail, self.start_hidden, policy, self.dense_logp, self.score_last, self.batch_size,
                          self.lengths)


def score_from(tail: "TailModel", hidden: torch.Tensor, policy: Policy, dense_logp: torch.Tensor, score_last: int,
               batch_size: int | None = None, lengths: torch.Tensor | None = None) -> PolicyScore:
    """KL(dense || policy) with the stream entering block `tail.start` given: hidden [N, L, D]
    (right-padded rows of `lengths` real tokens, default all L), dense_logp [N, S, V] at the last
    S = score_last real positions of each row."""
    N, L, _ = hidden.shape
    if not policy.reduction_layers():
        return PolicyScore(0.0, 1.0, N * score_last)  # nothing reduced: the dense computation itself
    lengths = torch.full((N,), L, dtype=torch.int64) if lengths is None else lengths
    reduced = apply(tail, tail.shifted(policy))
    batch_size = batch_size or N
    kl_sum, agree, done = 0.0, 0, 0
    tail.set_cache(hidden)
    device = hidden.device
    steps = torch.arange(score_last, device=device)
    with torch.inference_mode():
        for start in range(0, N, batch_size):
            rows_len = lengths[start : start + batch_size].to(device)
            B, width = rows_len.shape[0], int(rows_len.max())
            row = torch.arange(start, start + B, device=device)
            ids = row[:, None] * L + torch.arange(width, device=device)  # [B, width] rows of the cache
            mask = (torch.arange(width, device=device)[None, :] < rows_len[:, None]).long()
            out = reduced(ids, protect_last=score_last, attention_mask=None if bool(mask.all()) else mask)
            last = out.lengths[:, None] - score_last + steps  # [B, S] rows that score
            if not torch.equal(out.positions.gather(1, last), rows_len[:, None] - score_last + steps):
                raise RuntimeError("scored rows do not carry the scored positions: protected suffix was reduced")
            normed = out.logits.gather(1, last[:, :, None].expand(-1, -1, out.logits.shape[-1]))  # [B, S, D]
            logq = _log_probs(tail.model, normed)
            logp = dense_logp[start : start + B]
            kl_sum += float((logp.exp() * (logp - logq)).sum(-1).sum())
            agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
            done += B * score_last
    return PolicyScore(kl_sum / done, agree / done, done)


class TailModel:
    """Blocks `start..n_layer-1` of a transformers Mamba / Mamba-2 LM, shaped so `utrc.apply` runs it.

    Its "embedding" is a lookup into cached hidden states: token id `i` is row `i` of the cache
    [N·L, D] (set with `set_cache`), so the reduced forward starts from the dense stream entering
    block `start`. Its lm_head returns the final-normed rows unchanged: the caller applies the real
    lm_head to the few rows it scores. The model's modules are shared, not copied.
    """

    def __init__(self, model, start: int):
        self.model = model
        self.start = start
        self.config = copy.copy(model.config)
        self.config.num_hidden_layers = model.config.num_hidden_layers - start
        self._cache = SimpleNamespace(table=None)
        cache = self._cache
        self.backbone = SimpleNamespace(
            embeddings=lambda ids: F.embedding(ids, cache.table),
            layers=list(model.backbone.layers)[start:],
            norm_f=model.backbone.norm_f,
        )
        self.lm_head = _Identity(model.lm_head.weight)
        self.spec = ModelSpec.of(ModelShape.of(model))

    def set_cache(self, hidden: torch.Tensor) -> None:
        self._cache.table = hidden.reshape(-1, hidden.shape[-1])

    def shifted(self, policy: Policy) -> Policy:
        """`policy` with block indices relative to `start`, for this tail."""
        early = [l for l in policy.reduction_layers() if l < self.start]
        if early:
            raise PolicyError(
                f"layers: the policy reduces at block(s) {early}, before the first searchable block {self.start}"
            )
        spec = replace(policy.model, n_layer=policy.model.n_layer - self.start)
        layers = {l - self.start: s for l, s in policy.layers.items()}
        return replace(policy, model=spec, layers=layers, estimates=None, measured=None, provenance=None)


class _Identity(torch.nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight  # read by ReducedModel for dtype and device only

    def forward(self, x):
        return x


def _dense_pass(model, ids: torch.Tensor, record_layer: int):
    """The dense forward pass as utrc.reduced runs it -> (input of block `record_layer` [B, L, D],
    final-normed hidden [B, L, D])."""
    backbone = model.backbone
    h = backbone.embeddings(ids)
    recorded = None
    for i, block in enumerate(backbone.layers):
        if i == record_layer:
            recorded = h
        h = block(h)
    return recorded, backbone.norm_f(h)


def _log_probs(model, normed: torch.Tensor) -> torch.Tensor:
    """lm_head + log_softmax in float32: [..., D] -> [..., V]."""
    head = model.lm_head
    return torch.log_softmax(head(normed.to(head.weight.dtype)).float(), dim=-1)
