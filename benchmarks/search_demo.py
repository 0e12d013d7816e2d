"""The search's acceptance run on the demo model, end to end, in one command.

    python benchmarks/search_demo.py [--out results/search-demo] [--threads 1]

Runs the user-facing commands as subprocesses, exactly as docs/search.md documents them:

1. `python -m search.calibrate` (32 x 256-token windows of the demo calibration text, score-last 8);
2. for each budget (10 / 20 / 30 % nominal FLOPs): `python -m search.run` (120 trials, dev set of
   48 whole documents truncated to their last 1024 tokens, score-last 16) and `python -m
   search.export` (searched policy, the paper / EViT / ToMe / dense baselines, trial tables);
3. `python -m utrc.evaluation --item-scores` on the held-out TEST split of the six demo tasks (every
   item) for dense, the paper and searched policies of every budget, and EViT / ToMe at 30 %;
   each utrc-results/1 document goes to OUT/eval/NAME.json;

then computes the paired bootstrap of searched - paper per budget (per-item differences of each
task's paper metric, task-balanced mean, 2000 resamples of items within each task, seed 0),
writes OUT/accuracy.json and prints the markdown table of docs/search.md (also OUT/table.md).
Each step's output goes to OUT/logs/STEP.log; a failing step stops the run with its log's tail.

A study journal already in OUT is resumed by search.run (which stops at 120 COMPLETE trials), but
only if it was created from the same calibration (model, text and settings): a study of another
model stops the run before any trial. Every other step is redone.

Run time on the 2-core development CPU with one torch thread: about 17 minutes (2026-11-25: 999 s;
calibration 17 s, the three searches 228 / 199 / 173 s, the ten evaluations 35-54 s each). Two runs
gave identical policies, trial tables and test scores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `search` is run from the repository root, not installed

from utrc.io import atomic_write_json  # noqa: E402

MODEL = "demo:mamba2"
MODEL_FILE = REPO / "utrc" / "demo" / "models" / "mamba2" / "model.safetensors"
BUDGETS = ("0.1", "0.2", "0.3")
BASELINES_AT = "0.3"  # EViT and ToMe are evaluated at this budget only
CALIBRATION_ARGS = ["--text", "demo", "--n-sequences", "32", "--seq-len", "256", "--score-last", "8"]
SEARCH_ARGS = ["--dev-unit", "document", "--dev-sequences", "48", "--dev-length", "1024", "--score-last", "16"]
# --objective: what search.run minimises. "kl": dev KL alone (the default objective). "dev-accuracy":
# KL + 4 x (1 - accuracy on the first 40 dev items of each demo task), through lm-eval (~15 s a trial).
OBJECTIVES = {
    "kl": [],
    "dev-accuracy": ["--quality", "kl+dev_error", "--dev-error-weight", "4", "--dev-limit", "40"],
}
N_TRIALS = 120
EVAL_SEED = 1234
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# (task, table column), in the table's order
COLUMNS = (
    ("demo_arc_challenge", "arc_c"),
    ("demo_arc_easy", "arc_e"),
    ("demo_hellaswag", "hellaswag"),
    ("demo_lambada", "lambada"),
    ("demo_piqa", "piqa"),
    ("demo_winogrande", "winogrande"),
)


@dataclass(frozen=True)
class Settings:
    out: Path
    threads: int
    n_trials: int
    budgets: tuple[str, ...]
    eval_limit: int | None
    objective: str = "kl"
    workers: int = 1


@dataclass(frozen=True)
class Evaluation:
    name: str  # run name in accuracy.json and file name under OUT/eval
    label: str  # table row
    policy: str  # policy file or "dense"


def main(argv=None) -> None:
    settings = parse_args(argv)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    calibration = calibrate(settings, timings)
    for budget in settings.budgets:
        search(settings, budget, calibration, timings)
    docs = {e.name: evaluate(settings, e, timings) for e in evaluations(settings)}
    accuracy = accuracy_document(settings, docs, calibration, timings, time.perf_counter() - start)
    write_json(settings.out / "accuracy.json", accuracy)
    table = markdown_table(accuracy, evaluations(settings))
    (settings.out / "table.md").write_text(table + "\n")
    print()
    print(table)
    print()
    print(bootstrap_lines(accuracy))
    print(f"\nwall time {accuracy['elapsed_s']['total']:.0f} s -> {settings.out / 'accuracy.json'}")


def parse_args(argv) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/search-demo", help="output directory (default results/search-demo)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of every step (default 1)")
    ap.add_argument("--n-trials", type=int, default=N_TRIALS, help=f"trials per budget (acceptance: {N_TRIALS})")
    ap.add_argument("--budgets", default=",".join(BUDGETS), help="comma-separated budgets (acceptance: 0.1,0.2,0.3)")
    ap.add_argument("--eval-limit", type=int, default=None,
                    help="items per task (smoke tests only; default every item)")
    ap.add_argument("--objective", choices=sorted(OBJECTIVES), default="kl",
                    help="kl (default) or dev-accuracy (KL + 4 x dev error on 40 dev items per task)")
    ap.add_argument("--workers", type=int, default=1,
                    help="search.run processes per study, sharing its journal (seeds 0..N-1; with N > 1 "
                         "the trial order, hence the result, depends on timing)")
    args = ap.parse_args(argv)
    budgets = tuple(b.strip() for b in args.budgets.split(",") if b.strip())
    if not budgets or args.n_trials < 1 or args.threads < 1 or args.workers < 1:
        ap.error("expected at least one budget, --n-trials >= 1, --threads >= 1 and --workers >= 1")
    return Settings(Path(args.out).resolve(), args.threads, args.n_trials, budgets, args.eval_limit,
                    args.objective, args.workers)


# --- steps ----------------------------------------------------------------------------------------


def calibrate(settings: Settings, timings: dict) -> dict:
    """Run search.calibrate -> the calibration summary (with its hash)."""
    summary = settings.out / "calibration.json"
    run_step(settings, "calibrate", [
        "-m", "search.calibrate", "--model", MODEL, *CALIBRATION_ARGS, "--threads", str(settings.threads),
        "--out-table", repo_relative(settings.out / "calibration.parquet"), "--out-summary", repo_relative(summary),
    ], timings)
    return json.loads(summary.read_text())


def search(settings: Settings, budget: str, calibration: dict, timings: dict) -> None:
    """search.run (resuming a study of the same calibration) then search.export, for one budget."""
    storage = settings.out / f"study-{budget}.journal"
    check_resumable(storage, calibration["hash"])
    worker_args = [
        "-m", "search.run", "--model", MODEL, "--budget", budget, "--storage", repo_relative(storage),
        "--calibration", repo_relative(settings.out / "calibration.json"), "--n-trials", str(settings.n_trials),
        "--threads", str(settings.threads), *SEARCH_ARGS, *OBJECTIVES[settings.objective],
    ]
    if settings.workers == 1:
        run_step(settings, f"search-{budget}", worker_args, timings)
    else:
        run_steps(settings, {f"search-{budget}-worker{w}": [*worker_args, "--seed", str(w)]
                             for w in range(settings.workers)}, timings)
    run_step(settings, f"export-{budget}", [
        "-m", "search.export", "--storage", repo_relative(storage), "--model", MODEL, "--budget", budget,
        "--out", repo_relative(settings.out),
    ], timings)


def check_resumable(storage: Path, calibration_hash: str) -> None:
    """Stop if `storage` holds a study made from another calibration (another model, text or settings):
    search.run would resume it and, with enough trials already there, export its old policies."""
    if not storage.exists():
        return
    import optuna

    from search.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for summary in optuna.get_all_study_summaries(open_storage(str(storage))):
        stored = (summary.user_attrs.get("calibration") or {}).get("hash")
        if stored != calibration_hash:
            raise SystemExit(
                f"error: {storage} holds study {summary.study_name!r} made from calibration "
                f"{(stored or 'none')[:12]}…, not the current one ({calibration_hash[:12]}…: another model, text "
                "or settings); delete that journal or choose another --out"
            )


def evaluations(settings: Settings) -> list[Evaluation]:
    """dense, then paper and searched per budget, then EViT and ToMe at BASELINES_AT."""
    policies = settings.out / "policies"
    out = [Evaluation("dense", "dense", "dense")]
    for budget in settings.budgets:
        for method in ("paper", "searched"):
            policy = repo_relative(policies / f"{method}-{budget}.json")
            out.append(Evaluation(f"{method}-{budget}", f"{method}, {percent(budget)}", policy))
    if BASELINES_AT in settings.budgets:
        for method in ("evit", "tome"):
            out.append(Evaluation(f"{method}-{BASELINES_AT}", f"{method}, {percent(BASELINES_AT)}",
                                  repo_relative(policies / f"{method}-{BASELINES_AT}.json")))
    return out


def evaluate(settings: Settings, evaluation: Evaluation, timings: dict) -> dict:
    """utrc.evaluation on the demo tasks' test split, with per-item scores -> the results document."""
    path = settings.out / "eval" / f"{evaluation.name}.json"
    limit = ["--limit", str(settings.eval_limit)] if settings.eval_limit else []
    run_step(settings, f"eval-{evaluation.name}", [
        "-m", "utrc.evaluation", "--model", MODEL, "--policy", evaluation.policy, "--tasks", "demo",
        "--threads", str(settings.threads), "--seed", str(EVAL_SEED), "--item-scores", *limit,
        "--out", repo_relative(path),
    ], timings)
    return json.loads(path.read_text())


