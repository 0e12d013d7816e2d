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
* Mamba-1: the unfused steps of mamba_ssm's `mamba_inner_fn` (`mamba1_packed`, `mamba1_prefill`),
  which return the SSM output.

mamba_ssm's Mamba-1 selective scan walks each row in chunks of 2048 steps and is fast only when a
row fills whole chunks, so a shortened row (2048 -> 1856 -> ...) costs what a full one costs. After a
reduction, therefore (and from the start at such a length), a Mamba-1 stream is kept *packed*
between blocks (`PackedRows`): the batch rows laid end to end in one sequence, each after a few
zero rows. Every block then runs mamba_ssm's operations on the packed sequence -- in_proj, causal
conv, x_proj, dt_proj, the scan, out_proj: the projections on the packed rows, the scan on them
rounded up to whole chunks -- with no copy between blocks; only a reduction layer unpacks its two
branches, and packs the reduced ones again. A prefill that fills a decoding cache reads each row's
final states out of the same scan (`mamba1_packed`).

mamba_ssm imports its CUDA extensions at import time; this module imports it only when a
`NativeBlocks` is built, so it can be imported (not used) on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mamba1_scan import PAD_DT, scan_chunk
from .source_hooks import module_inputs


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
        mixers = [layer.mixer for layer in self.layers]
        # Packing needs zero rows to stay zero through a block: no bias in in_proj or out_proj.
        self._packable = all(
            isinstance(m, Mamba) and m.in_proj.bias is None and m.out_proj.bias is None for m in mixers
        )
        self._gap = max(m.d_conv - 1 for m in mixers) if self._packable else 0
        self._d_state = max(m.d_state for m in mixers) if self._packable else 0
        self._RMSNorm = RMSNorm
        self._layer_norm_fn = layer_norm_fn

    def embed(self, input_ids: torch.Tensor):
        return self.model.backbone.embedding(input_ids), None  # [B, N, D], no residual yet

    def stream(self, hidden, residual, cache=None):
        """The layout the stream keeps up to the next reduction: Mamba-1 rows at a length the scan
        runs slowly are packed (`PackedRows`); anything else is left as it is. With a cache, each
        row is followed by d_state read-out steps (`mamba1_packed`)."""
        if isinstance(hidden, Packed) or not self._packable:
            return hidden, residual
        batch, L, _ = hidden.shape
        if _scan_friendly(L):
            return hidden, residual
        read_out = 0 if cache is None else self._d_state
        layout = PackedRows(batch, L, max(self._gap, read_out + 1), hidden.device, tail=read_out)
        packed_residual = None if residual is None else Packed(layout.pack(residual), layout)
        return Packed(layout.pack(hidden), layout), packed_residual

    def rows(self, hidden, residual):
        """The stream as [B, N, D] tensors (views into a packed stream)."""
        if not isinstance(hidden, Packed):
            return hidden, residual
        layout = hidden.layout
        return layout.rows(hidden.data), None if residual is None else layout.rows(residual.data)

    def block(self, i: int, hidden, residual, cache=None):
        """Block i -> (mixer output [B, N, D], stream before its add [B, N, D]), or both packed."""
        layer = self.layers[i]
        if isinstance(hidden, Packed):
            normed, before = self._add_norm(layer.norm, layer, hidden.data, _data(residual))
            out, _ = mamba1_packed(layer.mixer, normed, hidden.layout, cache)
            return Packed(out, hidden.layout), Packed(before, hidden.layout)
        if isinstance(layer.mixer, self._Mamba2) or _scan_friendly(hidden.shape[1]):
            return layer(hidden, residual, inference_params=cache)
        normed, residual = self._add_norm(layer.norm, layer, hidden, residual)
        return mamba1_prefill(layer.mixer, normed, cache)[0], residual

    def split_block(self, i: int, hidden, residual, sources, cache=None):
        """Block i, also returning {source: tensor} for each name in `sources`; always [B, N, *]."""
        layer = self.layers[i]
        if isinstance(hidden, Packed):
            packed = hidden.layout
            normed, before = self._add_norm(layer.norm, layer, hidden.data, _data(residual))
            out, y = mamba1_packed(layer.mixer, normed, packed, cache)
            mix, residual = packed.rows(out), packed.rows(before)
            # row-major for the reduction step, which reads it token by token
            found = {"ssm_output": packed.rows_channels_first(y).contiguous(), "mixer_output": mix}
        else:
            normed, residual = self._add_norm(layer.norm, layer, hidden, residual)
            if isinstance(layer.mixer, self._Mamba2):
                mix, found = _mamba2_with_sources(layer.mixer, normed, set(sources), cache)
            else:
                mix, ssm_output = mamba1_prefill(layer.mixer, normed, cache)
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
    with module_inputs(mixer, sources - {"mixer_output"}) as seen:
        out = mixer(u, inference_params=cache)
    return out, {**seen, "mixer_output": out}


