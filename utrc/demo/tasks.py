"""The six demo tasks as lm-eval tasks: local JSONL data and YAML configs written on first use.

    tm = utrc.demo.task_manager()            # test items; split="dev" for the search's items
    lm_eval.simple_evaluate(model=..., tasks=list(utrc.demo.TASKS), task_manager=tm)

Files go to a cache directory, never into the installed package:
``$UTRC_CACHE/demo/<split>-<key>/`` (default ``~/.cache/utrc``), where ``<key>`` hashes the
generator's source code, the split, the seed and the item count, so a changed generator never
reads stale data. A directory is written under a temporary name and renamed into place, so any
number of processes (parallel Snakemake jobs) may call `task_manager` at once: the first rename
wins, the others find the finished directory. YAML files name their data by absolute path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from . import items as I
from .world import GENERATOR_VERSION

TASKS = I.TASKS

REPORTED_METRIC = {
    "demo_lambada": "acc",
    "demo_hellaswag": "acc_norm",
    "demo_piqa": "acc",
    "demo_arc_easy": "acc",
    "demo_arc_challenge": "acc_norm",
    "demo_winogrande": "acc",
}
"""The metric the paper reports for each task's benchmark (SPEC §4); demo_lambada also has perplexity."""

BENCHMARK = {
    "demo_lambada": "lambada_openai",
    "demo_hellaswag": "hellaswag",
    "demo_piqa": "piqa",
    "demo_arc_easy": "arc_easy",
    "demo_arc_challenge": "arc_challenge",
    "demo_winogrande": "winogrande",
}
"""The real benchmark each demo task stands in for."""

SEEDS = {"dev": 2, "test": 3}
ITEMS_PER_TASK = {
    "demo_lambada": 150,
    "demo_hellaswag": 75,
    "demo_piqa": 100,
    "demo_arc_easy": 75,
    "demo_arc_challenge": 75,
    "demo_winogrande": 100,
}
"""Default item counts (dev and test alike): fewer for the 4-way tasks, whose items cost 4
requests each, so the six tasks evaluate in under a minute on 2 CPU cores."""
_SOURCES = ("vocab.py", "world.py", "items.py", "tasks.py")


def cache_root() -> Path:
    """$UTRC_CACHE or ~/.cache/utrc; the demo data lives in its ``demo/`` folder."""
    return Path(os.environ.get("UTRC_CACHE") or Path.home() / ".cache" / "utrc").expanduser() / "demo"


def _check_split(split: str, n_items: int | None) -> None:
    if split not in SEEDS:
        raise ValueError(
            f"split: expected 'test' (the evaluation items) or 'dev' (the search's items), got {split!r}"
        )
    if n_items is not None and (not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 1):
        raise ValueError(f"n_items: expected None (the default counts) or a positive int, got {n_items!r}")


def item_count(task: str, n_items: int | None = None) -> int:
    """Items of `task`: `n_items` if given, else ITEMS_PER_TASK[task]."""
    return ITEMS_PER_TASK[task] if n_items is None else n_items


def data_key(split: str, n_items: int | None = None) -> str:
    """Hash naming the data of `split`: generator source, version, split, seed and item counts."""
    _check_split(split, n_items)
    counts = ",".join(str(item_count(t, n_items)) for t in TASKS)
    h = hashlib.sha256(f"v{GENERATOR_VERSION}/{split}/{SEEDS[split]}/{counts}".encode())
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def generate_items(task: str, split: str, n_items: int | None = None) -> list[dict]:
    """The items of `task` for `split`, deterministic: item i uses its own string-seeded RNG, so
    the first k items are the same whatever the count."""
    _check_split(split, n_items)
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    rows = []
    for i in range(item_count(task, n_items)):
        rng = random.Random(f"utrc-demo/{split}/{SEEDS[split]}/{task}/{i}")
        rows.append({"id": i, **I.build_item(task, rng, split)})
    return rows


def _lm_eval_row(task: str, item: dict) -> dict:
    if task != "demo_winogrande":
        return item
    # lm-eval's "multiple input" form: one context per option, scored on the shared ending
    row = {k: v for k, v in item.items() if k != "context"}
    row["choices"] = [f"{item['context']} {o}" for o in item["options"]]
    return row


def _yaml(task: str, data_file: Path) -> str:
    common = (
        f"task: {task}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data_file))}\n"
        "test_split: test\n"
    )
    if task == "demo_lambada":
        body = (
            "output_type: loglikelihood\n"
            "doc_to_text: context\n"
            "doc_to_target: \"{{' ' + target}}\"\n"
            "metric_list:\n"
            "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
    else:
        text, target = ("label", "ending") if task == "demo_winogrande" else ("context", "label")
        body = (
            "output_type: multiple_choice\n"
            f"doc_to_text: {text}\n"
            f"doc_to_target: {target}\n"
            "doc_to_choice: choices\n"
            "metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        )
    return common + body + f"metadata:\n  version: {GENERATOR_VERSION}.0\n"


def _write(directory: Path, split: str, n_items: int | None) -> None:
    manifest = {"generator_version": GENERATOR_VERSION, "split": split, "seed": SEEDS[split], "files": {}}
    for task in TASKS:
        data = directory / f"{task}.jsonl"
        lines = [json.dumps(_lm_eval_row(task, it), sort_keys=True) for it in generate_items(task, split, n_items)]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        manifest["files"][data.name] = hashlib.sha256(data.read_bytes()).hexdigest()
    # YAML files point at the final directory, where the data will be after the rename
    final = directory.parent / directory.name.split(".tmp")[0]
    for task in TASKS:
        (directory / f"{task}.yaml").write_text(_yaml(task, final / f"{task}.jsonl"), encoding="utf-8")
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def task_dir(split: str = "test", n_items: int | None = None) -> Path:
    """The directory holding the six tasks' YAML and JSONL for `split`, written if missing.

    Pass it to lm-eval's `--include_path` or `TaskManager(include_path=...)`.
    """
    final = cache_root() / f"{split}-{data_key(split, n_items)}"
    if (final / "manifest.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp", dir=final.parent))
    try:
        _write(tmp, split, n_items)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def task_manager(split: str = "test", n_items: int | None = None, include_defaults: bool = False):
    """An lm-eval `TaskManager` that knows demo_lambada, demo_hellaswag, demo_piqa, demo_arc_easy,
    demo_arc_challenge and demo_winogrande over the items of `split` ("test", or "dev" for the
    search: separate seed, no shared document).

    `include_defaults=True` also indexes lm-eval's built-in tasks (about 4 s more).
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir(split, n_items)), include_defaults=include_defaults)


def load_items(task: str, split: str = "test", n_items: int | None = None) -> list[dict]:
    """The rows of `task` as lm-eval reads them (from the cache directory)."""
    path = task_dir(split, n_items) / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
