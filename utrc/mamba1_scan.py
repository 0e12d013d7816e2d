"""The Mamba-1 mixer's prefill with mamba_ssm's selective scan run at a length its kernel likes.

Why: mamba_ssm's `selective_scan_fwd` walks a row in chunks of kNThreads x kNItems tokens (2048
for sequences over 1024 tokens) and takes its vectorised loads only when the length is a multiple
of the chunk (`kIsEvenLen`). A reduced sequence (2048 -> 1990 -> ...) leaves that path. On the
H100 at the Mamba-2.8B shape (bf16, batch 16) one scan took 4.7 ms at a reduced length against
2.9 ms at 2048, which made the 10 % budget slower than dense (docs/benchmarks.md).

So the scan's inputs are right-padded to the next multiple of the chunk, the padded steps with
dt = -1e4: after softplus the step size is 0, so a padded step multiplies the state by exp(0) = 1
and adds nothing. Outputs at real positions are unchanged (the scan is causal) and the final
state, the one a cache keeps for decoding, is exact.

Everything else is transformers' `MambaMixer` prefill (in_proj, causal depthwise conv, x_proj,
dt_proj, out_proj) on the mixer's own parameters; nothing is copied or patched. `ReducedModel`
uses it for Mamba-1 blocks on a GPU when mamba_ssm is importable; the transformers module
remains the reference it is tested against (`tests/test_reduced_model.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_DT = -1e4  # softplus(-1e4 + bias) == 0.0 in float32


def scan_chunk(length: int) -> int:
    """Tokens per chunk of mamba_ssm's selective_scan_fwd launch for a sequence of `length`
    (selective_scan_fwd_launch: 32x4, 32x8, 32x16, 64x16, then 128x16 threads x items)."""
    for limit in (128, 256, 512, 1024):
        if length <= limit:
            return limit
    return 2048


def mamba1_mixer_forward(mixer, hidden_states: torch.Tensor, cache=None, selective_scan=None):
    """`mixer`: a transformers MambaMixer; hidden_states [B, L, D] (the block's normed input) ->
    (output [B, L, D], SSM output [B, L, E]: the input of out_proj). `cache`: a
    transformers cache to fill with the conv and recurrent states. `selective_scan`: the scan
    function (default mamba_ssm's `selective_scan_fn`)."""
    from transformers.models.mamba.modeling_mamba import causal_conv1d_fn

    if selective_scan is None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as selective_scan

    L = hidden_states.shape[1]
    N, R = mixer.ssm_state_size, mixer.time_step_rank
    # Token-major, as transformers computes (its GEMMs keep the model width as leading dimension, so
    # any reduced length runs cuBLAS's fast kernels). A channels-first variant, as mamba_ssm's Mamba
    # computes, saved the scan's input copies but hit align-1 GEMMs at reduced lengths and was
    # slower than dense (docs/benchmarks.md).
    xz = mixer.in_proj(hidden_states).transpose(1, 2)  # [B, 2E, L]
    x, z = xz.chunk(2, dim=1)  # [B, E, L] each
    if cache is not None:
        x = cache.update_conv_state(x, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    x = causal_conv1d_fn(x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, activation=mixer.activation)
    x = x[:, :, -L:]  # [B, E, L]
    dt, B, C = torch.split(mixer.x_proj(x.transpose(1, 2)), [R, N, N], dim=-1)  # [B, L, R], [B, L, N] x 2
    dt = mixer.dt_proj.weight @ dt.transpose(1, 2)  # [B, E, L]; the bias goes to the scan
    B, C = B.transpose(1, 2), C.transpose(1, 2)  # [B, N, L]
    pad = -L % scan_chunk(L)
    if pad:
        x, z, B, C = (F.pad(t, (0, pad)) for t in (x, z, B, C))
        dt = F.pad(dt, (0, pad), value=PAD_DT)
    out = selective_scan(
        x, dt, -torch.exp(mixer.A_log.float()), B, C, mixer.D.float(), z=z,
        delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True, return_last_state=cache is not None,
    )  # fmt: skip
    if cache is not None:
        out, state = out
        cache.update_recurrent_state(state, mixer.layer_idx)
    # contiguous: out_proj would copy it so anyway, and the reduction step reads it row by row
    y = out[:, :, :L].transpose(1, 2).to(hidden_states.dtype).contiguous()  # [B, L, E]
    return mixer.out_proj(y), y
