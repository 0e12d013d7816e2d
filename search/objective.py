"""Quality of a policy: the KL divergence of its next-token distribution from dense, on a dev set.

`DenseReference` runs the dense model once over the dev windows and keeps two things:

* the state entering block `start_layer` (the first block any policy of the search may reduce at;
  every block before it computes exactly what the dense model computes), as `utrc.reduced`'s
  public `TokenState`, one per batch, and
* the dense log-probabilities at the scored positions: the last `score_last` tokens of every
  window, which are protected (docs/method.md §4), so every policy keeps them and they sit at the
  end of each reduced row.

`DenseReference.score(policy)` then runs only blocks `start_layer..n_layer-1` of `utrc.apply(model,
policy)` from those states (`ReducedModel.run`), applies the final norm to all surviving rows but
the lm_head only to the scored rows, and returns the mean KL(dense || reduced) over scored
positions. Nothing is reloaded or recomputed per call. tests/test_search.py checks that the result
equals a full `utrc.apply(model, policy)` pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utrc import ModelShape, ModelSpec, Policy, apply
from utrc.reduced import ReducedModel, TokenState


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
        dense = dense_model(model)
        self.states: list[TokenState] = []  # entering block start_layer, one per batch
        final = []
        with torch.inference_mode():
            for start in range(0, N, self.batch_size):
                rows_len = lengths[start : start + self.batch_size]
                width = int(rows_len.max())
                ids = input_ids[start : start + self.batch_size, :width]
                mask = None if bool((rows_len == width).all()) else _right_padding(rows_len, width).to(ids.device)
                state = dense.run(dense.start(ids, protect_last=score_last, attention_mask=mask), 0, start_layer)
                self.states.append(state)
                final.append(_scored_rows(dense, dense.run(state, start_layer), state.lengths, score_last))
            self.dense_logp = _log_probs(dense, torch.cat(final))  # [N, S, V]

    def score(self, policy: Policy) -> PolicyScore:
        """KL of `policy` from dense on the cached dev set. Raises PolicyError if the policy reduces
        before `start_layer` or does not fit the model."""
        return score_from(apply(self.model, policy), self.states, self.start_layer, self.dense_logp, self.score_last)


def dense_model(model) -> ReducedModel:
    """`model` through the reduced forward with nothing to reduce: what every policy is compared to."""
    return apply(model, Policy.dense(ModelSpec.of(ModelShape.of(model))))


def score_from(reduced: ReducedModel, states: list[TokenState], start_layer: int, dense_logp: torch.Tensor,
               score_last: int) -> PolicyScore:
    """KL(dense || reduced) with the states entering block `start_layer` given (one per batch, rows
    protecting their last `score_last` tokens) and dense_logp [N, S, V] at those S positions."""
    N = sum(state.hidden.shape[0] for state in states)
    if not reduced.schedule:
        return PolicyScore(0.0, 1.0, N * score_last)  # nothing reduced: the dense computation itself
    kl_sum, agree, done = 0.0, 0, 0
    with torch.inference_mode():
        for state in states:
            B = state.hidden.shape[0]
            # a dense prefix reduces nothing, so `state.lengths` are each row's original lengths
            end = reduced.run(state, start_layer)
            logq = _log_probs(reduced, _scored_rows(reduced, end, state.lengths, score_last))
            logp = dense_logp[done // score_last : done // score_last + B]
            kl_sum += float((logp.exp() * (logp - logq)).sum(-1).sum())
            agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
            done += B * score_last
    return PolicyScore(kl_sum / done, agree / done, done)


def _scored_rows(reduced: ReducedModel, state: TokenState, lengths: torch.Tensor, score_last: int) -> torch.Tensor:
    """The final-normed rows of the last `score_last` real positions of every row of `lengths` [B]
    original tokens: [B, S, D]. They are protected, so they are the last rows of each reduced row;
    checked by the original position each row carries."""
    steps = torch.arange(score_last, device=state.lengths.device)
    last = state.lengths[:, None] - score_last + steps  # [B, S] rows that score
    if not torch.equal(state.positions.gather(1, last), lengths[:, None] - score_last + steps):
        raise RuntimeError("scored rows do not carry the scored positions: protected suffix was reduced")
    normed = reduced.final_norm(state)  # [B, N', D]
    return normed.gather(1, last[:, :, None].expand(-1, -1, normed.shape[-1]))


def _right_padding(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < lengths[:, None]).long()  # [B, width]


def _log_probs(reduced: ReducedModel, normed: torch.Tensor) -> torch.Tensor:
    """lm_head + log_softmax in float32: [..., D] -> [..., V]."""
    return torch.log_softmax(reduced.lm_head(normed).float(), dim=-1)