def run_step(settings: Settings, name: str, args: list[str], timings: dict) -> None:
    """Run `python ARGS` from the repository root, output to OUT/logs/NAME.log; stop on failure."""
    run_steps(settings, {name: args}, timings)


def run_steps(settings: Settings, steps: dict[str, list[str]], timings: dict) -> None:
    """Run `python ARGS` for every {NAME: ARGS} at once, each with its log OUT/logs/NAME.log; wait for
    all, then stop with the first failure's log tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "DISABLE_MULTIPROC": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    running = {}
    start = time.perf_counter()
    for name, args in steps.items():
        log = settings.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, *args]
        print(f"{now()} {name}: {' '.join(args)}", flush=True)
        f = log.open("w")
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        running[name] = (subprocess.Popen(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT), f, log)
    failed = []
    for name, (proc, f, log) in running.items():
        rc = proc.wait()
        f.close()
        timings[name] = round(time.perf_counter() - start, 1)
        if rc != 0:
            failed.append((name, rc, log))
        else:
            print(f"{now()} {name}: done in {timings[name]:.0f} s", flush=True)
    if failed:
        name, rc, log = failed[0]
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"{tail}\n\nerror: step {name!r} failed with exit status {rc} (full log: {log})")


# --- accuracy.json --------------------------------------------------------------------------------


def accuracy_document(settings: Settings, docs: dict, calibration: dict, timings: dict, total_s: float) -> dict:
    from search.provenance import file_hash
    from utrc.evaluation import device_name

    timings = {**timings, "total": round(total_s, 1)}
    return {
        "protocol": protocol(settings),
        # the same model hash as the calibration summary and the policies' provenance (sha256 over the
        # parameters' names, dtypes, shapes and bytes); the file's own sha256 beside it
        "model_hash": calibration["model"]["hash"],
        "model_file_sha256": file_hash(MODEL_FILE),
        "calibration_hash": calibration["hash"],
        "machine": f"{device_name('cpu')}, {settings.threads} torch thread(s)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": timings,
        "runs": {name: run_summary(doc) for name, doc in docs.items()},
        "paired_bootstrap_searched_minus_paper": {
            "method": f"per-item paired differences of each task's paper metric, task-balanced mean, "
                      f"{BOOTSTRAP_RESAMPLES} resamples of items within each task (seed {BOOTSTRAP_SEED})",
            **{budget: paired_bootstrap(docs[f"searched-{budget}"], docs[f"paper-{budget}"])
               for budget in settings.budgets},
        },
    }


def protocol(settings: Settings) -> str:
    limit = f"{settings.eval_limit} items per task" if settings.eval_limit else "every item"
    return (
        f"python benchmarks/search_demo.py --out {repo_relative(settings.out)} --threads {settings.threads} "
        f"--objective {settings.objective} --workers {settings.workers} "
        f"(budgets {','.join(settings.budgets)}, {settings.n_trials} trials each); evaluation: python -m "
        f"utrc.evaluation --model {MODEL} --policy P --tasks demo --threads {settings.threads} --item-scores "
        f"(test split, {limit}; CPU float32; seed {EVAL_SEED})"
    )


def run_summary(doc: dict) -> dict:
    """One policy's line of accuracy.json, from its utrc-results/1 document."""
    tasks = {
        task: {"metric": t["paper_metric"], "score": t["score"], "n_items": t["n_items"],
               "realized_flops_reduction": t["realized_flops_reduction"]}
        for task, t in sorted(doc["tasks"].items())
    }
    return {
        "average": doc["average"],
        "nominal_reduction": doc["nominal"]["reduction"],
        "realized_flops_reduction_mean": statistics.fmean(t["realized_flops_reduction"] or 0.0 for t in tasks.values()),
        "tasks": tasks,
        "policy_file": repo_relative(doc["policy_file"]) if doc["policy_file"] else None,
        "model": doc["model"],
        "versions": doc["versions"],
        "date": doc["date"],
    }


