"""Load Mamba / Mamba-2 language models as transformers modules (SPEC §7, §9).

`load_model(ref)` accepts

* ``"demo:mamba2"`` / ``"demo:mamba"``: the small demo models shipped inside the package
  (Hugging Face format, under ``utrc/demo/models/<name>``);
* a local directory in Hugging Face format (``config.json`` with ``model_type`` ``"mamba"`` /
  ``"mamba2"``; ``model.safetensors``, sharded safetensors or ``pytorch_model.bin``);
* a local directory in mamba_ssm format, as published in the ``state-spaces/*`` repositories
  (``config.json`` with ``d_model``, ``n_layer``, ``ssm_cfg``, ... and ``pytorch_model.bin``):
  converted on the fly to transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM``;
* a Hugging Face hub id (``"state-spaces/mamba2-2.7b"``): downloaded (or taken from the local
  cache) and then loaded as a directory.

Whatever the source, the result is a transformers ``MambaForCausalLM`` or ``Mamba2ForCausalLM``
in eval mode, so the rest of the package only deals with one set of module names.

Safety: weights are read with ``torch.load(..., weights_only=True)`` or safetensors, never by
unpickling arbitrary objects; ``trust_remote_code`` is never enabled; config values are read
from JSON and checked, never evaluated.

`save_mamba_ssm_checkpoint(model, directory)` writes a transformers Mamba / Mamba-2 model in the
mamba_ssm on-disk format (the inverse conversion), which is how the tests exercise the reader
without hub access.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEMO_MODELS",
    "GPT_NEOX_TOKENIZER",
    "is_mamba_ssm_available",
    "load_model",
    "save_mamba_ssm_checkpoint",
]

DEMO_MODELS = ("mamba2", "mamba")
"""Names accepted after ``demo:``."""

DEMO_DIR = Path(__file__).resolve().parent / "demo" / "models"

GPT_NEOX_TOKENIZER = "EleutherAI/gpt-neox-20b"
"""The tokenizer of the ``state-spaces/*`` checkpoints (mamba_ssm format ships none)."""

_HF_ARCHITECTURES = {"MambaForCausalLM": "mamba", "Mamba2ForCausalLM": "mamba2"}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Files fetched from the hub: configs, tokenizer files, weights (safetensors preferred).
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt"]
_HUB_BIN_PATTERNS = ["pytorch_model*.bin"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

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


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def is_mamba_ssm_available() -> bool:
    """True when the ``mamba_ssm`` package (with its CUDA extension) can be imported.

    Never raises: on CPU-only machines importing mamba_ssm fails with ImportError, OSError
    (missing libcudart / .so) or RuntimeError, and any of those means "not available".
    """
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # ImportError, OSError, RuntimeError, and whatever a broken build raises
        return False
    return True


def _resolve_dtype(dtype, device: torch.device):
    """torch.dtype, None (float32 on CPU, bfloat16 on CUDA), a name, or "auto" (the checkpoint's)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower()
        if name.startswith("torch."):
            name = name[len("torch.") :]
        if name == "auto":
            return "auto"
        if name in _DTYPES:
            return _DTYPES[name]
    raise ValueError(
        f"unsupported dtype {dtype!r}: pass a torch.dtype, None, 'auto' or one of "
        f"{sorted(set(_DTYPES))}"
    )


def _short_list(names, limit: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def _looks_like_hub_id(ref: str) -> bool:
    """"owner/name" or "name" with the hub's allowed characters, and nothing path-like."""
    if not _HUB_ID.match(ref) or ".." in ref or ref.endswith((".", "-")):
        return False
    if os.sep != "/" and os.sep in ref:
        return False
    return True


# --------------------------------------------------------------------------------------------
# locating the model directory
# --------------------------------------------------------------------------------------------


def _demo_dir(name: str) -> Path:
    if name not in DEMO_MODELS:
        known = ", ".join(f"demo:{n}" for n in DEMO_MODELS)
        raise ValueError(f"unknown demo model 'demo:{name}'; known demo models: {known}")
    path = DEMO_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"demo model 'demo:{name}' not found at {path}: the demo model files are missing from "
            "the installed package (they are built by `python -m utrc.demo.train`)"
        )
    return path


def _hub_snapshot(repo_id: str) -> Path:
    """Download (or find in the local cache) the files of a hub repository."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise OSError(
            f"cannot download {repo_id!r}: huggingface_hub is not installed; pass a local "
            f'directory instead: utrc.load_model("/path/to/dir")'
        ) from e

    how_to_fix = (
        f"Download it on a machine with hub access (e.g. `hf download {repo_id} "
        f"--local-dir DIR`), copy DIR here and pass the local directory: "
        f'utrc.load_model("/path/to/dir").'
    )
    try:
        path = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not any(path.glob("*.safetensors")):
            path = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_BIN_PATTERNS))
    except GatedRepoError as e:
        raise OSError(
            f"model {repo_id!r} is gated on the Hugging Face hub and could not be downloaded "
            f"(log in with a token that has access). {how_to_fix}"
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise OSError(
            f"{repo_id!r} is neither a local directory nor a model repository on the Hugging Face "
            f"hub (repository not found). {how_to_fix}"
        ) from e
    except (LocalEntryNotFoundError, OSError) as e:
        # LocalEntryNotFoundError: offline (HF_HUB_OFFLINE=1 or no network) and nothing cached;
        # other OSErrors cover connection failures (httpx / requests errors are OSError here).
        raise OSError(
            f"model {repo_id!r} could not be downloaded from the Hugging Face hub (offline or "
            f"unreachable) and there is no local copy: no directory named {repo_id!r} exists and "
            f"the hub cache holds no snapshot of it. {how_to_fix}"
        ) from e
    if not (path / "config.json").is_file():
        raise OSError(f"hub repository {repo_id!r} has no config.json (snapshot at {path})")
    return path


def _resolve_ref(ref: str) -> tuple[Path, str]:
    """(directory, origin) for a model reference; origin is "demo", "local" or "hub"."""
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"model reference must be a string or a path, got {type(ref).__name__}")
    ref = os.fspath(ref)
    if ref.startswith("demo:"):
        return _demo_dir(ref[len("demo:") :]), "demo"
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {str(path)!r} has no config.json")
        return path, "local"
    if path.exists():
        raise NotADirectoryError(
            f"{str(path)!r} is a file; pass the model directory (the one holding config.json)"
        )
    if not _looks_like_hub_id(ref):
        raise FileNotFoundError(f"model directory not found: {str(path)!r} does not exist")
    return _hub_snapshot(ref), "hub"


def _checkpoint_format(config: dict, directory: Path) -> tuple[str, str]:
    """("hf" | "mamba_ssm", "mamba" | "mamba2") from a config.json's content."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in ("mamba", "mamba2"):
        return "hf", model_type
    for arch in architectures:
        if arch in _HF_ARCHITECTURES and model_type is None:
            return "hf", _HF_ARCHITECTURES[arch]
    if model_type is None and "d_model" in config and "n_layer" in config:
        ssm_cfg = config.get("ssm_cfg") or {}
        if not isinstance(ssm_cfg, dict):
            raise ValueError(f"{directory}/config.json: ssm_cfg must be an object, got {ssm_cfg!r}")
        layer = ssm_cfg.get("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba2"):
            raise ValueError(
                f"{directory}/config.json: ssm_cfg.layer must be 'Mamba1' or 'Mamba2', got {layer!r}"
            )
        return "mamba_ssm", "mamba2" if layer == "Mamba2" else "mamba"
    raise ValueError(
        f"{directory} is not a Mamba / Mamba-2 checkpoint: config.json has model_type="
        f"{model_type!r}, architectures={architectures!r} (expected model_type 'mamba' or "
        "'mamba2' for Hugging Face format, or d_model / n_layer / ssm_cfg for mamba_ssm format)"
    )


# --------------------------------------------------------------------------------------------
# reading weights safely
# --------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain "
            f"containers (read with weights_only=True; arbitrary objects are never unpickled): {e}"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a dict of tensors (a state dict), got {type(obj).__name__}")
    return obj


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of a mamba_ssm-format directory (safetensors preferred, else pytorch_model.bin)."""
    from safetensors.torch import load_file

    files: list[Path]
    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
        loader = load_file
    elif (directory / "model.safetensors.index.json").is_file():
        index = _read_json(directory / "model.safetensors.index.json")
        files = [directory / f for f in sorted(set(index.get("weight_map", {}).values()))]
        loader = load_file
    elif (directory / "pytorch_model.bin").is_file():
        files = [directory / "pytorch_model.bin"]
        loader = _torch_load
    elif (directory / "pytorch_model.bin.index.json").is_file():
        index = _read_json(directory / "pytorch_model.bin.index.json")
        files = [directory / f for f in sorted(set(index.get("weight_map", {}).values()))]
        loader = _torch_load
    else:
        raise FileNotFoundError(
            f"no weights in {directory}: expected model.safetensors or pytorch_model.bin"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if Path(file).resolve().parent != directory.resolve():
            raise ValueError(f"weight index of {directory} points outside the directory: {file}")
        for key, value in loader(file).items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; a state dict "
                    "of tensors is expected"
                )
            state[key] = value
    if not state:
        raise ValueError(f"no tensors found in the weights of {directory}")
    return state


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

    need(int(cfg["d_intermediate"] or 0) == 0, f"d_intermediate={cfg['d_intermediate']} (an MLP after each mixer)")
    need(not cfg["attn_layer_idx"], f"attn_layer_idx={cfg['attn_layer_idx']} (attention layers)")
    need(bool(cfg["rms_norm"]), "rms_norm=false (LayerNorm instead of RMSNorm)")

    d_model = int(cfg["d_model"])
    n_layer = int(cfg["n_layer"])
    mult = max(1, int(cfg["pad_vocab_size_multiple"] or 1))
    vocab = int(cfg["vocab_size"])
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

    if architecture == "mamba":
        kw = dict(
            state_size=int(pop("d_state", 16)),
            conv_kernel=int(pop("d_conv", 4)),
            expand=pop("expand", 2),
            use_bias=bool(pop("bias", False)),
            use_conv_bias=bool(pop("conv_bias", True)),
            time_step_min=float(pop("dt_min", 0.001)),
            time_step_max=float(pop("dt_max", 0.1)),
            time_step_init_scheme=str(pop("dt_init", "random")),
            time_step_scale=float(pop("dt_scale", 1.0)),
            time_step_floor=float(pop("dt_init_floor", 1e-4)),
        )
        dt_rank = pop("dt_rank", "auto")
        kw["time_step_rank"] = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        for key in _MAMBA1_IGNORED:
            ssm_cfg.pop(key, None)
        need(not ssm_cfg, f"unsupported Mamba ssm_cfg fields {_short_list(ssm_cfg)}")
        need(float(kw["expand"]) == int(kw["expand"]), f"expand={kw['expand']} is not an integer")
        kw["expand"] = int(kw["expand"])
        return MambaConfig(**common, **kw)

    expand = pop("expand", 2)
    need(float(expand) == int(expand), f"expand={expand} is not an integer")
    expand = int(expand)
    headdim = int(pop("headdim", 64))
    d_inner = expand * d_model
    d_ssm = pop("d_ssm", None)
    need(d_ssm is None or int(d_ssm) == d_inner, f"d_ssm={d_ssm} differs from expand*d_model={d_inner}")
    need(not pop("D_has_hdim", False), "ssm_cfg.D_has_hdim=true (a D per channel, not per head)")
    need(bool(pop("rmsnorm", True)), "ssm_cfg.rmsnorm=false (no gated RMSNorm before out_proj)")
    need(not pop("norm_before_gate", False), "ssm_cfg.norm_before_gate=true")
    need(not pop("learnable_init_states", False), "ssm_cfg.learnable_init_states=true")
    need(str(pop("activation", "swish")) in ("swish", "silu"), "ssm_cfg.activation is not silu")
    need(d_inner % headdim == 0, f"expand*d_model={d_inner} is not a multiple of headdim={headdim}")
    dt_limit = pop("dt_limit", (0.0, float("inf")))
    need(
        isinstance(dt_limit, (list, tuple)) and len(dt_limit) == 2,
        f"ssm_cfg.dt_limit={dt_limit!r} is not a pair",
    )
    kw = dict(
        state_size=int(pop("d_state", 128)),
        conv_kernel=int(pop("d_conv", 4)),
        expand=expand,
        head_dim=headdim,
        num_heads=d_inner // headdim,
        n_groups=int(pop("ngroups", 1)),
        chunk_size=int(pop("chunk_size", 256)),
        use_bias=bool(pop("bias", False)),
        use_conv_bias=bool(pop("conv_bias", True)),
        time_step_min=float(pop("dt_min", 0.001)),
        time_step_max=float(pop("dt_max", 0.1)),
        time_step_floor=float(pop("dt_init_floor", 1e-4)),
        time_step_limit=(float(dt_limit[0]), float(dt_limit[1])),
    )
    for key in _MAMBA2_IGNORED:
        ssm_cfg.pop(key, None)
    need(not ssm_cfg, f"unsupported Mamba2 ssm_cfg fields {_short_list(ssm_cfg)}")
    return Mamba2Config(**common, **kw)


def _load_mamba_ssm(directory: Path, architecture: str, dtype, device, token_ids: dict):
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    raw = _read_json(directory / "config.json")
    state = _read_state_dict(directory)
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
        parts = []
        if unknown:
            parts.append(f"unknown keys: {_short_list(unknown)}")
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        raise ValueError(
            f"{directory}: the mamba_ssm weights do not match a {cls.__name__} built from its "
            f"config.json; " + "; ".join(parts)
        )
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
    return model.to(device)


def _load_hf(directory: Path, architecture: str, dtype, device):
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    cls = Mamba2ForCausalLM if architecture == "mamba2" else MambaForCausalLM
    weights = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ]
    if not any((directory / w).is_file() for w in weights):
        raise FileNotFoundError(
            f"no weights in {directory}: expected model.safetensors (or shards) or pytorch_model.bin"
        )
    model, info = cls.from_pretrained(
        str(directory), dtype=dtype, local_files_only=True, output_loading_info=True
    )
    missing = set(info.get("missing_keys") or ())
    if model.config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = info.get("mismatched_keys") or ()
    if missing or unexpected or mismatched:
        parts = []
        if unexpected:
            parts.append(f"unknown keys: {_short_list(unexpected)}")
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if mismatched:
            parts.append(f"shape mismatches: {_short_list([str(m) for m in mismatched], 10)}")
        raise ValueError(
            f"{directory}: the weights do not match a {cls.__name__} built from its config.json; "
            + "; ".join(parts)
        )
    return model.to(device)


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


def _auto_tokenizer(ref: str, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ref, trust_remote_code=False, **kwargs)


def _load_tokenizer(tokenizer, directory: Path, fmt: str):
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer  # a tokenizer object: the caller's choice
    if tokenizer is not None:
        ref = os.fspath(tokenizer)
        local = Path(ref).expanduser()
        if local.is_dir():
            return _auto_tokenizer(str(local))
        if not _looks_like_hub_id(ref):
            raise FileNotFoundError(f"tokenizer directory not found: {ref!r} does not exist")
        try:
            return _auto_tokenizer(ref)
        except (OSError, ValueError) as e:
            raise OSError(
                f"tokenizer {ref!r} could not be loaded (offline and not in the local Hugging Face "
                f"cache?); pass tokenizer= a local directory holding tokenizer.json"
            ) from e
    if any((directory / f).is_file() for f in _TOKENIZER_FILES):
        return _auto_tokenizer(str(directory))
    if fmt != "mamba_ssm":
        raise OSError(
            f"{directory} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}); pass "
            "tokenizer= a local tokenizer directory or a hub id"
        )
    # mamba_ssm checkpoints (state-spaces/*) ship no tokenizer: they use GPT-NeoX-20B's.
    # The local cache first (no network), then the hub unless offline.
    errors = []
    for kwargs in ({"local_files_only": True}, {}):
        try:
            return _auto_tokenizer(GPT_NEOX_TOKENIZER, **kwargs)
        except (OSError, ValueError) as e:
            errors.append(e)
    raise OSError(
        f"{directory} is a mamba_ssm checkpoint, which ships no tokenizer; it needs the "
        f"{GPT_NEOX_TOKENIZER} tokenizer, which is neither in the local Hugging Face cache nor "
        f"downloadable here. Pass tokenizer= a local directory holding that tokenizer "
        f"(tokenizer.json), e.g. utrc.load_model(ref, tokenizer='/path/to/gpt-neox-20b')"
    ) from errors[-1]


def _token_ids(tokenizer) -> dict:
    """bos / eos / pad ids for a converted model's config, from its tokenizer."""
    ids = {}
    eos = getattr(tokenizer, "eos_token_id", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(eos, int):
        ids["eos_token_id"] = eos
    if isinstance(bos, int):
        ids["bos_token_id"] = bos
    elif isinstance(eos, int):
        ids["bos_token_id"] = eos
    if isinstance(pad, int):
        ids["pad_token_id"] = pad
    elif isinstance(eos, int):
        ids["pad_token_id"] = eos
    return ids


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def load_model(ref: str, device="cpu", dtype=None, tokenizer=None):
    """Load a Mamba / Mamba-2 language model and its tokenizer.

    Args:
        ref: ``"demo:mamba2"`` / ``"demo:mamba"``, a local directory (Hugging Face or mamba_ssm
            format) or a Hugging Face hub id such as ``"state-spaces/mamba2-2.7b"``. A local
            directory of that name wins over the hub.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``torch.device``).
        dtype: ``None`` (float32 on CPU, bfloat16 on CUDA), a ``torch.dtype``, one of
            ``"float32"`` / ``"bfloat16"`` / ``"float16"``, or ``"auto"`` (the checkpoint's dtype).
        tokenizer: a tokenizer object, or a local directory / hub id to load one from. Default:
            the model directory's tokenizer files; for mamba_ssm checkpoints, which ship none,
            ``EleutherAI/gpt-neox-20b`` (local cache first).

    Returns:
        ``(model, tokenizer)``: a transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` in
        eval mode on ``device``, and a transformers tokenizer.

    Raises:
        ValueError: unknown ``demo:`` name, not a Mamba checkpoint, settings transformers cannot
            represent, weights that do not match the config (the offending keys are named),
            pickled non-tensor objects in ``pytorch_model.bin``.
        FileNotFoundError: a path that does not exist; demo model files missing.
        OSError: a hub id that cannot be downloaded (offline) and is not cached; a tokenizer
            that cannot be found.
    """
    device = torch.device(device)
    dtype = _resolve_dtype(dtype, device)
    directory, _origin = _resolve_ref(ref)
    config = _read_json(directory / "config.json")
    fmt, architecture = _checkpoint_format(config, directory)
    tok = _load_tokenizer(tokenizer, directory, fmt)  # before the weights: fail fast
    if fmt == "mamba_ssm":
        model = _load_mamba_ssm(directory, architecture, dtype, device, _token_ids(tok))
    else:
        model = _load_hf(directory, architecture, dtype, device)
    model.eval()
    n_tokens = len(tok) if hasattr(tok, "__len__") else None
    if n_tokens is not None and n_tokens > model.config.vocab_size:
        warnings.warn(
            f"the tokenizer has {n_tokens} tokens but the model's embedding only "
            f"{model.config.vocab_size} rows: ids >= {model.config.vocab_size} will fail",
            stacklevel=2,
        )
    return model, tok


def save_mamba_ssm_checkpoint(model, directory) -> Path:
    """Write a transformers Mamba / Mamba-2 causal LM in the mamba_ssm on-disk format.

    Produces ``config.json`` (mamba_ssm 2.x ``MambaConfig`` fields, with the mixer's shape in
    ``ssm_cfg``) and ``pytorch_model.bin`` (a plain dict of tensors named as mamba_ssm's
    ``MambaLMHeadModel.state_dict()``), i.e. what ``MambaLMHeadModel.save_pretrained`` writes.
    Returns the directory. Raises ValueError for settings mamba_ssm cannot express.
    """
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
        state[key] = value.detach().to("cpu").contiguous()
    if c.tie_word_embeddings:
        # mamba_ssm's state dict carries both names for the one tied tensor
        state["lm_head.weight"] = state["backbone.embedding.weight"]

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=4)
    torch.save(state, out / "pytorch_model.bin")
    return out
