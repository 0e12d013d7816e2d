"""The policy file `utrc-policy/1`: the deployable description of where and how to reduce tokens.

A policy is one JSON document (docs/method.md §3). `Policy.load` / `Policy.from_dict` validate every
field and raise `PolicyError` naming the field and the expected value; a file that does not validate
is never treated as dense. A file is read strictly: UTF-8 text, each key once per object, numbers
JSON can hold (no NaN, no infinity), nesting at most `MAX_DEPTH` levels. `Policy` objects are
immutable: derive variants with `dataclasses.replace`.

All nine top-level keys of the format (`format`, `method`, `model`, `layers`, `prune_share`,
`importance`, `importance_source`, `hidden_strategy`, `residual_strategy`) are required in a file,
so a file always says exactly what it does; the Python constructor has the paper's defaults.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .io import atomic_write_json
from .shapes import ARCHITECTURES, ModelShape

FORMAT = "utrc-policy/1"
METHODS = ("utrc", "evit", "tome", "dense")
IMPORTANCE_METRICS = ("clip", "l1", "l2", "signed")
IMPORTANCE_SOURCES = ("ssm_output", "scan_output", "mixer_output")
STRATEGIES = ("hybrid", "merge", "prune")

# The authors' hand-set schedules (docs/method.md §2): reduction after these blocks.
PAPER_LAYERS = {64: (12, 17, 22, 27, 32, 37, 42), 48: (10, 15, 20, 25, 30, 35)}

_REQUIRED = (
    "format",
    "method",
    "model",
    "layers",
    "prune_share",
    "importance",
    "importance_source",
    "hidden_strategy",
    "residual_strategy",
)
_OPTIONAL = ("estimates", "measured", "provenance")
_MODEL_KEYS = ("name", "architecture", "n_layer", "d_model")
_LAYER_KEYS = ("keep", "prune_share")
_BLOCK_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")  # ASCII digits: str.isdigit() also takes "١" and "²"
MAX_DEPTH = 64  # nesting of the optional objects (provenance, ...): far beyond any real file


class PolicyError(ValueError):
    """A policy file or object is invalid, or does not fit the model it is applied to."""


def paper_layers(n_layer: int) -> tuple[int, ...]:
    """The paper's reduction layers for a model of `n_layer` blocks.

    48 and 64 blocks use the published lists; other depths scale the 64-block list,
    `round(l * n_layer / 64)`, dropping duplicates (docs/method.md §2).
    """
    if n_layer in PAPER_LAYERS:
        return PAPER_LAYERS[n_layer]
    scaled = sorted({round(layer * n_layer / 64) for layer in PAPER_LAYERS[64]})
    return tuple(layer for layer in scaled if 0 <= layer < n_layer)


@dataclass(frozen=True)
class ModelSpec:
    """The model a policy was made for; `apply` refuses a model of another shape."""

    name: str
    architecture: str
    n_layer: int
    d_model: int

    @classmethod
    def of(cls, shape: ModelShape, name: str = "") -> "ModelSpec":
        return cls(name=name, architecture=shape.architecture, n_layer=shape.n_layer, d_model=shape.d_model)


@dataclass(frozen=True)
class LayerSpec:
    keep: float
    prune_share: float | None = None  # None: the policy's global prune_share


@dataclass(frozen=True)
class Policy:
    method: str
    model: ModelSpec
    layers: Mapping[int, LayerSpec] = field(default_factory=dict)
    prune_share: float = 0.5
    importance: str = "clip"
    importance_source: str = "ssm_output"
    hidden_strategy: str = "hybrid"
    residual_strategy: str = "merge"
    estimates: Mapping[str, Any] | None = None
    measured: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] | None = None

    def __post_init__(self):
        # Normalise and freeze so that a Policy is hashable-ish and cannot change under a running model.
        layers = {int(k): v for k, v in dict(self.layers).items()}
        object.__setattr__(self, "layers", MappingProxyType(dict(sorted(layers.items()))))
        _validate(self)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Policy":
        if not isinstance(d, Mapping):
            raise PolicyError(f"policy: expected a JSON object, got {type(d).__name__}")
        unknown = _unknown_keys(d, _REQUIRED + _OPTIONAL)
        if unknown:
            raise PolicyError(
                f"policy: unknown key(s) {unknown}; allowed keys are {list(_REQUIRED + _OPTIONAL)}"
            )
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise PolicyError(f"policy: missing required key(s) {missing} (format {FORMAT}, see docs/method.md §3)")
        if d["format"] != FORMAT:
            raise PolicyError(f"format: expected {FORMAT!r}, got {_show(d['format'])}")
        model = _model_from_dict(d["model"])
        layers = _layers_from_dict(d["layers"])
        for key in _OPTIONAL:
            if d.get(key) is not None and not isinstance(d[key], Mapping):
                raise PolicyError(f"{key}: expected a JSON object or null, got {type(d[key]).__name__}")
        return cls(
            method=d["method"],
            model=model,
            layers=layers,
            prune_share=d["prune_share"],
            importance=d["importance"],
            importance_source=d["importance_source"],
            hidden_strategy=d["hidden_strategy"],
            residual_strategy=d["residual_strategy"],
            estimates=d.get("estimates"),
            measured=d.get("measured"),
            provenance=d.get("provenance"),
        )

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file not found: {path}")
        try:
            return cls.from_dict(_read_strict_json(path.read_bytes()))
        except PolicyError as e:
            raise PolicyError(f"{path}: {e}") from None

    @classmethod
    def paper(cls, model: ModelSpec, keep: float, **overrides) -> "Policy":
        """The authors' hand-set schedule: one keep ratio at `paper_layers(n_layer)`."""
        layers = {layer: LayerSpec(keep) for layer in paper_layers(model.n_layer)}
        return cls(method="utrc", model=model, layers=layers, **overrides)

    @classmethod
    def dense(cls, model: ModelSpec) -> "Policy":
        return cls(method="dense", model=model)

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "method": self.method,
            "model": {
                "name": self.model.name,
                "architecture": self.model.architecture,
                "n_layer": self.model.n_layer,
                "d_model": self.model.d_model,
            },
            "layers": {
                str(i): ({"keep": s.keep} if s.prune_share is None else {"keep": s.keep, "prune_share": s.prune_share})
                for i, s in self.layers.items()
            },
            "prune_share": self.prune_share,
            "importance": self.importance,
            "importance_source": self.importance_source,
            "hidden_strategy": self.hidden_strategy,
            "residual_strategy": self.residual_strategy,
        }
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                d[key] = _plain(value)
        return d

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())  # a reader never sees half a policy

    # --- queries ------------------------------------------------------------------------------
    def reduction_layers(self) -> dict[int, tuple[float, float]]:
        """{block index: (keep, prune_share)} for every block that reduces; empty for `dense`."""
        if self.method == "dense":
            return {}
        return {
            i: (s.keep, self.prune_share if s.prune_share is None else s.prune_share) for i, s in self.layers.items()
        }

    def check_fits(self, shape: ModelShape) -> None:
        """Raise PolicyError unless this policy was made for a model of `shape`."""
        for name, want, got in (
            ("model.architecture", self.model.architecture, shape.architecture),
            ("model.n_layer", self.model.n_layer, shape.n_layer),
            ("model.d_model", self.model.d_model, shape.d_model),
        ):
            if want != got:
                raise PolicyError(
                    f"{name}: the policy was made for {want!r} but the model has {got!r}; "
                    f"use a policy exported for this model ({self.model.name or 'unnamed model'} does not fit)"
                )
        if self.method != "dense" and self.importance_source == "scan_output" and shape.architecture != "mamba2":
            raise PolicyError(
                "importance_source: 'scan_output' exists only for Mamba-2 (the scan output before the gated "
                "norm); use 'ssm_output' or 'mixer_output' for a Mamba-1 model"
            )