def paired_bootstrap(searched: dict, paper: dict) -> dict:
    """Task-balanced mean of per-item (searched - paper) differences of each task's paper metric,
    with a percentile 95 % interval over resamples of the items within each task."""
    diffs = [item_differences(searched, paper, task) for task in sorted(searched["tasks"])]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = np.zeros(BOOTSTRAP_RESAMPLES)
    for d in diffs:
        draws += d[rng.integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))].mean(axis=1)
    draws /= len(diffs)
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "mean": round(float(np.mean([d.mean() for d in diffs])), 4),
        "ci95": [round(float(low), 4), round(float(high), 4)],
        "share_of_resamples_le_0": round(float(np.mean(draws <= 0)), 4),
    }


def item_differences(a: dict, b: dict, task: str) -> np.ndarray:
    """Per-item a - b of `task`'s paper metric; the two runs must have scored the same items."""
    ta, tb = a["tasks"][task], b["tasks"][task]
    ia, ib = ta["item_scores"], tb["item_scores"]
    if ia["doc_id"] != ib["doc_id"] or ia["doc_hash"] != ib["doc_hash"]:
        raise SystemExit(f"error: {task}: the two evaluations scored different items; cannot pair them")
    metric = ta["paper_metric"]
    return np.asarray(ia[metric], dtype=float) - np.asarray(ib[metric], dtype=float)


