"""The mamba_ssm on-disk checkpoint format, converted to and from transformers (docs/method.md §7).

mamba_ssm (``state-spaces/*`` on the hub) stores a ``MambaLMHeadModel`` as

* ``config.json``: mamba_ssm 2.x ``MambaConfig`` fields (``d_model``, ``n_layer``,
  ``vocab_size``, ``pad_vocab_size_multiple``, ``tie_embeddings``, ``residual_in_fp32``, ...)
  with the mixer's shape in ``ssm_cfg`` (``layer``: ``"Mamba1"`` / ``"Mamba2"``, ``d_state``,
  ``d_conv``, ``expand``, ``headdim``, ...); no norm epsilon (always 1e-5);
* ``pytorch_model.bin``: a plain dict of tensors named as ``MambaLMHeadModel.state_dict()``.

`mamba_ssm_to_transformers` turns such a config and state dict into a transformers
``MambaForCausalLM`` / ``Mamba2ForCausalLM``; `save_mamba_ssm_checkpoint` writes the inverse.
Weight names are shared except ``backbone.embedding.weight`` (mamba_ssm) <->
``backbone.embeddings.weight`` (transformers); with tied embeddings ``lm_head.weight`` is the
embedding tensor (mamba_ssm's state dict carries both names). Every other key
(``backbone.layers.N.norm.weight``, ``backbone.layers.N.mixer.*``, ``backbone.norm_f.weight``)
maps one to one, and any config field or weight that does not fit is an error naming it.

Safety: configs are JSON values, checked and never evaluated; this module never reads weight
files itself (`utrc.loading` reads them with ``weights_only=True`` or safetensors) and writes
only tensors, so the output loads with ``weights_only=True``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write_json

__all__ = ["mamba_ssm_to_transformers", "save_mamba_ssm_checkpoint", "transformers_to_mamba_ssm"]

# mamba_ssm's top-level MambaConfig fields (mamba_ssm 2.x, models/config_mamba.py) and defaults.
_SSM_TOP_DEFAULTS: dict[str, Any] = {
    "d_model": 2560,
    "d_intermediate": 0,
    "n_layer": 64,
    "vocab_size": 50277,
    "ssm_cfg": {},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": True,
}
_SSM_NORM_EPS = 1e-5  # mamba_ssm's MixerModel / RMSNormGated default; not in its config

# ssm_cfg keys of mamba_ssm's Mamba (Mamba-1) / Mamba2 modules that only affect initialisation,
# kernel choice or parallelism: accepted and ignored (or mapped to transformers' init fields).
_MAMBA1_IGNORED = {"use_fast_path", "layer_idx", "device", "dtype"}
_MAMBA2_IGNORED = {
    "conv_init",
    "A_init_range",
    "use_mem_eff_path",
    "layer_idx",
    "process_group",
    "sequence_parallel",
    "device",
    "dtype",
}


def _short_list(names, limit: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


def weights_mismatch(what: str, cls, unknown, missing, mismatched=()) -> ValueError:
    """The error for a state dict that does not fit the model `cls` built from its config.json."""
    parts = []
    if unknown:
        parts.append(f"unknown keys: {_short_list(unknown)}")
    if missing:
        parts.append(f"missing keys: {_short_list(missing)}")
    if mismatched:
        parts.append(f"shape mismatches: {_short_list([str(m) for m in mismatched], 10)}")
    return ValueError(f"{what} do not match a {cls.__name__} built from its config.json; " + "; ".join(parts))


# --------------------------------------------------------------------------------------------
# mamba_ssm format -> transformers config
# --------------------------------------------------------------------------------------------


def _mamba_ssm_config(raw: dict, architecture: str, vocab_rows: int, directory: Path):
    """A transformers MambaConfig / Mamba2Config equivalent to a mamba_ssm config.json."""
    from transformers import Mamba2Config, MambaConfig

    where = f"{directory}/config.json"
    unknown = {k for k in raw if k not in _SSM_TOP_DEFAULTS and not k.startswith("_")}
    if unknown:
        raise ValueError(f"{where}: unknown mamba_ssm config fields {_short_list(unknown)}")
    cfg = {**_SSM_TOP_DEFAULTS, **raw}
    ssm_cfg = dict(cfg["ssm_cfg"] or {})
    ssm_cfg.pop("layer", None)

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"{where}: {msg}; transformers' Mamba modules cannot represent this model")

    def number(name: str, value, kind=int):
        """A config value as an int (whole numbers only) or a float, else an error naming the field."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (kind is int and not float(value).is_integer()):
            raise ValueError(f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        return kind(value)

    need(number("d_intermediate", cfg["d_intermediate"] or 0) == 0,
         f"d_intermediate={cfg['d_intermediate']} (an MLP after each mixer)")
    need(not cfg["attn_layer_idx"], f"attn_layer_idx={cfg['attn_layer_idx']} (attention layers)")
    need(bool(cfg["rms_norm"]), "rms_norm=false (LayerNorm instead of RMSNorm)")

    d_model = number("d_model", cfg["d_model"])
    n_layer = number("n_layer", cfg["n_layer"])
    mult = max(1, number("pad_vocab_size_multiple", cfg["pad_vocab_size_multiple"] or 1))
    vocab = number("vocab_size", cfg["vocab_size"])
    padded = vocab + (-vocab) % mult
    if vocab_rows != padded:
        raise ValueError(
            f"{where}: vocab_size {vocab} padded to a multiple of {mult} is {padded}, but the "
            f"embedding weight has {vocab_rows} rows"
        )
    common = dict(
        vocab_size=vocab_rows,  # the embedding as stored (already padded)
        hidden_size=d_model,
        num_hidden_layers=n_layer,
        layer_norm_epsilon=_SSM_NORM_EPS,
        residual_in_fp32=bool(cfg["residual_in_fp32"]),
        tie_word_embeddings=bool(cfg["tie_embeddings"]),
        hidden_act="silu",
    )

    def pop(key, default):
        return ssm_cfg.pop(key, default)

    def pop_number(key, default, kind=int):
        return number(f"ssm_cfg.{key}", pop(key, default), kind)

    if architecture == "mamba":
        kw = dict(
            state_size=pop_number("d_state", 16),
            conv_kernel=pop_number("d_conv", 4),
            expand=pop_number("expand", 2),
            use_bias=bool(pop("bias", False)),
            use_conv_bias=bool(pop("conv_bias", True)),
            time_step_min=pop_number("dt_min", 0.001, float),
            time_step_max=pop_number("dt_max", 0.1, float),
            time_step_init_scheme=str(pop("dt_init", "random")),
            time_step_scale=pop_number("dt_scale", 1.0, float),
            time_step_floor=pop_number("dt_init_floor", 1e-4, float),
        )
        dt_rank = pop("dt_rank", "auto")
        kw["time_step_rank"] = math.ceil(d_model / 16) if dt_rank == "auto" else number("ssm_cfg.dt_rank", dt_rank)
        for key in _MAMBA1_IGNORED:
            ssm_cfg.pop(key, None)
        need(not ssm_cfg, f"unsupported Mamba ssm_cfg fields {_short_list(ssm_cfg)}")
        return MambaConfig(**common, **kw)

    expand = pop_number("expand", 2)
    headdim = pop_number("headdim", 64)
    d_inner = expand * d_model
    d_ssm = pop("d_ssm", None)
    need(d_ssm is None or number("ssm_cfg.d_ssm", d_ssm) == d_inner,
         f"d_ssm={d_ssm} differs from expand*d_model={d_inner}")
    need(not pop("D_has_hdim", False), "ssm_cfg.D_has_hdim=true (a D per channel, not per head)")
    need(bool(pop("rmsnorm", True)), "ssm_cfg.rmsnorm=false (no gated RMSNorm before out_proj)")
    need(not pop("norm_before_gate", False), "ssm_cfg.norm_before_gate=true")
    need(not pop("learnable_init_states", False), "ssm_cfg.learnable_init_states=true")
    need(str(pop("activation", "swish")) in ("swish", "silu"), "ssm_cfg.activation is not silu")
    need(d_inner % headdim == 0, f"expand*d_model={d_inner} is not a multiple of headdim={headdim}")
    dt_limit = pop("dt_limit", (0.0, float("inf")))
    need(
        isinstance(dt_limit, (list, tuple)) and len(dt_limit) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in dt_limit),
        f"ssm_cfg.dt_limit={dt_limit!r} is not a pair of numbers",
    )
    kw = dict(
        state_size=pop_number("d_state", 128),
        conv_kernel=pop_number("d_conv", 4),
        expand=expand,
        head_dim=headdim,
        num_heads=d_inner // headdim,
        n_groups=pop_number("ngroups", 1),
        chunk_size=pop_number("chunk_size", 256),
        use_bias=bool(pop("bias", False)),
        use_conv_bias=bool(pop("conv_bias", True)),
        time_step_min=pop_number("dt_min", 0.001, float),
        time_step_max=pop_number("dt_max", 0.1, float),
        time_step_floor=pop_number("dt_init_floor", 1e-4, float),
        time_step_limit=(float(dt_limit[0]), float(dt_limit[1])),
    )
    for key in _MAMBA2_IGNORED:
        ssm_cfg.pop(key, None)
    need(not ssm_cfg, f"unsupported Mamba2 ssm_cfg fields {_short_list(ssm_cfg)}")
    return Mamba2Config(**common, **kw)