def _fusable(mixer) -> bool:
    """The fused kernel's output without out_proj is the SSM output for this mixer's settings."""
    return (
        mixer.use_mem_eff_path and mixer.rmsnorm and mixer.process_group is None and not mixer.D_has_hdim
        and mixer.d_ssm == mixer.d_inner
    )  # fmt: skip


# --- Mamba-1 -----------------------------------------------------------------------------------


def mamba1_prefill(mixer, u: torch.Tensor, cache=None):
    """mamba_ssm's `Mamba.forward` (its unfused branch, in its own channels-first layout) with each
    row padded to the scan's chunk with zero-size steps (`utrc.mamba1_scan`), which leave the state
    unchanged: exact at every real position, and the final state a cache keeps is exact.

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
    pad = -L % scan_chunk(L)
    if pad:  # padded steps have step size 0: they leave the state as it is and add nothing
        x, z, B, C = (F.pad(t, (0, pad)) for t in (x, z, B, C))
        dt = F.pad(dt, (0, pad), value=PAD_DT)
    y = selective_scan_fn(x, dt, -torch.exp(mixer.A_log.float()), B.contiguous(), C.contiguous(), mixer.D.float(),
                          z=z, delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True,
                          return_last_state=ssm_state is not None)  # [B, E, L + pad]
    if ssm_state is not None:
        y, last_state = y
        ssm_state.copy_(last_state)
    y = rearrange(y[..., :L], "b d l -> b l d")  # [B, L, E], a view as in mamba_ssm's own path
    return mixer.out_proj(y), y


def mamba1_packed(mixer, u: torch.Tensor, packed: "PackedRows", cache=None):
    """`mamba_inner_fn`'s steps on a packed stream, with one change: at each row's last zero row the
    scan restarts (input 0, step size RESET_DT), so no state crosses from one row into the next.

    Why the rows stay exact: a zero row of the stream has normed input 0, so in_proj (no bias) gives
    x = 0 and z = 0 there. The causal conv of a row's first tokens therefore sees zeros before them,
    as at the start of a sequence (the gap is at least d_conv - 1 rows); the state is 0 after the
    restart; and every zero row's output is gated by silu(0) = 0, so out_proj returns 0 there and
    the zero rows stay zero for the next block.

    With a cache (a prefill before decoding), each row's final state is read out of the scan's
    ungated output: the d_state steps after a row have step size 0 (the state stays as it is),
    input 0 and C = the n-th unit vector, so step n outputs C . h = h[:, n] exactly. The conv state
    is the last d_conv inputs of each row, zero rows before a short row included.

    The stream holds T rows; the scan runs over `packed.scan_steps` >= T steps (whole chunks), so the
    scan's inputs are written into buffers that long and every projection runs on the T rows only.
    The steps past T come after every row: whatever they hold reaches no row's output.

    u [1, T, D] the block's normed input, packed -> (output [1, T, D], SSM output [1, E, S]) with
    S = packed.scan_steps."""
    import selective_scan_cuda
    from causal_conv1d import causal_conv1d_fn
    from einops import rearrange

    T, S, E, N = packed.T, packed.scan_steps, mixer.d_inner, mixer.d_state
    xz = u.new_empty(2 * E, S)  # [2E, S]
    torch.mm(mixer.in_proj.weight, u[0].t(), out=xz[:, :T])
    if cache is not None:
        conv_state, ssm_state = _states(mixer, cache, packed.B)
        last = packed.row_ends[:, None] + torch.arange(-mixer.d_conv, 0, device=u.device)  # [B, d_conv]
        conv_state.copy_(xz[:E][:, last].transpose(0, 1))  # [B, E, d_conv]
    x = causal_conv1d_fn(xz[None, :E], rearrange(mixer.conv1d.weight, "d 1 w -> d w"), mixer.conv1d.bias,
                         activation="silu")  # [1, E, S]
    x_dbl = F.linear(x[0, :, :T].t(), mixer.x_proj.weight)  # [T, R + 2N]
    dt_low, B_rows, C_rows = torch.split(x_dbl, [mixer.dt_rank, N, N], dim=-1)
    dt = u.new_empty(1, E, S)
    torch.mm(mixer.dt_proj.weight, dt_low.t(), out=dt[0, :, :T])  # bias goes to the scan
    B, C = u.new_empty(1, 1, N, S), u.new_empty(1, 1, N, S)
    B[0, 0, :, :T].copy_(B_rows.t())
    C[0, 0, :, :T].copy_(C_rows.t())
    x.index_fill_(2, packed.restarts, 0.0)
    dt.index_fill_(2, packed.restarts, RESET_DT)
    if cache is not None:
        read = packed.row_ends[:, None] + torch.arange(N, device=u.device)  # [B, N] the steps after each row
        x.index_fill_(2, read.flatten(), 0.0)
        dt.index_fill_(2, read.flatten(), PAD_DT)
        C.index_fill_(3, read.flatten(), 0.0)
        C[0, 0].index_put_((torch.arange(N, device=u.device).repeat(packed.B), read.flatten()),
                           torch.ones((), dtype=C.dtype, device=u.device))
    A, D = -torch.exp(mixer.A_log.float()), mixer.D.float()
    z = xz[None, E:]  # [1, E, S]
    # the kernel's own entry point (as mamba_inner_fn calls it), for the ungated output too
    ungated, _, y = selective_scan_cuda.fwd(x, dt, A, B, C, D, z, mixer.dt_proj.bias.float(), True)  # [1, E, S]
    if cache is not None:
        ssm_state.copy_(ungated[0][:, read].transpose(0, 1))  # [B, E, N]
    out = F.linear(y[0, :, :T].t(), mixer.out_proj.weight)  # [T, D]
    return out[None], y


RESET_DT = 1e30  # a step size after which exp(dt * A) is 0 for any A < -1e-28: the state restarts from 0


class PackedRows:
    """B rows of L tokens laid end to end in one sequence of T rows: each row is preceded by `gap`
    or more zero rows (so it starts at a multiple of 8 rows and every row's slice stays 16-byte
    aligned), and `tail` zero rows follow the last. The scan runs over `scan_steps`: T rounded up
    to whole chunks of the scan."""

    def __init__(self, batch: int, length: int, gap: int, device, tail: int = 0):
        self.B = batch
        self.gap = max(gap, 1) + (-(max(gap, 1) + length) % 8)  # zero rows before each row
        self.seg = self.gap + length  # rows per batch row, zero rows included
        self.T = batch * self.seg + tail
        self.scan_steps = self.T + (-self.T % scan_chunk(self.T))
        starts = torch.arange(batch, device=device) * self.seg
        self.restarts = starts + (self.gap - 1)  # [B] each row's last zero row
        self.row_ends = starts + self.seg  # [B] the step after each row

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [1, T, C], zero rows 0."""
        out = t.new_zeros(1, self.T, t.shape[-1])
        self.rows(out).copy_(t)
        return out

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """[1, T, C] -> the real rows as [B, L, C] (a view)."""
        return t[0, : self.B * self.seg].view(self.B, self.seg, t.shape[-1])[:, self.gap :]

    def rows_channels_first(self, t: torch.Tensor) -> torch.Tensor:
        """[1, C, T or more] -> the real rows as [B, L, C] (a strided view)."""
        C = t.shape[1]
        return t[0, :, : self.B * self.seg].view(C, self.B, self.seg)[:, :, self.gap :].permute(1, 2, 0)


@dataclass(frozen=True)
class Packed:
    """One branch of a packed stream: `data` [1, T, D] laid out by `layout`."""

    data: torch.Tensor
    layout: PackedRows


def _data(branch):
    return None if branch is None else branch.data


def _states(mixer, cache, batch: int):
    """This layer's (conv_state, ssm_state) in `cache`, allocated as the mixer allocates them."""
    states = cache.key_value_memory_dict
    if mixer.layer_idx not in states:
        states[mixer.layer_idx] = mixer.allocate_inference_cache(batch, cache.max_seqlen)
    return states[mixer.layer_idx]