# --- output ---------------------------------------------------------------------------------------


def markdown_table(accuracy: dict, rows: list[Evaluation]) -> str:
    head = "| policy | nominal | realized | " + " | ".join(c for _, c in COLUMNS) + " | **average** |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for e in rows:
        r = accuracy["runs"][e.name]
        scores = " | ".join(f"{100 * r['tasks'][t]['score']:.1f}" for t, _ in COLUMNS)
        nominal = "0" if e.name == "dense" else f"{r['nominal_reduction']:.3f}"
        realized = "0" if e.name == "dense" else f"{r['realized_flops_reduction_mean']:.3f}"
        lines.append(f"| {e.label} | {nominal} | {realized} | {scores} | **{100 * r['average']:.1f}** |")
    return "\n".join(lines)


def bootstrap_lines(accuracy: dict) -> str:
    boot = accuracy["paired_bootstrap_searched_minus_paper"]
    lines = [f"searched - paper ({boot['method']}):"]
    for budget, b in boot.items():
        if budget != "method":
            low, high = b["ci95"]
            lines.append(f"  {percent(budget)}: {100 * b['mean']:+.1f} points, 95 % interval "
                         f"[{100 * low:+.1f}, {100 * high:+.1f}], share <= 0: {b['share_of_resamples_le_0']}")
    return "\n".join(lines)


def write_json(path: Path, doc: dict) -> None:
    atomic_write_json(path, doc, indent=1)


def percent(budget: str) -> str:
    return f"{round(100 * float(budget), 6):g} %"


def repo_relative(path: str | Path) -> str:
    """A path relative to the repository root when it lies inside it (the steps run from the root;
    the files they write then record no machine-specific directory), else absolute."""
    path = (REPO / path).resolve()  # a relative path is relative to the root, where the steps run
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def now() -> str:
    return time.strftime("%H:%M:%S")


if __name__ == "__main__":
    main()
