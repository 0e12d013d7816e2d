"""lm-eval integration: the registered model `utrc` (SPEC §9).

Importing this package (which `import utrc` does when lm-eval is installed) registers
`UtrcLM` with lm-eval under the name `utrc`:

    lm_eval.simple_evaluate(model="utrc", model_args="pretrained=REF,policy=PATH", tasks=[...])
    python -m utrc.lm_eval --model utrc --model_args pretrained=REF,policy=PATH --tasks piqa

`python -m utrc.lm_eval ARGS` is lm-eval's own command line (`lm-eval ARGS`) with the model
registered, so every lm-eval flag works unchanged.
"""

from __future__ import annotations

import sys

from lm_eval.api.registry import register_model

from .model import DEFAULT_MAX_LENGTH, RealizedCost, UtrcLM, rows_at_positions

register_model("utrc")(UtrcLM)

__all__ = ["DEFAULT_MAX_LENGTH", "RealizedCost", "UtrcLM", "main", "rows_at_positions"]


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's command line with `argv` (default: this process's arguments)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is None:
        cli_evaluate()
        return
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
