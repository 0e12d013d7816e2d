"""The accuracy table of docs/demo.md: the six demo tasks (split "test") through lm-eval, dense and
with the paper's schedule (utrc), evit and tome at nominal FLOPs budgets.

    python -m utrc.demo.table --model demo:mamba2 --budgets 0.1,0.2,0.3 --json results/demo_table_mamba2.json

Each row is one `utrc.evaluation.evaluate` run (lm-eval with the registered model `utrc`). The
policies use the paper's layers scaled to the model's depth (`utrc.policy.paper_layers`) with the
one keep ratio the FLOPs model gives for the budget at a 2048-token prefill
(`utrc.flops.solve_keep`), as `utrc.profile.budget_policy` builds them.
"""

from __future__ import annotations

import argparse
import json
import time

from .tasks import REPORTED_METRIC, TASKS


def run(model_ref: str, specs: list[str], batch_size: int = 32, device: str = "cpu", limit=None) -> dict:
    """{spec: utrc-results/1 document} for "dense" and "METHOD:BUDGET" specs."""
    from ..evaluation import evaluate
    from ..loading import load_model
    from .score import policy_for

    model, _ = load_model(model_ref)
    out = {}
    for spec in specs:
        t = time.time()
        policy = policy_for(model, spec, model_ref)
        out[spec] = evaluate(model_ref, policy, list(TASKS), batch_size=batch_size, device=device, limit=limit)
        keep = next(iter(policy.layers.values())).keep if policy.layers else 1.0
        print(f"{spec}: keep {keep}, average {100 * out[spec]['average']:.1f}, {time.time() - t:.0f} s", flush=True)
    return out


def markdown(results: dict) -> str:
    """Rows: policy, keep, the six reported accuracies (%), average, realized FLOPs reduction."""
    head = ["policy", "keep"] + [f"{t.removeprefix('demo_')} ({REPORTED_METRIC[t]})" for t in TASKS]
    lines = ["| " + " | ".join(head + ["average", "realized FLOPs red."]) + " |", "|" + " --- |" * (len(head) + 2)]
    for spec, doc in results.items():
        layers = doc["policy"].get("layers") or {}
        keep = next(iter(layers.values()))["keep"] if layers else 1.0
        cells = [f"{100 * doc['tasks'][t]['score']:.1f}" for t in TASKS]
        realized = [doc["tasks"][t]["realized_flops_reduction"] for t in TASKS]
        red = sum(realized) / len(realized) if all(r is not None for r in realized) else 0.0
        lines.append(f"| {spec} | {keep} | " + " | ".join(cells) + f" | **{100 * doc['average']:.1f}** | {100 * red:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo:mamba2")
    p.add_argument("--budgets", default="0.1,0.2,0.3")
    p.add_argument("--methods", default="utrc,evit,tome")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: see train.py --threads)")
    p.add_argument("--json", default=None, help="write {policy: results document} here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    specs = ["dense"] + [f"{m}:{b}" for m in a.methods.split(",") for b in a.budgets.split(",")]
    results = run(a.model, specs, a.batch_size, a.device, a.limit)
    print(markdown(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
