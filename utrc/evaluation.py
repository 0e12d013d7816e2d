"""Evaluate a (model, policy) pair on lm-eval tasks and write one results file (docs/method.md §4).

    doc = evaluate("demo:mamba2", "policy.json", "demo")     # the six demo tasks, split "test"
    write_results(doc, "results/demo_mamba2/policy.json")

`evaluate` runs `lm_eval.simple_evaluate(model="utrc", ...)` — lm-eval's own task configs,
metrics and aggregation — and turns lm-eval's results into a `utrc-results/1` document: every
metric lm-eval reports, the paper's metric per task, the six-accuracy average, the policy's nominal
FLOPs reduction and the reduction realized on each task's requests. docs/evaluation.md documents
the schema. With `item_scores=True` (`--item-scores`) each task also carries its per-item
accuracies (optional field `item_scores`), for paired comparisons of two policies on the same items.

`local_task_manager` points lm-eval's real task configs at local JSON-lines files, for machines
that cannot reach the Hugging Face hub; the configs themselves are included, never copied.

    python -m utrc.evaluation --model demo:mamba2 --policy policy.json --tasks demo --out results.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import transformers

from . import __version__
from .flops import estimate_flops
from .io import atomic_write_json, now
from .names import BENCHMARKS, DEMO_TASKS, PAPER_EXTRA_METRICS, PAPER_METRICS
from .policy import Policy
from .shapes import ModelShape

FORMAT = "utrc-results/1"

TASK_SETS = {"benchmarks": tuple(BENCHMARKS), "demo": tuple(DEMO_TASKS)}
ACCURACIES = ("acc", "acc_norm")

NOMINAL_SEQ_LEN = 2048  # the nominal reduction is stated for one 2048-token prefill, protect_last 1

# Where lm-eval 0.4 keeps the six benchmark configs, relative to lm_eval/tasks. Checked against the
# file's `task:`; any other task (or a moved file) is found through lm-eval's full task index.
_CONFIG_FILES = {
    "lambada_openai": "lambada/lambada_openai.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "piqa": "piqa/piqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "winogrande": "winogrande/default.yaml",
    "wikitext": "wikitext/wikitext.yaml",  # a loglikelihood_rolling task
}


# --- running --------------------------------------------------------------------------------------


def evaluate(
    model_ref: str,
    policy: str | Path | Policy,
    tasks: Sequence[str] | str,
    *,
    task_manager=None,
    batch_size: int | str = 8,
    device: str = "cpu",
    dtype: str | None = None,
    max_length: int | None = None,
    tokenizer: str | None = None,
    limit: int | float | None = None,
    seed: int = 1234,
    bootstrap_iters: int = 1000,
    item_scores: bool = False,
    **simple_evaluate_kwargs,
) -> dict:
    """Evaluate `model_ref` reduced by `policy` on `tasks` -> a `utrc-results/1` document.

    model_ref     a utrc model reference (local directory, hub id, "demo:mamba2", "demo:mamba")
    policy        a policy file, a `utrc.Policy`, or "dense"
    tasks         lm-eval task names, or "benchmarks" / "demo" for the six paper tasks / demo tasks
    task_manager  an lm-eval TaskManager; default: utrc.demo's for demo tasks, lm-eval's otherwise
    limit, bootstrap_iters and **simple_evaluate_kwargs go to `lm_eval.simple_evaluate`; `seed` sets
    its python, numpy, torch and few-shot seeds. bootstrap_iters (perplexity's stderr) defaults to
    1000 draws rather than lm-eval's 100000, which take ~15 s of pure Python per perplexity task.
    item_scores   also record each task's per-item accuracies (`tasks[task]["item_scores"]`; lm-eval
                  runs with log_samples=True)

    Unknown tasks, an unreadable policy file, a policy made for another model and a continuation
    longer than `max_length` raise before anything is scored.
    """
    import lm_eval

    from .lm_eval import DEFAULT_MAX_LENGTH  # registers the model `utrc`

    if isinstance(policy, (str, Path)) and str(policy) != "dense":
        Policy.load(policy)  # a missing or invalid file fails here, before anything else
    names = list(TASK_SETS[tasks]) if isinstance(tasks, str) and tasks in TASK_SETS else _as_list(tasks)
    if not names:
        raise ValueError("tasks: expected at least one lm-eval task name")
    task_manager = task_manager or _default_task_manager(names)
    unknown = [t for t in names if t not in task_manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown task(s) {unknown}: the task manager knows no such task or group. Check the names "
            "(`python -m utrc.lm_eval ls tasks` lists lm-eval's); demo tasks need "
            "task_manager=utrc.demo.task_manager(); local data files need local_task_manager(...)"
        )
    model_args = {
        "pretrained": model_ref,
        "policy": policy if isinstance(policy, Policy) else str(policy),
        "max_length": max_length or DEFAULT_MAX_LENGTH,
    }
    if dtype is not None:
        model_args["dtype"] = dtype
    if tokenizer is not None:
        model_args["tokenizer"] = tokenizer
    if item_scores:
        simple_evaluate_kwargs["log_samples"] = True
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="utrc",
        model_args=model_args,
        tasks=names,
        task_manager=task_manager,
        batch_size=batch_size,
        device=device,
        limit=limit,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=bootstrap_iters,
        **simple_evaluate_kwargs,
    )
    return results_document(
        results,
        model_ref=model_ref,
        policy_file=None if isinstance(policy, Policy) or str(policy) == "dense" else str(policy),
        seed=seed,
        batch_size=batch_size,
        limit=limit,
        elapsed_s=time.perf_counter() - start,
        item_scores=item_scores,
    )


def _as_list(tasks) -> list[str]:
    if isinstance(tasks, str):
        return [t for t in tasks.split(",") if t]
    return list(tasks)


def _default_task_manager(names: list[str]):
    if all(n in DEMO_TASKS for n in names):
        from .demo import task_manager  # the demo's shipped items, read only when asked for

        return task_manager()
    from lm_eval.tasks import TaskManager

    return TaskManager()


# --- the results document -------------------------------------------------------------------------


def results_document(
    results: Mapping,
    *,
    model_ref: str | None = None,
    policy_file: str | None = None,
    seed: int | None = None,
    batch_size=None,
    limit=None,
    elapsed_s: float | None = None,
    item_scores: bool = False,
) -> dict:
    """Build a `utrc-results/1` document from lm-eval's results of a run with the model `utrc`
    (what `simple_evaluate` returns, or the results JSON lm-eval's command line writes).

    item_scores  add each task's per-item accuracies (`item_scores`, see `_item_scores`); needs
                 the results of a run with log_samples=True
    """
    info = results["config"].get("utrc")
    if info is None:
        raise ValueError("these lm-eval results were not produced by the model `utrc` (no config.utrc section)")
    shape = ModelShape(**info["shape"])
    policy = Policy.from_dict(info["policy"])
    tasks = {}
    for task in sorted(results["n-samples"]):
        metrics = _metrics(results["results"][task])
        paper = PAPER_METRICS.get(task)
        realized = info["realized"].get(task)
        tasks[task] = {
            "metrics": metrics,
            "paper_metric": paper,
            "score": metrics.get(paper) if paper else None,
            "paper_extra": {m: metrics.get(m) for m in PAPER_EXTRA_METRICS.get(task, ())},
            "n_items": results["n-samples"][task]["effective"],
            "n_requests": realized["requests"] if realized else 0,
            "realized_flops_reduction": realized["flops_reduction"] if realized else None,
            "realized_token_fraction": realized["token_fraction"] if realized else None,
            "dense_fallback": realized["dense_fallback"] if realized else False,
            "realized": realized,
            "task_version": results.get("versions", {}).get(task),
            "num_fewshot": results.get("n-shot", {}).get(task),
        }
        if item_scores:
            tasks[task]["item_scores"] = _item_scores(results, task)
    averaged = [t for t, d in tasks.items() if d["paper_metric"] in ACCURACIES and d["score"] is not None]
    nominal = estimate_flops(shape, policy, seq_len=NOMINAL_SEQ_LEN, protect_last=1)
    config = results["config"]
    return {
        "format": FORMAT,
        "model": model_ref or info["pretrained"],
        "policy": policy.to_dict(),
        "policy_file": policy_file if policy_file is not None else info.get("policy_file"),
        "method": policy.method,
        "tasks": tasks,
        "average": statistics.fmean(tasks[t]["score"] for t in averaged) if averaged else None,
        "average_over": averaged,
        "groups": {g: _metrics(results["results"][g]) for g in results.get("groups", {}) if g in results["results"]},
        "nominal": nominal,
        "versions": {
            "utrc": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lm_eval": importlib.metadata.version("lm_eval"),
            "python": platform.python_version(),
        },
        "device": info["device"],
        "device_name": device_name(info["device"]),
        "dtype": config.get("model_dtype"),
        "max_length": info["max_length"],
        "seed": seed if seed is not None else config.get("random_seed"),
        "batch_size": batch_size if batch_size is not None else config.get("batch_size"),
        "limit": limit if limit is not None else config.get("limit"),
        "date": now(),
        "elapsed_s": elapsed_s,
    }


_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


def _item_scores(results: Mapping, task: str) -> dict:
    """{"doc_id": [...], "doc_hash": [...], "acc": [...], "acc_norm": [...]}: one entry per item of
    `task`, ordered by doc_id, for the accuracies lm-eval scored per item (filter "none", or the
    task's only filter). Raises if the run did not log its samples."""
    samples = results.get("samples", {}).get(task)
    if samples is None:
        raise ValueError(f"item scores of {task!r}: lm-eval logged no samples (run it with log_samples=True)")
    filters = sorted({s.get("filter", "none") for s in samples})
    chosen = "none" if "none" in filters else filters[0]
    rows = sorted((s for s in samples if s.get("filter", "none") == chosen), key=lambda s: s["doc_id"])
    metrics = [m for m in ACCURACIES if rows and all(m in s for s in rows)]
    out = {"doc_id": [s["doc_id"] for s in rows], "doc_hash": [s.get("doc_hash") for s in rows]}
    out.update({m: [float(s[m]) for s in rows] for m in metrics})
    return out


def _metrics(raw: Mapping) -> dict:
    """lm-eval's "acc,none" / "acc_stderr,none" keys -> "acc" / "acc_stderr"; other filters keep
    their suffix ("exact_match,strict-match"). A stderr lm-eval could not compute ("N/A") -> None."""
    out = {}
    for key, value in raw.items():
        if key in _NOT_METRICS:
            continue
        name, _, filt = key.partition(",")
        name = name if filt in ("", "none") else key
        out[name] = None if value == "N/A" else value
    return out


def device_name(device: str) -> str:
    """A human description of the machine: the GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU, {cores} cores ({model})"


def write_results(doc: Mapping, path: str | Path) -> Path:
    """Write a results document as JSON (atomically: a reader never sees half a file)."""
    if doc.get("format") != FORMAT:
        raise ValueError(f"format: expected {FORMAT!r}, got {doc.get('format')!r}")
    return atomic_write_json(path, doc, allow_nan=True)


def read_results(path: str | Path) -> dict:
    """Read a results document, checking its format."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format: expected {FORMAT!r}, got {doc.get('format')!r}")
    return doc


# --- lm-eval's task configs on local data files ---------------------------------------------------


def task_config_path(task: str) -> Path:
    """The YAML file of lm-eval's own config for `task`."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    if task in _CONFIG_FILES:
        path = Path(lm_eval.tasks.__file__).parent / _CONFIG_FILES[task]
        if path.is_file() and load_yaml(path, resolve_func=False).get("task") == task:
            return path
    entry = TaskManager().task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise ValueError(f"unknown task {task!r}: lm-eval has no YAML config of that name")
    return Path(entry.yaml_path)


def local_task_manager(data_files: Mapping[str, str | Path | Mapping[str, str | Path]], directory: str | Path):
    """A TaskManager whose tasks are lm-eval's own configs reading local JSON-lines files.

    data_files  {task: file} (the file serves every split the config names: lm-eval builds them
                all, even zero-shot) or {task: {split: file}}. Each file holds the dataset's own
                fields and types (e.g. winogrande's `answer` is the string "1" or "2").
    directory   where the small override YAMLs (and the datasets cache) are written

    Each override YAML `include:`s the installed config and replaces only where the data comes
    from (`dataset_path: json`, `dataset_name: null`, `dataset_kwargs.data_files`); prompts,
    metrics and processing stay lm-eval's. Only these tasks are indexed (fast).
    """
    import yaml
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for task, files in data_files.items():
        config = task_config_path(task)
        cfg = load_yaml(config, resolve_func=False)
        if isinstance(files, (str, Path)):
            splits = {cfg.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")}
            files = {split: files for split in splits if split}
        files = {split: str(Path(f).resolve()) for split, f in files.items()}
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"{task}: data file(s) not found: {missing}")
        override = {
            "include": str(config),
            "task": task,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files, "cache_dir": str(directory / "datasets_cache")},
        }
        (directory / f"{task}.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    return TaskManager(include_path=str(directory), include_defaults=False)


# --- command line ---------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m utrc.evaluation",
                                 description="Evaluate a policy; write a utrc-results/1 file.")
    ap.add_argument("--model", required=True, help="model reference (directory, hub id, demo:mamba2, demo:mamba)")
    ap.add_argument("--policy", required=True, help="policy file, or 'dense'")
    ap.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, or 'benchmarks' / 'demo'")
    ap.add_argument("--out", required=True, help="results file to write")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--include-path", default=None, help="directory of extra lm-eval task YAMLs")
    ap.add_argument(
        "--item-scores", action="store_true",
        help="also record each task's per-item accuracies (field item_scores), for paired comparisons",
    )
    ap.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: torch's choice; use 1 per job when jobs share the cores)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task_manager = None
    if args.include_path:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager(include_path=args.include_path)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    doc = evaluate(
        args.model, args.policy, args.tasks, task_manager=task_manager, batch_size=batch_size, device=args.device,
        dtype=args.dtype, max_length=args.max_length, limit=limit, seed=args.seed, item_scores=args.item_scores,
    )
    write_results(doc, args.out)
    for task, t in doc["tasks"].items():
        print(f"{task:24} {t['paper_metric'] or '-':8} {t['score'] if t['score'] is not None else float('nan'):.4f}  "
              f"realized FLOPs reduction {t['realized_flops_reduction'] or 0:.3f}")
    print(f"average {doc['average']}  nominal reduction {doc['nominal']['reduction']:.3f}  -> {args.out}")


if __name__ == "__main__":
    main()
