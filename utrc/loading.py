"""Load Mamba / Mamba-2 language models as transformers modules (docs/method.md §7).

`load_model(ref)` accepts

* ``"demo:mamba2"`` / ``"demo:mamba"``: the small demo models shipped inside the package
  (Hugging Face format, under ``utrc/demo/models/<name>``);
* a local directory in Hugging Face format (``config.json`` with ``model_type`` ``"mamba"`` /
  ``"mamba2"``; ``model.safetensors``, sharded safetensors or ``pytorch_model.bin``);
* a local directory in mamba_ssm format, as published in the ``state-spaces/*`` repositories
  (``config.json`` with ``d_model``, ``n_layer``, ``ssm_cfg``, ... and ``pytorch_model.bin``):
  converted on the fly to transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM``
  (the conversion lives in `utrc.mamba_ssm_format`);
* a Hugging Face hub id (``"state-spaces/mamba2-2.7b"``): downloaded (or taken from the local
  cache) and then loaded as a directory.

Whatever the source, the result is a transformers ``MambaForCausalLM`` or ``Mamba2ForCausalLM``
in eval mode, so the rest of the package only deals with one set of module names.

Safety: weights are read with ``torch.load(..., weights_only=True)`` or safetensors, never by
unpickling arbitrary objects; ``trust_remote_code`` is never enabled; config values are read
from JSON and checked, never evaluated. Every load error names the file (and the field or tensor)
at fault; weights holding NaN or infinity are refused, naming the tensor.

`save_mamba_ssm_checkpoint(model, directory)` (defined in `utrc.mamba_ssm_format`, re-exported
here) writes a transformers Mamba / Mamba-2 model in the mamba_ssm on-disk format (the inverse
conversion), which is how the tests exercise the reader without hub access.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from .kernels import is_mamba_ssm_available
from .mamba_ssm_format import mamba_ssm_to_transformers, save_mamba_ssm_checkpoint, weights_mismatch

__all__ = [
    "CPU_KERNEL_NOTE",
    "DEMO_MODELS",
    "GPT_NEOX_TOKENIZER",
    "DeviceError",
    "check_device",
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


CPU_KERNEL_NOTE = (
    "utrc note: on the CPU, transformers runs its PyTorch implementation of the Mamba scan and "
    "convolution (the fused mamba_ssm / causal-conv1d kernels need a CUDA GPU): same results, slower."
)
"""Said once per process, instead of transformers' kernel-fallback warning for every missing kernel."""


class DeviceError(ValueError):
    """A device this machine does not have (a CUDA device without CUDA, a GPU index past the last)."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def check_device(device) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1", a torch.device) as a torch.device; `DeviceError` with a
    one-line reason and the fix when this machine cannot run it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(
                f"device {str(device)!r} asked for, but CUDA is not available here ({why}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return dev


class _KernelFallbackNote(logging.Filter):
    """Drops transformers' "`X` is falling back to its reference PyTorch implementation" warnings
    (one per missing kernel and process: causal_conv1d_fn, mamba_chunk_scan_combined, ...) and says
    `CPU_KERNEL_NOTE` once instead. Installed only for models loaded on the CPU, where those kernels
    cannot run at all and the warning's advice (install them) does not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "falling back to its reference PyTorch implementation" not in str(record.msg):
            return True
        if not self.said:
            self.said = True
            print(CPU_KERNEL_NOTE, file=sys.stderr, flush=True)
        return False


def _note_cpu_kernel_fallback() -> None:
    """Install `_KernelFallbackNote` on transformers' hub-kernel logger (once per process)."""
    logger = logging.getLogger("transformers.integrations.hub_kernels")
    if not any(isinstance(f, _KernelFallbackNote) for f in logger.filters):
        logger.addFilter(_KernelFallbackNote())


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


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte offset {e.start})") from e
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
            "the installed package (the repository's `python -m demo.train` builds them, docs/demo.md)"
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