# --------------------------------------------------------------------------------------------
# mamba_ssm state dict -> transformers model
# --------------------------------------------------------------------------------------------


def mamba_ssm_to_transformers(
    raw: dict, state: dict, architecture: str, dtype, token_ids: dict, directory: Path
):
    """A transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (on CPU) from a mamba_ssm
    config.json's content and state dict; ``directory`` only names the checkpoint in errors.

    ``state`` is consumed (its embedding key renamed in place). ``dtype`` is a torch.dtype or
    "auto" (the embedding's dtype); ``token_ids`` (bos / eos / pad) are set on the config.
    """
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    if "backbone.embedding.weight" not in state:
        raise ValueError(
            f"{directory}: the weights have no 'backbone.embedding.weight' (not a mamba_ssm "
            f"MambaLMHeadModel state dict); keys: {_short_list(state)}"
        )
    state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
    config = _mamba_ssm_config(raw, architecture, state["backbone.embeddings.weight"].shape[0], directory)
    for key, value in token_ids.items():
        setattr(config, key, value)

    cls = Mamba2ForCausalLM if architecture == "mamba2" else MambaForCausalLM
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict()

    tied = config.tie_word_embeddings
    if tied:
        emb = state["backbone.embeddings.weight"]
        head = state.get("lm_head.weight")
        if head is None:
            state["lm_head.weight"] = emb
        elif head.shape != emb.shape or not torch.equal(head, emb):
            raise ValueError(
                f"{directory}: tie_embeddings is true but lm_head.weight differs from the embedding"
            )
    missing = set(expected) - set(state)
    unknown = set(state) - set(expected)
    if missing or unknown:
        raise weights_mismatch(f"{directory}: the mamba_ssm weights", cls, unknown, missing)
    bad = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(
            f"{directory}: weight shapes disagree with config.json: {_short_list(bad, 10)}"
        )

    if dtype == "auto":
        dtype = state["backbone.embeddings.weight"].dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.backbone.embeddings.weight
    return model


