"""mamba_ssm's own `MambaLMHeadModel`: building it, and decoding after a reduced prefill (docs/method.md §7).

On a GPU with mamba_ssm installed, `utrc.load_model(ref, device="cuda")` returns mamba_ssm's model,
what a user of the `state-spaces/*` checkpoints runs: state-spaces checkpoints load as they are,
Hugging Face-format checkpoints are converted (`utrc.mamba_ssm_format`). transformers' modules stay
the CPU path and the reference.

`generate(reduced, input_ids, max_length)` decodes through mamba_ssm's own `decode` -- its
`InferenceParams` and, with `cg=True`, its CUDA-graph decoding, the machinery behind
`MambaLMHeadModel.generate(cg=True)` -- with the prefill run by the reduced model. Decoding then
continues from the conv and SSM states the reduced prefill left (decoding is never reduced:
docs/method.md §1).
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import torch

from .mamba_ssm_format import transformers_to_mamba_ssm, weights_mismatch

CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])


def native_model(config: dict, state: dict, device, dtype: torch.dtype):
    """A mamba_ssm `MambaLMHeadModel` from a mamba_ssm config.json's content and state dict, in eval
    mode on `device`. Parameters are created as mamba_ssm creates them (its `D` stays float32),
    then filled from `state`; a key that does not fit is an error naming it."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    fields = {f.name for f in dataclasses.fields(MambaConfig)}
    config = MambaConfig(**{k: v for k, v in config.items() if k in fields})
    model = MambaLMHeadModel(config, device=device, dtype=dtype)
    expected = model.state_dict()
    missing, unknown = set(expected) - set(state), set(state) - set(expected)
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unknown or mismatched:
        raise weights_mismatch("the mamba_ssm weights", MambaLMHeadModel, unknown, missing, mismatched)
    model.load_state_dict(state, strict=True)
    return model.eval()


def from_transformers(model, device=None, dtype: torch.dtype | None = None):
    """mamba_ssm's `MambaLMHeadModel` with the weights of a transformers Mamba / Mamba-2 causal LM
    (default: on its device, in its dtype). The transformers model is not changed."""
    config, state = transformers_to_mamba_ssm(model)
    first = next(model.parameters())
    return native_model(config, state, device or first.device, dtype or first.dtype)


class _ReducedPrefill:
    """What mamba_ssm's `decode` uses of a model, with the prefill run by a `ReducedModel`.

    `decode` calls the model with `inference_params.seqlen_offset == 0` once, for the prompt, and
    after that for single tokens (eagerly, or through the CUDA graphs it captures by calling the
    model too). The first goes to the reduced model with the cache, the others to mamba_ssm's model.
    `decode` keeps its graph cache on this object (`_decoding_cache`), never on the user's model."""

    def __init__(self, reduced):
        self.reduced = reduced
        self.model = reduced.model

    def parameters(self):
        return self.model.parameters()

    def allocate_inference_cache(self, *args, **kwargs):
        return self.model.allocate_inference_cache(*args, **kwargs)

    def __call__(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0):
        if inference_params is None or inference_params.seqlen_offset > 0:
            return self.model(input_ids, position_ids=position_ids, inference_params=inference_params,
                              num_last_tokens=num_last_tokens)
        out = self.reduced(input_ids, protect_last=1, cache=inference_params, last_logits_only=True)
        return CausalLMOutput(logits=out.logits)  # [B, 1, V]


def decoder(reduced) -> _ReducedPrefill:
    """A model for mamba_ssm's `decode`: keep it to reuse its captured CUDA graphs across calls."""
    if reduced.path != "mamba_ssm":
        raise TypeError("mamba_ssm's decoding needs a mamba_ssm model (utrc.load_model(ref, device='cuda'))")
    return _ReducedPrefill(reduced)


def generate(reduced_or_decoder, input_ids: torch.Tensor, max_length: int, *, cg: bool = True,
             **sampling) -> torch.Tensor:
    """Greedy (default: top_k=1) or sampled decoding after a reduced prefill: mamba_ssm's own
    `decode` with `cg` CUDA-graph decoding. input_ids [B, N] unpadded -> sequences [B, max_length].
    Pass the object `decoder(reduced)` returns to keep the captured graphs between calls."""
    from mamba_ssm.utils.generation import decode

    model = reduced_or_decoder if isinstance(reduced_or_decoder, _ReducedPrefill) else decoder(reduced_or_decoder)
    sampling.setdefault("top_k", 1)
    with torch.inference_mode():
        return decode(input_ids, model, max_length, cg=cg, **sampling).sequences
