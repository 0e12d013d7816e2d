"""Wall time of one policy's evaluation through lm-eval (`utrc.evaluation.evaluate`) on the CPU.

Target: the demo suite (six demo tasks, demo model) for one policy in under a minute on
the CPU. Timed end to end as a user runs it: model load, lm-eval task building, scoring, metric
aggregation. The same run with `--policy dense` gives the unreduced baseline.

    python benchmarks/eval_speed.py                                   # demo:mamba2, paper schedule keep 0.9, demo suite
    python benchmarks/eval_speed.py --model demo:mamba --policy dense
    python benchmarks/eval_speed.py --tasks benchmarks --local-data tests/data/lm_eval --model DIR --policy FILE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from utrc import ModelShape, ModelSpec, Policy, load_model
from utrc.evaluation import device_name, evaluate, local_task_manager
from utrc.names import BENCHMARKS


def policy_file(spec: str, model_ref: str, directory: Path) -> str:
    """'dense', a policy file, or 'utrc-paper@KEEP' (the paper's schedule for this model at one keep ratio)."""
    if spec == "dense" or not spec.startswith("utrc-paper@"):
        return spec
    model, _ = load_model(model_ref)
    policy = Policy.paper(ModelSpec.of(ModelShape.of(model), name=model_ref), float(spec.split("@", 1)[1]))
    return str(policy.save(directory / "policy.json"))


def task_manager(args, directory: Path):
    if args.local_data:
        names = BENCHMARKS if args.tasks == "benchmarks" else args.tasks.split(",")
        return local_task_manager({t: Path(args.local_data) / f"{t}.jsonl" for t in names}, directory / "tasks")
    if args.tasks == "demo":
        from utrc import demo  # the demo tasks' items ship with the package

        return demo.task_manager()
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo:mamba2")
    ap.add_argument("--policy", default="utrc-paper@0.9", help="'dense', a policy file, or 'utrc-paper@KEEP'")
    ap.add_argument("--tasks", default="demo", help="'demo', 'benchmarks' or comma-separated lm-eval tasks")
    ap.add_argument("--local-data", default=None, help="directory of TASK.jsonl files for lm-eval's configs")
    ap.add_argument("--batch-size", default="16")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # bootstrap in-process: no pool on a shared machine

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy = policy_file(args.policy, args.model, tmp)
        tm = task_manager(args, tmp)
        batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
        start = time.perf_counter()
        doc = evaluate(args.model, policy, args.tasks, task_manager=tm, batch_size=batch_size, device="cpu",
                       limit=args.limit)
        wall = time.perf_counter() - start

    requests = sum(t["n_requests"] for t in doc["tasks"].values())
    n_layer = len(doc["nominal"]["tokens_per_layer"])
    input_tokens = sum(t["realized"]["dense_tokens"] for t in doc["tasks"].values() if t["realized"]) // n_layer
    print(json.dumps({
        "model": args.model,
        "policy": args.policy,
        "method": doc["method"],
        "tasks": sorted(doc["tasks"]),
        "items": sum(t["n_items"] for t in doc["tasks"].values()),
        "requests": requests,
        "input_tokens": input_tokens,
        "wall_s": round(wall, 2),
        "lm_eval_run_s": round(doc["elapsed_s"], 2),
        "average": doc["average"],
        "realized_flops_reduction": {t: round(d["realized_flops_reduction"], 4) for t, d in doc["tasks"].items()},
        "nominal_reduction": round(doc["nominal"]["reduction"], 4),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": device_name("cpu"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
