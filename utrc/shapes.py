"""The dimensions of a Mamba / Mamba-2 language model that the FLOPs model and policy checks need.

`ModelShape` is read from a transformers config (`MambaConfig` / `Mamba2Config`) or taken from
`PAPER_SHAPES`, the published configs of the `state-spaces/*` checkpoints, so FLOPs can be
estimated for a model that cannot be downloaded here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ARCHITECTURES = ("mamba", "mamba2")


@dataclass(frozen=True)
class ModelShape:
    architecture: str  # "mamba" (Mamba-1) | "mamba2"
    n_layer: int
    d_model: int
    vocab_size: int
    d_inner: int  # expand * d_model
    d_state: int
    d_conv: int = 4
    dt_rank: int = 0  # Mamba-1 only
    headdim: int = 64  # Mamba-2 only
    ngroups: int = 1  # Mamba-2 only
    chunk_size: int = 256  # Mamba-2 only

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers `MambaConfig` or `Mamba2Config`."""
        model_type = getattr(config, "model_type", None)
        d_model = config.hidden_size
        d_inner = int(config.expand * d_model)
        if model_type not in ("mamba", "mamba2"):
            raise ValueError(f"not a Mamba or Mamba-2 config: model_type={model_type!r}")
        common = dict(
            architecture=model_type,
            n_layer=config.num_hidden_layers,
            d_model=d_model,
            vocab_size=config.vocab_size,
            d_inner=d_inner,
            d_state=config.state_size,
            d_conv=config.conv_kernel,
        )
        if model_type == "mamba":
            return cls(**common, dt_rank=int(config.time_step_rank))
        return cls(**common, headdim=config.head_dim, ngroups=config.n_groups, chunk_size=config.chunk_size)

    @classmethod
    def of(cls, model) -> "ModelShape":
        """The shape of a loaded model: a transformers Mamba / Mamba-2 causal LM (or anything with
        such a `config`), or a mamba_ssm `MambaLMHeadModel` (read off its modules)."""
        if hasattr(model.config, "ssm_cfg") and hasattr(model, "backbone"):
            return cls._of_mamba_ssm(model)
        return cls.from_config(model.config)

    @classmethod
    def _of_mamba_ssm(cls, model) -> "ModelShape":
        mixer = model.backbone.layers[0].mixer
        common = dict(
            n_layer=len(model.backbone.layers),
            d_model=model.backbone.embedding.embedding_dim,
            vocab_size=model.backbone.embedding.num_embeddings,  # as stored: padded
            d_inner=mixer.d_inner,
            d_state=mixer.d_state,
            d_conv=mixer.d_conv,
        )
        if hasattr(mixer, "headdim"):  # mamba_ssm's Mamba2
            return cls("mamba2", headdim=mixer.headdim, ngroups=mixer.ngroups, chunk_size=mixer.chunk_size, **common)
        return cls("mamba", dt_rank=mixer.dt_rank, **common)


def _mamba1(n_layer: int, d_model: int) -> ModelShape:
    # mamba_ssm defaults: expand 2, d_state 16, d_conv 4, dt_rank ceil(d_model / 16); vocab padded to 50280
    return ModelShape("mamba", n_layer, d_model, 50280, 2 * d_model, 16, 4, math.ceil(d_model / 16))


def _mamba2(n_layer: int, d_model: int) -> ModelShape:
    # mamba_ssm Mamba2 defaults: expand 2, d_state 128, headdim 64, ngroups 1, chunk 256; vocab padded to 50288
    return ModelShape("mamba2", n_layer, d_model, 50288, 2 * d_model, 128, 4, 0, 64, 1, 256)


# The published config.json of each state-spaces checkpoint (d_model, n_layer).
PAPER_SHAPES: dict[str, ModelShape] = {
    "state-spaces/mamba-130m": _mamba1(24, 768),
    "state-spaces/mamba-370m": _mamba1(48, 1024),
    "state-spaces/mamba-790m": _mamba1(48, 1536),
    "state-spaces/mamba-1.4b": _mamba1(48, 2048),
    "state-spaces/mamba-2.8b": _mamba1(64, 2560),
    "state-spaces/mamba2-130m": _mamba2(24, 768),
    "state-spaces/mamba2-370m": _mamba2(48, 1024),
    "state-spaces/mamba2-780m": _mamba2(48, 1536),
    "state-spaces/mamba2-1.3b": _mamba2(48, 2048),
    "state-spaces/mamba2-2.7b": _mamba2(64, 2560),
}
