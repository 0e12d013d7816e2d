"""utrc: unified token reduction for Mamba and Mamba-2 language models.

    model, tokenizer = utrc.load_model("demo:mamba2")
    reduced = utrc.apply(model, utrc.Policy.load("policy.json"))
    out = reduced(input_ids, protect_last=1)      # out.logits, out.positions

docs/method.md describes the method; README.md the public API. Importing this package is light:
the names below load their modules (and torch) on first use, and the lm-eval model `utrc` is
registered by name only, so `import utrc.io` from a process without torch works.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LayerSpec": "policy",
    "ModelSpec": "policy",
    "Policy": "policy",
    "PolicyError": "policy",
    "ModelShape": "shapes",
    "ReducedModel": "reduced",
    "ReducedOutput": "reduced",
    "apply": "reduced",
    "estimate_flops": "flops",
    "load_model": "loading",
}

__all__ = [
    "LayerSpec",
    "ModelShape",
    "ModelSpec",
    "Policy",
    "PolicyError",
    "ReducedModel",
    "ReducedOutput",
    "apply",
    "estimate_flops",
    "load_model",
]
assert sorted(__all__) == sorted(_EXPORTS)


_SUBPACKAGES = ("demo", "lm_eval")  # `utrc.demo.task_manager()` works after a plain `import utrc`


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'utrc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _register_lm_eval_model() -> None:
    """Register the lm-eval model `utrc` by name (lm-eval imports it when a run asks for it).
    lm-eval is optional for a deployer. `lm_eval.models` is imported first: lm-eval fills its
    registry with its own models only while the registry is empty."""
    try:
        import lm_eval.models  # noqa: F401  (light: lm-eval's own models are registered lazily too)
        from lm_eval.api.registry import model_registry
    except ModuleNotFoundError:
        return
    model_registry.register("utrc", target="utrc.lm_eval.model:UtrcLM")


_register_lm_eval_model()