# --------------------------------------------------------------------------------------------
# transformers model -> mamba_ssm checkpoint
# --------------------------------------------------------------------------------------------


def transformers_to_mamba_ssm(model) -> tuple[dict, dict]:
    """A transformers Mamba / Mamba-2 causal LM as mamba_ssm sees it: (config.json content with
    mamba_ssm 2.x ``MambaConfig`` fields, state dict named as ``MambaLMHeadModel.state_dict()``;
    the tensors are the model's own, not copies). Raises ValueError for settings mamba_ssm cannot
    express."""
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    if not isinstance(model, (MambaForCausalLM, Mamba2ForCausalLM)):
        raise TypeError(
            f"expected a transformers MambaForCausalLM or Mamba2ForCausalLM, got {type(model).__name__}"
        )
    c = model.config
    arch = "mamba2" if isinstance(model, Mamba2ForCausalLM) else "mamba"

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"cannot write this model in mamba_ssm format: {msg}")

    need(c.hidden_act in ("silu", "swish"), f"hidden_act={c.hidden_act!r} (mamba_ssm uses silu)")
    need(
        math.isclose(float(c.layer_norm_epsilon), _SSM_NORM_EPS, rel_tol=1e-6),
        f"layer_norm_epsilon={c.layer_norm_epsilon} (mamba_ssm's config has no epsilon: it is 1e-5)",
    )
    need(float(c.expand) == int(c.expand), f"expand={c.expand} is not an integer")
    ssm_cfg: dict[str, Any] = {}
    if arch == "mamba2":
        ssm_cfg["layer"] = "Mamba2"
        need(
            int(c.expand) * c.hidden_size == c.num_heads * c.head_dim,
            "num_heads*head_dim != expand*hidden_size",
        )
    ssm_cfg.update(d_state=int(c.state_size), d_conv=int(c.conv_kernel), expand=int(c.expand))
    if arch == "mamba":
        ssm_cfg["dt_rank"] = int(c.time_step_rank)
    else:
        ssm_cfg.update(headdim=int(c.head_dim), ngroups=int(c.n_groups), chunk_size=int(c.chunk_size))
        limit = tuple(float(x) for x in c.time_step_limit)
        if limit != (0.0, float("inf")):
            ssm_cfg["dt_limit"] = list(limit)
    ssm_cfg.update(bias=bool(c.use_bias), conv_bias=bool(c.use_conv_bias))

    vocab = int(c.vocab_size)
    config = {
        "d_model": int(c.hidden_size),
        "d_intermediate": 0,
        "n_layer": int(c.num_hidden_layers),
        "vocab_size": vocab,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": bool(c.residual_in_fp32),
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8 if vocab % 8 == 0 else 1,
        "tie_embeddings": bool(c.tie_word_embeddings),
    }
    state = {}
    for key, value in model.state_dict().items():
        if key == "backbone.embeddings.weight":
            key = "backbone.embedding.weight"
        state[key] = value.detach()
    if c.tie_word_embeddings:
        # mamba_ssm's state dict carries both names for the one tied tensor
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    return config, state


def save_mamba_ssm_checkpoint(model, directory) -> Path:
    """Write a transformers Mamba / Mamba-2 causal LM in the mamba_ssm on-disk format.

    Produces ``config.json`` (mamba_ssm 2.x ``MambaConfig`` fields, with the mixer's shape in
    ``ssm_cfg``) and ``pytorch_model.bin`` (a plain dict of tensors named as mamba_ssm's
    ``MambaLMHeadModel.state_dict()``), i.e. what ``MambaLMHeadModel.save_pretrained`` writes.
    Returns the directory. Raises ValueError for settings mamba_ssm cannot express.
    """
    config, state = transformers_to_mamba_ssm(model)
    state = {k: v.to("cpu").contiguous() for k, v in state.items()}
    if "lm_head.weight" in state and model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["backbone.embedding.weight"]  # one storage, two names
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config, indent=4)
    torch.save(state, out / "pytorch_model.bin")
    return out
