"""utrc: unified token reduction for Mamba and Mamba-2 language models (SPEC §9).

    model, tokenizer = utrc.load_model("demo:mamba2")
    reduced = utrc.apply(model, utrc.Policy.load("policy.json"))
    out = reduced(input_ids, protect_last=1)      # out.logits, out.positions
"""

from . import demo  # utrc.demo.task_manager(), utrc.demo.calibration_texts(): light, no lm-eval import
from .flops import estimate_flops
from .loading import load_model
from .policy import LayerSpec, ModelSpec, Policy, PolicyError
from .reduced import ReducedModel, ReducedOutput, apply
from .shapes import ModelShape

__version__ = "0.1.0"

try:  # registers the lm-eval model `utrc`; lm-eval (with its hf extra) is optional for a deployer
    from . import lm_eval as _lm_eval
except ModuleNotFoundError as err:
    if err.name not in ("lm_eval", "accelerate"):
        raise

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