# --- validation -------------------------------------------------------------------------------


def _is_number(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return isinstance(x, int) or math.isfinite(x)  # math.isfinite overflows on integers beyond 1e308


def _show(value) -> str:
    """`repr` for messages: long values shortened; integers beyond 4300 digits and deep nesting,
    whose repr raises, described instead."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value))) if abs(value).bit_length() < 14000 else 'over 4000'} digits"
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deeply, or holding an integer beyond 4300 digits
        return f"a {type(value).__name__} too deep or too large to show"
    return text if len(text) <= 80 else text[:76] + " ..."


def _unknown_keys(mapping: Mapping, allowed) -> list[str]:
    return sorted(_show(k) if not isinstance(k, str) else k for k in mapping if k not in allowed)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise PolicyError(f"{name}: expected one of {list(choices)}, got {_show(value)}")


def _check_share(name: str, value) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise PolicyError(f"{name}: expected a number in [0, 1], got {_show(value)}")


def _check_json(name: str, value, depth: int = 0) -> None:
    """`value` (estimates, measured, provenance) is plain JSON that `save` can write back."""
    if depth > MAX_DEPTH:
        raise PolicyError(f"{name}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PolicyError(f"{name}: key {_show(key)} is not a string")
            _check_json(f"{name}.{key}", item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(f"{name}[{i}]", item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise PolicyError(f"{name}: {value} is not a JSON number (JSON has no NaN or infinity)")
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        raise PolicyError(f"{name}: a {type(value).__name__} is not a JSON value")


def _read_strict_json(raw: bytes):
    """A policy file's bytes -> its JSON value, or PolicyError saying what is wrong with the text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite,
                          parse_int=_integer)
    except json.JSONDecodeError as e:
        raise PolicyError(f"not valid JSON: {e}") from None
    except RecursionError:
        raise PolicyError(f"JSON nested deeper than {MAX_DEPTH} levels") from None


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:  # json.loads would keep the last silently
            raise PolicyError(f"key {_show(key)} appears twice in one object; a policy says each thing once")
        out[key] = value
    return out


