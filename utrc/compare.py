"""Is the searched policy better than the others at the same cost? A paired comparison of evaluations
on the same items, written as one `utrc-compare/1` file per model and budget (docs/workflow.md).

For each other run (dense, tome, evit, utrc-paper), the per-item differences (searched - other) of
each task's paper metric (docs/method.md §4) are averaged within each task, then over the tasks
(task-balanced, as the reported average). The 95 % interval is a paired bootstrap: the items of
each task are resampled with replacement, the same draw for every seed's policy, so the interval
is over items. With several search seeds the difference is the mean over seeds, and each seed's
own difference is listed: the spread between seeds is not in the interval.

Accuracy is only comparable at equal cost. The cost of a run is its realized FLOPs reduction on the
evaluated items (task-balanced mean of each task's), which is not the nominal budget: two policies
on one nominal budget remove different shares of FLOPs from short prompts. The verdict says
"better" only when the interval is above 0 and the searched policy removes at least as much
(within `cost_tolerance`); "worse" only when it is below 0 and the searched policy removes at most
as much; otherwise "no difference" (the interval holds 0) or "not comparable" (the difference
could be bought by the cost difference).

    python -m utrc.compare --budget 0.3 --out results/demo-mamba2/compare/flops0.3.json \\
        --searched results/demo-mamba2/eval/utrc-searched_flops0.3.json \\
        --against utrc-paper=results/demo-mamba2/eval/utrc-paper_flops0.3.json --against dense=...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from .io import atomic_write_json, stamp

FORMAT = "utrc-compare/1"
RESAMPLES = 2000
SEED = 0
COST_TOLERANCE = 0.01  # realized FLOPs reductions closer than 1 point count as the same cost


class CompareError(ValueError):
    """The evaluations cannot be paired (other items, no per-item scores)."""


def compare(searched: dict[str, dict], against: dict[str, dict], budget: float, *, resamples: int = RESAMPLES,
            seed: int = SEED, cost_tolerance: float = COST_TOLERANCE) -> dict:
    """searched: {file: utrc-results/1 document} of each search seed's policy, in seed order;
    against: {run: (file, document)} -> the `utrc-compare/1` document."""
    if not searched or not against:
        raise CompareError("need the searched policy's evaluation and at least one other run's")
    tasks = _tasks(next(iter(searched.values())))
    rng = np.random.default_rng(seed)
    draws = {task: rng.integers(0, n, size=(resamples, n)) for task, n in tasks.items()}  # one draw for every pair
    seeds = [_summary(file, doc, tasks) for file, doc in searched.items()]
    out = {
        "format": FORMAT,
        "model": next(iter(searched.values()))["model"],
        "budget": budget,
        "protocol": {
            "score": "each task's paper metric per item, mean within each task, then over the tasks",
            "tasks": dict(tasks),
            "interval": "95 % percentile interval of a paired bootstrap over items (resampled within each task)",
            "resamples": resamples,
            "seed": seed,
            "cost": "realized FLOPs reduction on the evaluated items, mean over the tasks",
            "cost_tolerance": cost_tolerance,
        },
        "searched": {
            "seeds": seeds,
            "average": _spread([s["average"] for s in seeds]),
            "realized_flops_reduction": _spread([s["realized_flops_reduction"] for s in seeds]),
        },
        "against": {},
        **stamp(),
    }
    for run, (file, doc) in against.items():
        other = _summary(file, doc, tasks)
        per_seed = [_differences(s_doc, doc, tasks) for s_doc in searched.values()]  # [seed][task] -> items
        boot = np.zeros(resamples)
        for task, draw in draws.items():
            boot += np.mean([d[task][draw].mean(axis=1) for d in per_seed], axis=0)
        boot /= len(tasks)
        seed_means = [float(np.mean([d[task].mean() for task in tasks])) for d in per_seed]
        low, high = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
        cost = out["searched"]["realized_flops_reduction"]["mean"] - other["realized_flops_reduction"]
        out["against"][run] = {
            **other,
            "difference": {"mean": statistics.fmean(seed_means), "ci95": [low, high], "per_seed": seed_means,
                           "share_of_resamples_le_0": float(np.mean(boot <= 0))},
            "cost_difference": cost,
            "verdict": verdict(low, high, cost, cost_tolerance),
        }
    return out


def verdict(low: float, high: float, cost_difference: float, tolerance: float) -> str:
    """better / worse / no difference / not comparable (see the module docstring); `cost_difference`
    is the searched policy's realized FLOPs reduction minus the other's (positive: it removes more)."""
    if low > 0:
        return "better" if cost_difference >= -tolerance else "not comparable: more accurate, but removes less FLOPs"
    if high < 0:
        return "worse" if cost_difference <= tolerance else "not comparable: less accurate, but removes more FLOPs"
    return "no difference"


def _tasks(doc: dict) -> dict[str, int]:
    """{task: items} of the averaged tasks that carry per-item scores."""
    tasks = {t: len(doc["tasks"][t].get("item_scores", {}).get("doc_id", [])) for t in doc["average_over"]}
    missing = [t for t, n in tasks.items() if n == 0]
    if missing or not tasks:
        raise CompareError(f"{doc.get('policy_file') or doc['method']}: no per-item scores for "
                           f"{missing or 'any task'}; evaluate with --item-scores (utrc.evaluation)")
    return tasks


def _summary(file: str, doc: dict, tasks: dict) -> dict:
    realized = [doc["tasks"][t]["realized_flops_reduction"] or 0.0 for t in tasks]
    return {"file": str(file), "method": doc["method"], "average": doc["average"],
            "nominal_flops_reduction": doc["nominal"]["reduction"],
            "realized_flops_reduction": statistics.fmean(realized)}


def _differences(a: dict, b: dict, tasks: dict) -> dict[str, np.ndarray]:
    """{task: per-item a - b of its paper metric}; both runs must have scored the same items."""
    out = {}
    for task in tasks:
        ta, tb = a["tasks"].get(task), b["tasks"].get(task)
        if tb is None or "item_scores" not in tb:
            raise CompareError(f"{b.get('policy_file') or b['method']}: no per-item scores of {task}; "
                               "evaluate with --item-scores")
        ia, ib = ta["item_scores"], tb["item_scores"]
        if ia["doc_id"] != ib["doc_id"] or ia["doc_hash"] != ib["doc_hash"]:
            raise CompareError(f"{task}: the two evaluations scored different items; they cannot be paired")
        metric = ta["paper_metric"]
        out[task] = np.asarray(ia[metric], dtype=float) - np.asarray(ib[metric], dtype=float)
    return out


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _read(path: str) -> dict:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != "utrc-results/1":
        raise SystemExit(f"error: {path}: expected a utrc-results/1 file (utrc.evaluation), got {doc.get('format')!r}")
    return doc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m utrc.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--searched", nargs="+", required=True,
                    help="utrc-results/1 files of the searched policy, one per seed")
    ap.add_argument("--against", action="append", required=True, metavar="RUN=FILE", help="another run's results file")
    ap.add_argument("--budget", type=float, required=True, help="the nominal FLOPs budget the policies were fitted to")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resamples", type=int, default=RESAMPLES)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--cost-tolerance", type=float, default=COST_TOLERANCE)
    args = ap.parse_args(argv)
    against = {}
    for item in args.against:
        run, sep, file = item.partition("=")
        if not sep or not file:
            ap.error(f"--against {item!r}: expected RUN=FILE")
        against[run] = (file, _read(file))
    try:
        doc = compare({f: _read(f) for f in args.searched}, against, args.budget, resamples=args.resamples,
                      seed=args.seed, cost_tolerance=args.cost_tolerance)
    except CompareError as err:
        raise SystemExit(f"error: {err}") from None
    atomic_write_json(args.out, doc, indent=1)
    for run, c in doc["against"].items():
        d = c["difference"]
        low, high = d["ci95"]
        print(f"utrc-searched - {run}: {100 * d['mean']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], "
              f"realized FLOPs reduction {100 * doc['searched']['realized_flops_reduction']['mean']:.1f} % vs "
              f"{100 * c['realized_flops_reduction']:.1f} %: {c['verdict']}")


if __name__ == "__main__":
    main()
