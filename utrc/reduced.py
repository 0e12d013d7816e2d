"""The reduced forward pass: one layer loop over the blocks of a Mamba / Mamba-2 LM (docs/method.md §1).

    embedding -> for each block: (hidden, residual) = block(hidden, residual) -> final norm -> lm_head

The stream between blocks is kept as mamba_ssm's `Block(hidden_states, residual)` keeps it:
`hidden` is the last mixer's output and `residual` the stream before that output was added (None
when `hidden` is the whole stream). At a reduction layer these are UTRC's two branches, and one
`ReductionPlan` (utrc/reduction.py) shortens both, the sizes and the original positions the same
way; the next block adds them. The same loop runs on both execution paths (docs/method.md §7):
transformers' modules (`utrc.transformers_blocks`, the CPU path and the reference) and mamba_ssm's
own model with its fused kernels (`utrc.native_blocks`, the GPU path).

`apply(model, policy)` returns a `ReducedModel` that holds a reference to the model and never
changes it: no patched methods, no copied weights. Besides the whole forward (`__call__`) it runs
any stretch of blocks (`start`, `run`, `final_norm`, `lm_head`), which the search uses to score
many policies from one cached dense prefix, and reads importance sources without reducing
(`block_sources`), which calibration uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .native_blocks import NativeBlocks, is_native_model
from .policy import Policy, PolicyError
from .reduction import ReductionPlan, RowCounts, evit_plan, importance_scores, tome_plan, utrc_plan
from .shapes import ModelShape
from .transformers_blocks import TransformersBlocks


@dataclass
class ReducedOutput:
    logits: torch.Tensor  # [B, N', V] rows that survive to the end, right-padded; the model's dtype
    positions: torch.Tensor  # [B, N'] int64 original position of each row, -1 on padding
    sizes: torch.Tensor  # [B, N'] original tokens each row stands for (residual-branch merges), 0 on padding
    lengths: torch.Tensor  # [B] real rows per batch row at the end
    tokens_per_layer: torch.Tensor  # [n_layer, B] real tokens each block processed, per batch row


@dataclass
class TokenState:
    """Where a forward pass stands between two blocks: the stream and what each row stands for."""

    hidden: torch.Tensor  # [B, N, D] the last block's mixer output (at the start: the embeddings)
    residual: torch.Tensor | None  # [B, N, D] the stream before `hidden` was added; None: `hidden` is it
    positions: torch.Tensor  # [B, N] int64 original position of each row, -1 on padding
    sizes: torch.Tensor  # [B, N] float32 original tokens each row stands for, 0 on padding
    lengths: torch.Tensor  # [B] int64 real rows
    protect: torch.Tensor  # [B] int64 protected suffix of each row (docs/method.md §4)
    host_lengths: tuple[int, ...]  # `lengths` on the host: no layer reads a count back from the GPU
    host_protect: tuple[int, ...]


def apply(model, policy: Policy) -> "ReducedModel":
    """A reduced view of `model` (transformers or mamba_ssm) following `policy`. Raises PolicyError if
    the policy does not fit the model."""
    return ReducedModel(model, policy)


def blocks_of(model):
    """The execution path of a loaded model: mamba_ssm's own blocks or transformers' modules."""
    if is_native_model(model):
        return NativeBlocks(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ("mamba", "mamba2") and hasattr(model, "backbone"):
        return TransformersBlocks(model)
    raise TypeError(
        "utrc.apply needs a Mamba / Mamba-2 language model: a transformers MambaForCausalLM or "
        f"Mamba2ForCausalLM, or a mamba_ssm MambaLMHeadModel (utrc.load_model returns one); got {type(model).__name__}"
    )


class ReducedModel:
    """Callable: `reduced(input_ids, protect_last=1, attention_mask=None) -> ReducedOutput`.

    input_ids       [B, N] int64
    attention_mask  [B, N] 1 = token, 0 = right padding (left padding is refused)
    protect_last    int or [B] int64: the last k real tokens of each row are never removed, never
                    merge sources and never merge destinations (the rows a caller will score).
    """

    def __init__(self, model, policy: Policy):
        self.blocks = blocks_of(model)
        self.model = model
        self.policy = policy
        self.shape = ModelShape.of(model)
        policy.check_fits(self.shape)
        self.schedule = policy.reduction_layers()  # {block: (keep, prune_share)}
        self.path = self.blocks.path  # "transformers" | "mamba_ssm"

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,
        protect_last: int | torch.Tensor = 1,
        attention_mask: torch.Tensor | None = None,
        *,
        cache=None,
        last_logits_only: bool = False,
    ) -> ReducedOutput:
        """`cache`: fill each block's conv and recurrent state for decoding after a reduced prefill
        (rows must be unpadded): a transformers `DynamicCache(config=model.config)` for a
        transformers model, a mamba_ssm `InferenceParams` for a mamba_ssm model.
        `last_logits_only`: logits of the last row only (as generation needs): logits [B, 1, V]."""
        if cache is not None and attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("a cache needs unpadded rows: the recurrent state would absorb the padding")
        per_layer: list[tuple[int, ...]] = []
        # no reference to the start state is kept here: `run` lets go of the embeddings after block 0
        state = self.run(self.start(input_ids, protect_last, attention_mask), cache=cache, tokens_per_layer=per_layer)
        if last_logits_only:
            state = _last_rows(state)
        logits = self.lm_head(self.final_norm(state))  # [B, N', V]
        tokens_per_layer = torch.tensor(per_layer, dtype=torch.int64).to(input_ids.device)  # [n_layer, B]
        return ReducedOutput(logits, state.positions, state.sizes, state.lengths, tokens_per_layer)

    # --- the stretches of a forward pass --------------------------------------------------------

    def start(self, input_ids: torch.Tensor, protect_last: int | torch.Tensor = 1,
              attention_mask: torch.Tensor | None = None) -> TokenState:
        """The state entering block 0: the embeddings of `input_ids` [B, N]."""
        B, N = input_ids.shape
        lengths, protect = _row_lengths(input_ids, attention_mask, protect_last)
        hidden, residual = self.blocks.embed(input_ids)
        positions = torch.arange(N, device=input_ids.device).expand(B, N).masked_fill(~_mask(lengths, N), -1)
        host_lengths = (N,) * B if attention_mask is None else tuple(lengths.tolist())
        return TokenState(hidden, residual, positions, (positions >= 0).float(), lengths, protect,
                          host_lengths, tuple(protect.tolist()))

    def run(self, state: TokenState, start: int = 0, stop: int | None = None, *, cache=None,
            tokens_per_layer: list | None = None) -> TokenState:
        """Blocks `start..stop-1` (default: to the last block), reducing where the policy says.
        A policy that reduces before `start` is refused: those blocks would silently run dense.
        `tokens_per_layer`, if given, receives each block's real token count per row (a tuple)."""
        stop = self.shape.n_layer if stop is None else stop
        skipped = sorted(layer for layer in self.schedule if layer < start)
        if skipped:
            raise PolicyError(
                f"layers: the policy reduces at block(s) {skipped}, before block {start} where this run starts"
            )
        # Peak memory is that of the largest block, as in mamba_ssm's own loop, only if nothing else
        # holds a [B, N, *] tensor: the loop owns the stream, and a reduction layer lets go of each
        # tensor (the block's input, the importance source, the unreduced branches) once used.
        # The stream between reductions is in the execution path's own layout (`blocks.stream`:
        # mamba_ssm's Mamba-1 blocks keep shortened rows packed end to end); [B, N, D] again at the end.
        hidden, residual = self.blocks.stream(state.hidden, state.residual, cache)
        state = replace(state, hidden=None, residual=None)
        source = self.policy.importance_source
        for i in range(start, stop):
            if tokens_per_layer is not None:
                tokens_per_layer.append(state.host_lengths)
            step = self.schedule.get(i)
            counts = RowCounts.of(state.host_lengths, state.host_protect, step[0]) if step is not None else None
            if counts is None or counts.R == 0:
                hidden, residual = self.blocks.block(i, hidden, residual, cache)
                continue
            mix, residual, found = self.blocks.split_block(i, hidden, residual, (source,), cache)
            hidden = None
            plan = self._plan(found.pop(source), state, *step, counts)
            hidden = plan.hidden(mix, state.sizes)
            mix = None
            residual = plan.residual(residual, state.sizes)
            state = replace(state, positions=plan.positions(state.positions), sizes=plan.sizes(state.sizes),
                            lengths=plan.new_lengths, host_lengths=counts.new_lengths)
            plan = None
            hidden, residual = self.blocks.stream(hidden, residual, cache)
        hidden, residual = self.blocks.rows(hidden, residual)
        return replace(state, hidden=hidden, residual=residual)

    def final_norm(self, state: TokenState) -> torch.Tensor:
        """The final norm of the stream of every row: [B, N, D]."""
        return self.blocks.final_norm(state.hidden, state.residual)

    def lm_head(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits of final-normed rows [..., D] -> [..., V], in the model's dtype (a float32 copy only
        where a caller asks for one: at [B, N, V] it is the largest tensor of a forward pass)."""
        return self.blocks.lm_head(normed)

    def block_sources(self, state: TokenState, i: int, sources: tuple[str, ...]):
        """Block i without reducing -> (the state after it, {source: [B, N, C] tensor}) for each
        importance source named (docs/method.md §1): how calibration reads every source."""
        mix, residual, found = self.blocks.split_block(i, state.hidden, state.residual, tuple(sources))
        return replace(state, hidden=mix, residual=residual), found

    def _plan(self, source, state: TokenState, keep, prune_share, counts) -> ReductionPlan:
        p = self.policy
        if p.method == "utrc":
            scores = importance_scores(source, p.importance)
            return utrc_plan(scores, source, state.lengths, state.protect, keep, prune_share, p.hidden_strategy,
                             p.residual_strategy, counts)
        if p.method == "evit":
            return evit_plan(importance_scores(source, p.importance), state.lengths, state.protect, keep, counts)
        if p.method == "tome":
            return tome_plan(source, state.lengths, state.protect, keep, counts)
        raise PolicyError(f"method: {p.method!r} has no reduction step")  # dense has no layers


def _last_rows(state: TokenState) -> TokenState:
    """Only the last real row of every batch row (what generation reads)."""
    last = (state.lengths - 1)[:, None]  # [B, 1]

    def rows(t):
        return None if t is None else t.gather(1, last[..., None].expand(-1, -1, t.shape[-1]))  # [B, 1, D]

    return replace(state, hidden=rows(state.hidden), residual=rows(state.residual),
                   positions=state.positions.gather(1, last), sizes=state.sizes.gather(1, last))


def _mask(lengths: torch.Tensor, N: int) -> torch.Tensor:
    return torch.arange(N, device=lengths.device)[None, :] < lengths[:, None]


def _row_lengths(input_ids, attention_mask, protect_last):
    """Validate the batch layout -> (real lengths [B], protected suffix [B])."""
    B, N = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        lengths = torch.full((B,), N, dtype=torch.int64, device=device)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        mask = attention_mask.to(torch.bool)
        lengths = mask.sum(1).to(torch.int64)
        if not torch.equal(mask, _mask(lengths, N)):
            raise ValueError("attention_mask must be right padding (1 for tokens, then 0 for padding) in every row")
    protect = torch.as_tensor(protect_last, dtype=torch.int64, device=device).expand(B).clone()
    if bool((protect < 0).any()) or bool((protect > lengths).any()):
        raise ValueError(
            f"protect_last must lie in [0, row length]; got {protect.tolist()} for lengths {lengths.tolist()}"
        )
    return lengths, protect