def _resolve_ref(ref: str) -> Path:
    """The directory of a model reference: a demo model's, a local one, or a hub snapshot."""
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"model reference must be a string or a path, got {type(ref).__name__}")
    ref = os.fspath(ref)
    if ref.startswith("demo:"):
        return _demo_dir(ref[len("demo:") :])
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {str(path)!r} has no config.json")
        return path
    if path.exists():
        raise NotADirectoryError(
            f"{str(path)!r} is a file; pass the model directory (the one holding config.json)"
        )
    if not _looks_like_hub_id(ref):
        raise FileNotFoundError(f"model directory not found: {str(path)!r} does not exist")
    return _hub_snapshot(ref)


def _checkpoint_format(config: dict, directory: Path) -> tuple[str, str]:
    """("hf" | "mamba_ssm", "mamba" | "mamba2") from a config.json's content."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in ("mamba", "mamba2"):
        _hf_config(directory, model_type)  # a bad value stops here, before the tokenizer reads the file
        return "hf", model_type
    for arch in architectures:
        if arch in _HF_ARCHITECTURES and model_type is None:
            _hf_config(directory, _HF_ARCHITECTURES[arch])
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


def _hf_config(directory: Path, architecture: str):
    """transformers' config object of a Hugging Face-format directory; a bad value names the file."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import Mamba2Config, MambaConfig

    cls = Mamba2Config if architecture == "mamba2" else MambaConfig
    try:
        return cls.from_pretrained(str(directory), local_files_only=True)
    except (ValueError, TypeError, StrictDataclassError) as e:
        raise ValueError(f"{directory / 'config.json'}: {e}") from e


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
    except (RuntimeError, OSError, EOFError) as e:  # a truncated or corrupted archive
        raise _unreadable(path, e) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a dict of tensors (a state dict), got {type(obj).__name__}")
    return obj


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of a mamba_ssm-format directory (safetensors preferred, else pytorch_model.bin)."""
    from safetensors import SafetensorError
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
        try:
            weights = loader(file)
        except (SafetensorError, OSError) as e:
            raise _unreadable(file, e) from e
        for key, value in weights.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; a state dict "
                    "of tensors is expected"
                )
            state[key] = value
    if not state:
        raise ValueError(f"no tensors found in the weights of {directory}")
    return state


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f"cannot read the weights file {path} (truncated or corrupted? copy it again): {error}")


def _check_finite(model, where: str) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor: they would give
    non-finite outputs, or scores that silently mean nothing."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        counts = [f"{n} {kind} value{'s' if n > 1 else ''}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n]
        raise ValueError(f"{where}: {name} holds {' and '.join(counts)}; the checkpoint is damaged "
                         "(download or export it again)")


# --------------------------------------------------------------------------------------------
# building the model
# --------------------------------------------------------------------------------------------


def _load_mamba_ssm(directory: Path, architecture: str, dtype, device, token_ids: dict):
    raw = _read_json(directory / "config.json")
    state = _read_state_dict(directory)
    model = mamba_ssm_to_transformers(raw, state, architecture, dtype, token_ids, directory)
    _check_finite(model, f"the weights in {directory}")
    return model.to(device)


def _load_hf(directory: Path, architecture: str, dtype, device):
    from safetensors import SafetensorError
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    cls = Mamba2ForCausalLM if architecture == "mamba2" else MambaForCausalLM
    weights = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ]
    found = [directory / w for w in weights if (directory / w).is_file()]
    if not found:
        raise FileNotFoundError(
            f"no weights in {directory}: expected model.safetensors (or shards) or pytorch_model.bin"
        )
    config = _hf_config(directory, architecture)
    try:  # mismatched sizes come back in `info` (transformers' own error names no key)
        model, info = cls.from_pretrained(
            str(directory), config=config, dtype=dtype, local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except (SafetensorError, OSError, RuntimeError, EOFError) as e:
        raise _unreadable(found[0], e) from e
    missing = set(info.get("missing_keys") or ())
    if model.config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = [f"{key} {tuple(stored)} (expected {tuple(wanted)})"
                  for key, stored, wanted in info.get("mismatched_keys") or ()]
    if missing or unexpected or mismatched:
        raise weights_mismatch(f"{directory}: the weights", cls, unexpected, missing, mismatched)
    _check_finite(model, f"the weights in {directory}")
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


def load_model(ref: str, device="cpu", dtype=None, tokenizer=None, path: str = "auto"):
    """Load a Mamba / Mamba-2 language model and its tokenizer.

    Args:
        ref: ``"demo:mamba2"`` / ``"demo:mamba"``, a local directory (Hugging Face or mamba_ssm
            format) or a Hugging Face hub id such as ``"state-spaces/mamba2-2.7b"``. A local
            directory of that name wins over the hub.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``torch.device``); a device this
            machine does not have raises `DeviceError` before anything is read.
        dtype: ``None`` (float32 on CPU, bfloat16 on CUDA), a ``torch.dtype``, one of
            ``"float32"`` / ``"bfloat16"`` / ``"float16"``, or ``"auto"`` (the checkpoint's dtype).
        tokenizer: a tokenizer object, or a local directory / hub id to load one from. Default:
            the model directory's tokenizer files; for mamba_ssm checkpoints, which ship none,
            ``EleutherAI/gpt-neox-20b`` (local cache first).

        path: which implementation runs the model (docs/method.md §7): ``"auto"`` (mamba_ssm's own
            model on a CUDA device when mamba_ssm imports, transformers' modules otherwise),
            ``"mamba_ssm"`` or ``"transformers"``.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device`` -- a mamba_ssm
        ``MambaLMHeadModel``, or a transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` -- and a
        transformers tokenizer. `utrc.apply` takes either.

    Raises:
        DeviceError: a CUDA device on a machine without one (see `check_device`).
        ValueError: unknown ``demo:`` name, not a Mamba checkpoint, settings transformers cannot
            represent, weights that do not match the config (the offending keys are named),
            pickled non-tensor objects in ``pytorch_model.bin``.
        FileNotFoundError: a path that does not exist; demo model files missing.
        OSError: a hub id that cannot be downloaded (offline) and is not cached; a tokenizer
            that cannot be found.
    """
    device = check_device(device)
    if device.type == "cpu":
        _note_cpu_kernel_fallback()
    native = _native_path(path, device)
    dtype = _resolve_dtype(dtype, device)
    directory = _resolve_ref(ref)
    config = _read_json(directory / "config.json")
    fmt, architecture = _checkpoint_format(config, directory)
    tok = _load_tokenizer(tokenizer, directory, fmt)  # before the weights: fail fast
    # for mamba_ssm's model, read the weights as stored (checkpoint dtype, on the CPU) and convert
    where, as_dtype = (torch.device("cpu"), "auto") if native else (device, dtype)
    if fmt == "mamba_ssm":
        model = _load_mamba_ssm(directory, architecture, as_dtype, where, _token_ids(tok))
    else:
        model = _load_hf(directory, architecture, as_dtype, where)
    if native:
        from .native import from_transformers

        model = from_transformers(model, device, None if dtype == "auto" else dtype)
    model.eval()
    rows = model.lm_head.weight.shape[0]
    n_tokens = len(tok) if hasattr(tok, "__len__") else None
    if n_tokens is not None and n_tokens > rows:
        warnings.warn(
            f"the tokenizer has {n_tokens} tokens but the model's embedding only "
            f"{rows} rows: ids >= {rows} will fail",
            stacklevel=2,
        )
    return model, tok


def _native_path(path: str, device: torch.device) -> bool:
    """Whether `load_model` returns mamba_ssm's own model (see its `path` argument)."""
    if path not in ("auto", "mamba_ssm", "transformers"):
        raise ValueError(f"path: expected 'auto', 'mamba_ssm' or 'transformers', got {path!r}")
    if path == "mamba_ssm":
        if device.type != "cuda" or not is_mamba_ssm_available():
            raise RuntimeError(
                "path='mamba_ssm' needs a CUDA device and the mamba_ssm package with its kernels "
                "(pip install -r requirements-gpu.txt on a GPU machine); use path='transformers' here"
            )
        return True
    return path == "auto" and device.type == "cuda" and is_mamba_ssm_available()

