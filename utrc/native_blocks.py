"""mamba_ssm's own `MambaLMHeadModel`, run block by block: the GPU path (docs/method.md §7).

mamba_ssm's `Block(hidden_states, residual)` already keeps the two addends of the residual stream
apart: it returns the mixer's output and the stream before that output is added, and the next
block adds them inside its fused add+norm. Those are exactly UTRC's hidden and residual branches,
so a reduction layer shortens the pair a block returns and hands it to the next block unchanged.

Blocks that reduce nothing run as mamba_ssm runs them: `Block.forward`, the fused add+norm, and
each mixer's fused path (Mamba-2 `use_mem_eff_path`, Mamba-1 `mamba_inner_fn` with causal_conv1d).
At a reduction block the importance source is read while keeping as much of the fused path as
possible:

* Mamba-2, `ssm_output` (the input of `out_proj`): the fused conv + scan + gated-norm kernel with
  the output projection left out, then `out_proj` on its result -- the same operations the fused
  path runs, in the same order.
* Mamba-2, `scan_output` (the first input of the gated norm), or any block that fills a decoding
  cache: the mixer's own unfused path (the one `generate` uses for its prefill), whose `norm` and
  `out_proj` calls a forward pre-hook reads for that one call.
* Mamba-1: `mamba1_prefill` below, mamba_ssm's unfused Mamba-1 path with its selective scan run
  where the scan kernel's fast path takes it, which returns the SSM output. Every Mamba-1 block
  whose length is not such a length runs it too: mamba_ssm's scan leaves its vectorised path at
  any other length and makes a shortened sequence slower than a full one.

mamba_ssm imports its CUDA extensions at import time; this module imports it only when a
`NativeBlocks` is built, so it can be imported (not used) on a CPU.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .mamba1_scan import PAD_DT, scan_chunk

_SOURCE_MODULES = {"ssm_output": "out_proj", "scan_output": "norm"}


def is_native_model(model) -> bool:
    """A mamba_ssm `MambaLMHeadModel` (recognised without importing mamba_ssm)."""
    return hasattr(model, "backbone") and hasattr(model.backbone, "embedding") and hasattr(model.config, "ssm_cfg")


class NativeBlocks:
    """The blocks of a mamba_ssm `MambaLMHeadModel` (Mamba or Mamba2 mixers, no MLP, no attention).
    `cache`: a mamba_ssm `InferenceParams` at `seqlen_offset` 0, filled with each block's conv and
    SSM state (what `generate` passes to its prefill)."""

    path = "mamba_ssm"

    def __init__(self, model):
        from mamba_ssm.modules.mamba2 import Mamba2
        from mamba_ssm.modules.mamba_simple import Mamba
        from mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn

        self.model = model
        self.layers = model.backbone.layers
        for i, layer in enumerate(self.layers):
            if getattr(layer, "mlp", None) is not None or not isinstance(layer.mixer, (Mamba, Mamba2)):
                raise TypeError(
                    f"block {i} of this mamba_ssm model is not a plain Mamba / Mamba2 block "
                    f"({type(layer.mixer).__name__}{' + MLP' if getattr(layer, 'mlp', None) is not None else ''}); "
                    "utrc reduces models whose every block is a Mamba or Mamba2 mixer"
                )
        self._Mamba2 = Mamba2
        self._RMSNorm = RMSNorm
        self._layer_norm_fn = layer_norm_fn

    def embed(self, input_ids: torch.Tensor):
        return self.model.backbone.embedding(input_ids), None  # [B, N, D], no residual yet

    def block(self, i: int, hidden: torch.Tensor, residual: torch.Tensor | None, cache=None):
        """Block i -> (mixer output [B, N, D], stream before its add [B, N, D])."""
        layer = self.layers[i]
        if isinstance(layer.mixer, self._Mamba2) or _scan_friendly(hidden.shape[1]):
            return layer(hidden, residual, inference_params=cache)
        normed, residual = self._add_norm(layer.norm, layer, hidden, residual)
        return mamba1_prefill(layer.mixer, normed, cache)[0], residual

    def split_block(self, i: int, hidden: torch.Tensor, residual: torch.Tensor | None, sources, cache=None):
        """Block i, also returning {source: tensor} for each name in `sources`."""
        layer = self.layers[i]
        normed, residual = self._add_norm(layer.norm, layer, hidden, residual)
        if isinstance(layer.mixer, self._Mamba2):
            mix, found = _mamba2_with_sources(layer.mixer, normed, set(sources), cache)
        else:
            mix, ssm_output = mamba1_prefill(layer.mixer, normed, cache)
            # row-major for the reduction step, which reads it token by token (a strided view otherwise)
            found = {"ssm_output": ssm_output.contiguous(), "mixer_output": mix}
        missing = [s for s in sources if s not in found]
        if missing:
            raise RuntimeError(f"{type(layer.mixer).__name__} has no importance source {missing[0]!r}")
        return mix, residual, {s: found[s] for s in sources}

    def final_norm(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """MixerModel.forward after its last block: the last add and the final norm."""
        backbone = self.model.backbone
        normed, _ = self._add_norm(backbone.norm_f, backbone, hidden, residual, prenorm=False)
        return normed

    def lm_head(self, normed: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(normed)  # the model's dtype, as mamba_ssm returns logits

    def _add_norm(self, norm, owner, hidden, residual, prenorm: bool = True):
        """`Block.forward` up to its mixer (and `MixerModel.forward`'s last step with prenorm=False):
        add the pending mixer output to the stream and normalise -> (normed, stream)."""
        if not owner.fused_add_norm:
            stream = hidden if residual is None else hidden + residual
            normed = norm(stream.to(dtype=norm.weight.dtype))
            return normed, stream.to(torch.float32) if owner.residual_in_fp32 else stream
        out = self._layer_norm_fn(
            hidden, norm.weight, norm.bias, residual=residual, prenorm=prenorm,
            residual_in_fp32=owner.residual_in_fp32, eps=norm.eps, is_rms_norm=isinstance(norm, self._RMSNorm),
        )  # fmt: skip
        return out if prenorm else (out, None)


def _scan_friendly(length: int) -> bool:
    """mamba_ssm's selective scan runs its vectorised path at this length."""
    return length % scan_chunk(length) == 0


# --- Mamba-2 -----------------------------------------------------------------------------------


def _mamba2_with_sources(mixer, u: torch.Tensor, sources: set, cache):
    """A mamba_ssm Mamba2 mixer's output and the requested sources (see the module docstring)."""
    if sources <= {"mixer_output"}:
        out = mixer(u, inference_params=cache)
        return out, {"mixer_output": out}
    if cache is None and "scan_output" not in sources and _fusable(mixer):
        from einops import rearrange
        from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

        zxbcdt = mixer.in_proj(u)  # [B, L, 2E + 2GN + H]
        dt_limit = {} if mixer.dt_limit == (0.0, float("inf")) else dict(dt_limit=mixer.dt_limit)
        y = mamba_split_conv1d_scan_combined(
            zxbcdt, rearrange(mixer.conv1d.weight, "d 1 w -> d w"), mixer.conv1d.bias, mixer.dt_bias,
            -torch.exp(mixer.A_log.float()), D=mixer.D, chunk_size=mixer.chunk_size, activation=mixer.activation,
            rmsnorm_weight=mixer.norm.weight, rmsnorm_eps=mixer.norm.eps, outproj_weight=None, outproj_bias=None,
            headdim=mixer.headdim, ngroups=mixer.ngroups, norm_before_gate=mixer.norm_before_gate, **dt_limit,
        )  # fmt: skip  # [B, L, E]: the gated norm's output, i.e. the input of out_proj
        out = mixer.out_proj(y)  # [B, L, D]
        return out, {"ssm_output": y, "mixer_output": out}
    if cache is None:  # the unfused path runs only with inference params: a scratch set, discarded
        from mamba_ssm.utils.generation import InferenceParams

        cache = InferenceParams(max_seqlen=u.shape[1], max_batch_size=u.shape[0])
    with _read_inputs(mixer, sources - {"mixer_output"}) as seen:
        out = mixer(u, inference_params=cache)
    return out, {**seen, "mixer_output": out}


def _fusable(mixer) -> bool:
    """The fused kernel's output without out_proj is the SSM output for this mixer's settings."""
    return (
        mixer.use_mem_eff_path and mixer.rmsnorm and mixer.process_group is None and not mixer.D_has_hdim
        and mixer.d_ssm == mixer.d_inner
    )  # fmt: skip


@contextlib.contextmanager
def _read_inputs(mixer, sources):
    """Forward pre-hooks on the modules whose first input is each source, for one mixer call;
    yields {source: tensor}, checked to be read exactly once when the block exits."""
    seen: dict[str, list] = {name: [] for name in sources}
    handles = [
        getattr(mixer, _SOURCE_MODULES[name]).register_forward_pre_hook(lambda _m, args, log=log: log.append(args[0]))
        for name, log in seen.items()
    ]
    found: dict[str, torch.Tensor] = {}
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
    for name, log in seen.items():
        if len(log) != 1:
            raise RuntimeError(
                f"could not read the {name} of a mamba_ssm Mamba2 mixer: {_SOURCE_MODULES[name]} was called "
                f"{len(log)} times instead of once; the policy cannot be applied"
            )
        found[name] = log[0]


# --- Mamba-1 -----------------------------------------------------------------------------------


def mamba1_prefill(mixer, u: torch.Tensor, cache=None):
    """mamba_ssm's `Mamba.forward` (its unfused branch, in its own channels-first layout) with the
    selective scan run where the scan kernel's fast path takes it: exact at every real position.

    mamba_ssm's scan walks each row in chunks of 2048 steps (fewer for rows of at most 1024) and
    is fast only when the row fills whole chunks. A shortened row (2048 -> 1856 -> ...) does not:
    * without a cache, the rows are laid end to end in one sequence (`_Packed`), each followed by
      reset steps (input 0 and a huge step size: the state is multiplied by exp(-huge) = 0 and
      nothing is added), and the whole is padded to a multiple of the chunk. The scan then costs
      what the batch's real tokens cost, as every other part of the block does.
    * with a cache (a prefill before decoding), each row is padded to the chunk with zero-size
      steps (`utrc.mamba1_scan`), which leave the state unchanged, so the final state is exact.

    mixer: a mamba_ssm `Mamba`; u [B, L, D] the block's normed input; cache: InferenceParams or None
    -> (output [B, L, D], SSM output [B, L, E]: the input of out_proj, a strided view)."""
    from causal_conv1d import causal_conv1d_fn
    from einops import rearrange
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    batch, L, _ = u.shape
    conv_state, ssm_state = _states(mixer, cache, batch) if cache is not None else (None, None)
    xz = rearrange(mixer.in_proj.weight @ rearrange(u, "b l d -> d (b l)"), "d (b l) -> b d l", l=L)  # [B, 2E, L]
    if mixer.in_proj.bias is not None:
        xz = xz + mixer.in_proj.bias.to(dtype=xz.dtype)[:, None]
    x, z = xz.chunk(2, dim=1)  # [B, E, L] each
    del xz
    if conv_state is not None:
        conv_state.copy_(F.pad(x, (mixer.d_conv - L, 0)))  # the last d_conv inputs
    x = causal_conv1d_fn(x, rearrange(mixer.conv1d.weight, "d 1 w -> d w"), mixer.conv1d.bias, activation="silu")
    x_dbl = mixer.x_proj(rearrange(x, "b d l -> (b l) d"))  # [B*L, R + 2N]
    dt, B, C = torch.split(x_dbl, [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    dt = rearrange(mixer.dt_proj.weight @ dt.t(), "d (b l) -> b d l", l=L)  # [B, E, L]; bias goes to the scan
    B = rearrange(B, "(b l) n -> b n l", l=L)  # [B, N, L]
    C = rearrange(C, "(b l) n -> b n l", l=L)
    scan = dict(delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True)
    A, D = -torch.exp(mixer.A_log.float()), mixer.D.float()
    if cache is None and not _scan_friendly(L):
        packed = _Packed(batch, L)
        y = selective_scan_fn(packed.pack(x, 0.0), packed.pack(dt, RESET_DT), A, packed.pack(B, 0.0),
                              packed.pack(C, 0.0), D, z=packed.pack(z, 0.0), **scan)[0]  # [E, Lp]
        # out_proj on the packed rows read column-major: one GEMM, no transposing copy
        out = F.linear(y.t(), mixer.out_proj.weight, mixer.out_proj.bias)  # [Lp, D]
        return packed.rows(out.t()).contiguous(), packed.rows(y)  # [B, L, D], [B, L, E]
    pad = -L % scan_chunk(L)
    if pad:  # padded steps have step size 0: they leave the state as it is and add nothing
        x, z, B, C = (F.pad(t, (0, pad)) for t in (x, z, B, C))
        dt = F.pad(dt, (0, pad), value=PAD_DT)
    y = selective_scan_fn(x, dt, A, B.contiguous(), C.contiguous(), D, z=z, return_last_state=ssm_state is not None,
                          **scan)  # [B, E, L + pad]
    if ssm_state is not None:
        y, last_state = y
        ssm_state.copy_(last_state)
    y = rearrange(y[..., :L], "b d l -> b l d")  # [B, L, E], a view as in mamba_ssm's own path
    return mixer.out_proj(y), y


RESET_DT = 1e30  # a step size after which exp(dt * A) is 0 for any A < -1e-28: the state restarts from 0


class _Packed:
    """B rows of L steps laid end to end in one scan sequence [1, C, Lp]: each row starts at a multiple
    of 8 steps (so every row's slice stays 16-byte aligned) and is followed by at least one reset
    step; the whole is padded with reset steps to a multiple of the scan's chunk."""

    def __init__(self, batch: int, length: int):
        self.B, self.L = batch, length
        self.seg = length + 1 + (-(length + 1) % 8)  # steps per row, resets included
        self.total = batch * self.seg
        self.Lp = self.total + (-self.total % scan_chunk(self.total))

    def pack(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """[B, C, L] -> [1, C, Lp], reset steps set to `fill`."""
        C = t.shape[1]
        out = t.new_empty(1, C, self.Lp)
        rows = out[0, :, : self.total].view(C, self.B, self.seg)  # [C, B, seg]
        rows[:, :, : self.L].copy_(t.transpose(0, 1))
        rows[:, :, self.L :].fill_(fill)
        out[0, :, self.total :].fill_(fill)
        return out

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """[1, C, Lp] or [C, Lp] -> the real steps of every row as [B, L, C] (a strided view)."""
        C = t.shape[-2]
        return t.reshape(C, self.Lp)[:, : self.total].view(C, self.B, self.seg)[:, :, : self.L].permute(1, 2, 0)


def _states(mixer, cache, batch: int):
    """This layer's (conv_state, ssm_state) in `cache`, allocated as the mixer allocates them."""
    states = cache.key_value_memory_dict
    if mixer.layer_idx not in states:
        states[mixer.layer_idx] = mixer.allocate_inference_cache(batch, cache.max_seqlen)
    return states[mixer.layer_idx]
