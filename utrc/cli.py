"""`utrc`: one command for the jobs a user runs, each the `main` of a module that also runs as
`python -m utrc.MODULE` with the same arguments.

    utrc inspect POLICY [--model REF]           # validate a policy file, show it, estimate its FLOPs
    utrc apply POLICY --model REF --text TEXT   # ... and run it on a text against the dense model
    utrc eval --model_args pretrained=REF,policy=POLICY --tasks TASKS    # lm-eval (python -m utrc.lm_eval)
    utrc profile --model REF --policy POLICY    # memory and throughput (python -m utrc.profile)
    utrc flops                                  # the paper schedule's keep ratios (python -m utrc.flops)

`utrc COMMAND --help` shows a command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {  # name: (module whose main(argv) runs it, what it does)
    "inspect": ("utrc.inspect", "validate a policy file and show it; with --model, check it fits and estimate FLOPs"),
    "apply": ("utrc.inspect", "run a policy on a text with a model: tokens per block, FLOPs, agreement with dense"),
    "eval": ("utrc.lm_eval", "lm-eval's command line with the model `utrc` (python -m utrc.lm_eval)"),
    "profile": ("utrc.profile", "memory and throughput of dense and policies (python -m utrc.profile)"),
    "flops": ("utrc.flops", "the paper schedule's keep ratios for 10/20/30 % FLOPs (python -m utrc.flops)"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(
        prog="utrc",
        description=__doc__.split("\n\n")[0],
        epilog="commands:\n" + "\n".join(f"  {name:9} {what}" for name, (_, what) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        ap.parse_args(argv[:1])  # prints help, or names the unknown command, and exits
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command][0])
    if command in ("inspect", "apply"):
        module.main(rest, command=command)
    else:
        module.main(rest)


if __name__ == "__main__":
    main()
