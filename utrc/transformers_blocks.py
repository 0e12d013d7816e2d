"""transformers' `MambaForCausalLM` / `Mamba2ForCausalLM`, run block by block: the CPU path and
the reference every other path is tested against (docs/method.md §7).

A transformers block computes `stream + mixer(norm(stream))` and returns the sum. The reduced
forward needs the two addends apart at a reduction layer, so `split_block` runs the block's norm
and mixer itself and returns `(mixer output, stream)` un-added, like mamba_ssm's `Block`; the next
`block` call adds them. Every block that reduces nothing runs as transformers runs it, so a policy
that removes nothing reproduces the model bit for bit.

Importance sources (docs/method.md §1): the SSM output is the input of the mixer's `out_proj`,
Mamba-2's scan output the first input of its gated `norm`. transformers computes both inside
`forward` without returning them, so a forward pre-hook reads them for one call only. If a kernel
path never calls those modules, nothing is read and the forward stops rather than reduce on the
wrong tensor.
"""

from __future__ import annotations

import torch

from .kernels import is_mamba_ssm_available
from .mamba1_scan import mamba1_mixer_forward
from .source_hooks import SOURCE_MODULES, module_inputs


class TransformersBlocks:
    """The blocks of a transformers Mamba / Mamba-2 causal LM. `cache`: a transformers
    `DynamicCache(config=model.config)`, filled with each block's conv and recurrent state."""

    path = "transformers"

    def __init__(self, model):
        self.model = model
        self.layers = model.backbone.layers

    def embed(self, input_ids: torch.Tensor):
        return self.model.backbone.embeddings(input_ids), None  # [B, N, D], no pending residual

    def stream(self, hidden, residual, cache=None):
        return hidden, residual  # the stream between blocks is always [B, N, D] here

    def rows(self, hidden, residual):
        return hidden, residual

    def block(self, i: int, hidden: torch.Tensor, residual: torch.Tensor | None, cache=None):
        """Block i as transformers runs it -> (stream [B, N, D], None)."""
        block = self.layers[i]
        stream = hidden if residual is None else residual + hidden  # the add a reduction layer left pending
        if not _uses_mamba1_scan(block.mixer, stream):
            return block(stream, cache), None
        mix, before, _ = self.split_block(i, stream, None, (), cache)
        return before + mix, None

    def split_block(self, i: int, hidden: torch.Tensor, residual: torch.Tensor | None, sources, cache=None):
        """Block i without its final add -> (mixer output [B, N, D], stream before the add [B, N, D],
        {source: tensor} for each name in `sources`)."""
        block = self.layers[i]
        stream = hidden if residual is None else residual + hidden
        normed = block.norm(stream.to(dtype=block.norm.weight.dtype))
        if block.residual_in_fp32:
            stream = stream.to(torch.float32)
        mix, found = _mixer_with_sources(block.mixer, normed, sources, cache)
        return mix, stream, found

    def final_norm(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        stream = hidden if residual is None else residual + hidden
        return self.model.backbone.norm_f(stream)

    def lm_head(self, normed: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        return head(normed.to(head.weight.dtype))


def _mixer_with_sources(mixer, normed: torch.Tensor, sources, cache=None):
    """Run the mixer and return (output, {source: tensor}) for the requested importance sources."""
    if _uses_mamba1_scan(mixer, normed):  # returns its SSM output itself
        out, ssm_output = mamba1_mixer_forward(mixer, normed, cache)
        return out, _pick({"ssm_output": ssm_output, "mixer_output": out}, sources, mixer)
    with module_inputs(mixer, [name for name in sources if name in SOURCE_MODULES]) as found:
        out = mixer(normed, cache)
    found["mixer_output"] = out
    return out, _pick(found, sources, mixer)


def _pick(found: dict, sources, mixer) -> dict:
    missing = [s for s in sources if s not in found]
    if missing:
        raise RuntimeError(f"{type(mixer).__name__} has no importance source {missing[0]!r}")
    return {s: found[s] for s in sources}


def _uses_mamba1_scan(mixer, x: torch.Tensor) -> bool:
    """Mamba-1 on a GPU with mamba_ssm: run the scan at a kernel-friendly length (utrc.mamba1_scan)."""
    return x.is_cuda and type(mixer).__name__ == "MambaMixer" and is_mamba_ssm_available()
