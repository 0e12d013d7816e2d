"""The reduced forward pass: an explicit layer loop over a transformers Mamba / Mamba-2 model.

    embedding -> for each block: res = res + mixer(norm(res)) -> final norm -> lm_head

At a reduction layer the block is split into its two addends (SPEC §1): the hidden branch (the
mixer output) and the residual branch (the stream before the add). One `ReductionPlan` per layer
shortens both, so `res = plan.residual(res) + plan.hidden(mix)`. Every other block runs exactly as
transformers runs it, so a policy that removes nothing reproduces the model bit for bit.

`apply(model, policy)` returns a `ReducedModel` that holds a reference to the model and never
changes it: no patched methods, no copied weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loading import is_mamba_ssm_available
from .mamba1_scan import mamba1_mixer_forward
from .policy import Policy, PolicyError
from .reduction import ReductionPlan, RowCounts, evit_plan, importance_scores, tome_plan, utrc_plan
from .shapes import ModelShape


@dataclass
class ReducedOutput:
    logits: torch.Tensor  # [B, N', V] float32, rows that survive to the end, right-padded
    positions: torch.Tensor  # [B, N'] int64 original position of each row, -1 on padding
    sizes: torch.Tensor  # [B, N'] original tokens each row stands for (residual-branch merges), 0 on padding
    lengths: torch.Tensor  # [B] real rows per batch row at the end
    tokens_per_layer: torch.Tensor  # [n_layer, B] real tokens each block processed, per batch row


def apply(model, policy: Policy) -> "ReducedModel":
    """A reduced view of `model` following `policy`. Raises PolicyError if the policy does not fit."""
    return ReducedModel(model, policy)


class ReducedModel:
    """Callable: `reduced(input_ids, protect_last=1, attention_mask=None) -> ReducedOutput`.

    input_ids       [B, N] int64
    attention_mask  [B, N] 1 = token, 0 = right padding (left padding is refused)
    protect_last    int or [B] int64: the last k real tokens of each row are never removed, never
                    merge sources and never merge destinations (the rows a caller will score).
    """

    def __init__(self, model, policy: Policy):
        if getattr(getattr(model, "config", None), "model_type", None) not in ("mamba", "mamba2") or not hasattr(model, "backbone"):
            raise TypeError(
                "utrc.apply needs a transformers MambaForCausalLM or Mamba2ForCausalLM "
                f"(utrc.load_model returns one); got {type(model).__name__}"
            )
        self.model = model
        self.policy = policy
        self.shape = ModelShape.of(model)
        policy.check_fits(self.shape)
        self.schedule = policy.reduction_layers()  # {block: (keep, prune_share)}

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
        """`cache`: a transformers `DynamicCache(config=model.config)` to fill with each block's
        conv and recurrent state, for decoding after a reduced prefill (rows must be unpadded).
        `last_logits_only`: compute logits for the last row only (as generation does): logits
        [B, 1, V], positions [B, 1]."""
        B, N = input_ids.shape
        lengths, protect = _row_lengths(input_ids, attention_mask, protect_last)
        # every row's length on the host too: the policy alone decides how they shrink, so no
        # layer has to read a count back from the GPU (SPEC §1 step 1, `RowCounts`)
        host_lengths = [N] * B if attention_mask is None else lengths.tolist()
        host_protect = protect.tolist()
        if cache is not None and bool((lengths != N).any()):
            raise ValueError("a cache needs unpadded rows: the recurrent state would absorb the padding")
        backbone = self.model.backbone
        device = input_ids.device

        h = backbone.embeddings(input_ids)  # [B, N, D]
        positions = torch.arange(N, device=device).expand(B, N).masked_fill(~_mask(lengths, N), -1)
        sizes = (positions >= 0).float()  # [B, N]
        tokens_per_layer = torch.zeros(len(backbone.layers), B, dtype=torch.int64, device=device)

        for i, block in enumerate(backbone.layers):
            tokens_per_layer[i] = lengths
            step = self.schedule.get(i)
            counts = RowCounts.of(host_lengths, host_protect, step[0]) if step is not None else None
            if counts is None or counts.R == 0:
                h = _block_forward(block, h, cache)
                continue
            plan, residual, mix = self._reduce_block(block, h, lengths, protect, *step, counts, cache)
            h = plan.residual(residual, sizes) + plan.hidden(mix, sizes)
            sizes = plan.sizes(sizes)
            positions = plan.positions(positions)
            lengths, host_lengths = plan.new_lengths, list(counts.new_lengths)

        if last_logits_only:
            last = (lengths - 1)[:, None]  # [B, 1]
            h = h.gather(1, last[..., None].expand(-1, -1, h.shape[-1]))  # [B, 1, D]
            positions, sizes = positions.gather(1, last), sizes.gather(1, last)
        h = backbone.norm_f(h)
        logits = self.model.lm_head(h.to(self.model.lm_head.weight.dtype)).float()  # [B, N', V]
        return ReducedOutput(logits, positions, sizes, lengths, tokens_per_layer)

    def _reduce_block(self, block, h, lengths, protect, keep, prune_share, counts, cache=None):
        """Run one block split into its branches and plan its reduction.
        -> (plan, residual branch [B, N, D], hidden branch [B, N, D])."""
        residual = h
        normed = block.norm(h.to(dtype=block.norm.weight.dtype))
        if block.residual_in_fp32:
            residual = residual.to(torch.float32)
        mix, source = _mixer_with_source(block.mixer, normed, self.policy.importance_source, cache)
        plan = self._plan(source, lengths, protect, keep, prune_share, counts)
        return plan, residual, mix

    def _plan(self, source, lengths, protect, keep, prune_share, counts) -> ReductionPlan:
        p = self.policy
        if p.method == "utrc":
            scores = importance_scores(source, p.importance)
            return utrc_plan(
                scores, source, lengths, protect, keep, prune_share, p.hidden_strategy, p.residual_strategy, counts
            )
        if p.method == "evit":
            return evit_plan(importance_scores(source, p.importance), lengths, protect, keep, counts)
        if p.method == "tome":
            return tome_plan(source, lengths, protect, keep, counts)
        raise PolicyError(f"method: {p.method!r} has no reduction step")  # dense has no layers


def _mixer_with_source(mixer, normed: torch.Tensor, source: str, cache=None):
    """Run the mixer and also return the tensor importance is read from.

    The SSM output is the input of `out_proj`; Mamba-2's scan output is the first input of its
    gated `norm`. transformers computes both inside `forward` without returning them, so a forward
    pre-hook reads them, for this call only: it is removed before returning, leaving the module as
    it was. If the mixer ran a fused kernel that never calls those modules, nothing is captured and
    we stop rather than silently reduce on the wrong tensor. Mamba-1 on a GPU runs
    `utrc.mamba1_scan`, which returns its SSM output itself.
    """
    if _uses_mamba1_scan(mixer, normed):
        out, ssm_output = mamba1_mixer_forward(mixer, normed, cache)
        if source == "scan_output":  # Policy.check_fits refuses it for Mamba-1; kept as a guard
            raise RuntimeError("scan_output is a Mamba-2 source; Mamba-1 has no gated norm")
        return out, ssm_output if source == "ssm_output" else out
    if source == "mixer_output":
        out = mixer(normed, cache)
        return out, out
    module = mixer.out_proj if source == "ssm_output" else mixer.norm
    captured = []
    handle = module.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        out = mixer(normed, cache)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"could not read the {source} of {type(mixer).__name__}: its forward did not call "
            f"{'out_proj' if source == 'ssm_output' else 'norm'} exactly once (a fused kernel path?); "
            "the policy cannot be applied"
        )
    return out, captured[0]


def _uses_mamba1_scan(mixer, x: torch.Tensor) -> bool:
    """Mamba-1 on a GPU with mamba_ssm: run the scan at a kernel-friendly length (utrc.mamba1_scan)."""
    return x.is_cuda and type(mixer).__name__ == "MambaMixer" and is_mamba_ssm_available()


def _block_forward(block, h: torch.Tensor, cache=None) -> torch.Tensor:
    """A block as transformers runs it (MambaBlock / Mamba2Block.forward); Mamba-1 blocks on a GPU
    with mamba_ssm through `utrc.mamba1_scan` instead of transformers' mixer."""
    if not _uses_mamba1_scan(block.mixer, h):
        return block(h, cache)
    residual = h
    normed = block.norm(h.to(dtype=block.norm.weight.dtype))
    if block.residual_in_fp32:
        residual = residual.to(torch.float32)
    return residual + mamba1_mixer_forward(block.mixer, normed, cache)[0]


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