def _no_constant(name: str):
    raise PolicyError(f"{name} is not a JSON number (JSON has no NaN or infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PolicyError(f"{_show(text)} is not a JSON number a policy can hold (it overflows to infinity)")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # Python refuses to convert more than 4300 digits
        raise PolicyError(f"an integer of {len(text.lstrip('-'))} digits is too long to read") from None


def _validate(p: Policy) -> None:
    _check_choice("method", p.method, METHODS)
    _check_choice("model.architecture", p.model.architecture, ARCHITECTURES)
    for name in ("n_layer", "d_model"):
        v = getattr(p.model, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PolicyError(f"model.{name}: expected a positive integer, got {_show(v)}")
    if not isinstance(p.model.name, str):
        raise PolicyError(f"model.name: expected a string, got {_show(p.model.name)}")
    _check_share("prune_share", p.prune_share)
    _check_choice("importance", p.importance, IMPORTANCE_METRICS)
    _check_choice("importance_source", p.importance_source, IMPORTANCE_SOURCES)
    _check_choice("hidden_strategy", p.hidden_strategy, STRATEGIES)
    _check_choice("residual_strategy", p.residual_strategy, STRATEGIES)
    if p.importance_source == "scan_output" and p.model.architecture != "mamba2":
        raise PolicyError("importance_source: 'scan_output' exists only for Mamba-2 models")
    for i, spec in p.layers.items():
        if not 0 <= i < p.model.n_layer:
            raise PolicyError(f"layers.{i}: block index outside the model (expected 0 <= index < {p.model.n_layer})")
        if not isinstance(spec, LayerSpec):
            raise PolicyError(f"layers.{i}: expected a LayerSpec, got {type(spec).__name__}")
        if not _is_number(spec.keep) or not 0.0 < spec.keep <= 1.0:
            raise PolicyError(f"layers.{i}.keep: expected a number in (0, 1], got {_show(spec.keep)}")
        if spec.prune_share is not None:
            _check_share(f"layers.{i}.prune_share", spec.prune_share)
    for key in _OPTIONAL:
        _check_json(key, getattr(p, key))


def _model_from_dict(m) -> ModelSpec:
    if not isinstance(m, Mapping):
        raise PolicyError(f"model: expected a JSON object, got {type(m).__name__}")
    unknown = _unknown_keys(m, _MODEL_KEYS)
    if unknown:
        raise PolicyError(f"model: unknown key(s) {unknown}; allowed keys are {list(_MODEL_KEYS)}")
    missing = [k for k in _MODEL_KEYS if k not in m]
    if missing:
        raise PolicyError(f"model: missing key(s) {missing}")
    return ModelSpec(name=m["name"], architecture=m["architecture"], n_layer=m["n_layer"], d_model=m["d_model"])


def _layers_from_dict(layers) -> dict[int, LayerSpec]:
    if not isinstance(layers, Mapping):
        raise PolicyError(
            f"layers: expected a JSON object mapping block index to {{'keep': ...}}, got {_show(layers)}")
    out = {}
    for key, spec in layers.items():
        if not (isinstance(key, str) and _BLOCK_INDEX.fullmatch(key)):
            raise PolicyError(f"layers: key {_show(key)} is not a block index (expected a non-negative integer in "
                              "ASCII digits without leading zeros, e.g. '12')")
        if not isinstance(spec, Mapping):
            raise PolicyError(f"layers.{key}: expected a JSON object like {{'keep': 0.9}}, got {_show(spec)}")
        unknown = _unknown_keys(spec, _LAYER_KEYS)
        if unknown:
            raise PolicyError(f"layers.{key}: unknown key(s) {unknown}; allowed keys are {list(_LAYER_KEYS)}")
        if "keep" not in spec:
            raise PolicyError(f"layers.{key}.keep: missing (expected a number in (0, 1])")
        out[int(key)] = LayerSpec(keep=spec["keep"], prune_share=spec.get("prune_share"))
    return out


def _plain(value):
    """Deep-copy a JSON-like value, turning read-only mappings back into dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
