"""lm-eval integration: the registered model `utrc` (docs/method.md §4).

Importing this package (which `import utrc` does when lm-eval is installed) registers
`UtrcLM` with lm-eval under the name `utrc`:

    lm_eval.simple_evaluate(model="utrc", model_args="pretrained=REF,policy=PATH", tasks=[...])
    python -m utrc.lm_eval --model utrc --model_args pretrained=REF,policy=PATH --tasks piqa
    utrc eval --model_args pretrained=demo:mamba2,policy=PATH --tasks demo_piqa --limit 5

`python -m utrc.lm_eval ARGS` (and `utrc eval ARGS`) is lm-eval's own command line (`lm-eval ARGS`)
with the model registered, so every lm-eval flag works, with three defaults that suit this package:

* `--model` is `utrc` (lm-eval's is `hf`);
* `--device` is `cuda:0` where CUDA is available and `cpu` otherwise (lm-eval's is always `cuda:0`);
  a CUDA device on a machine without one stops with one line saying so;
* the demo tasks (`demo_piqa`, ... of `utrc.demo`, test split) are found by name: their directory is
  added to lm-eval's task search path, beside any `--include_path` given.
"""

from __future__ import annotations

import sys

from lm_eval.api.registry import register_model

from .model import DEFAULT_MAX_LENGTH, RealizedCost, UtrcLM, rows_at_positions

register_model("utrc")(UtrcLM)

__all__ = ["DEFAULT_MAX_LENGTH", "RealizedCost", "UtrcLM", "main", "rows_at_positions"]


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's command line with `argv` (default: this process's arguments)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from ..loading import DeviceError

    setup_logging()
    parser = HarnessCLI()
    saved = sys.argv
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]  # lm-eval's parser reads sys.argv itself
    try:
        args = parser.parse_args()
    finally:
        sys.argv = saved
    try:
        _our_defaults(args)
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    parser.execute(args)


def _our_defaults(args) -> None:
    """Fill in the defaults described in the module docstring on lm-eval's parsed arguments."""
    from ..demo import task_dir
    from ..loading import check_device

    if hasattr(args, "include_path"):  # run, ls and validate
        demo = str(task_dir("test"))
        args.include_path = [args.include_path, demo] if args.include_path else demo  # TaskManager takes a list
    if getattr(args, "command", None) != "run":
        return
    if args.model is None:
        args.model = "utrc"
    if args.device is None:
        import torch

        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    check_device(args.device)
    if isinstance(args.model_args, dict) and args.model_args.get("device"):
        check_device(args.model_args["device"])
