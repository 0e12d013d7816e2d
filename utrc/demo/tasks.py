"""The six demo tasks as lm-eval tasks, over the items shipped in `utrc/demo/data/` (written by the
repository's generator, `python -m demo.tasks`; docs/demo.md).

    tm = utrc.demo.task_manager()            # test items; split="dev" for the search's items
    lm_eval.simple_evaluate(model=..., tasks=list(utrc.demo.TASKS), task_manager=tm)

lm-eval's task configs name their data by absolute path, so `task_dir` writes the configs and the
items once into a cache directory, never into the installed package: ``$UTRC_CACHE/demo/<split>-<key>/``
(default ``~/.cache/utrc``), where ``<key>`` hashes the shipped items and the item count, so changed
items never read stale files. A directory is written under a temporary name and renamed into place,
so any number of processes (parallel Snakemake jobs) may call `task_manager` at once: the first
rename wins, the others find the finished directory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..names import DEMO_TASKS

TASKS = tuple(DEMO_TASKS)
SPLITS = ("dev", "test")
DATA = Path(__file__).resolve().parent / "data"


def cache_root() -> Path:
    """$UTRC_CACHE or ~/.cache/utrc; the demo task files live in its ``demo/`` folder."""
    return Path(os.environ.get("UTRC_CACHE") or Path.home() / ".cache" / "utrc").expanduser() / "demo"


def _manifest() -> dict:
    return json.loads((DATA / "manifest.json").read_text())


def _check(split: str, n_items: int | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected 'test' (the evaluation items) or 'dev' (the search's items), got {split!r}")
    if n_items is not None and (not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 1):
        raise ValueError(f"n_items: expected None (every shipped item) or a positive int, got {n_items!r}")
    shipped = min(_manifest()["items"].values())
    if n_items is not None and n_items > shipped:
        raise ValueError(f"n_items: {n_items} is more than the {shipped} items shipped per task; generate more "
                         "with the repository's `python -m demo.tasks`")


def _rows(task: str, split: str, n_items: int | None) -> list[str]:
    lines = gzip.decompress((DATA / split / f"{task}.jsonl.gz").read_bytes()).decode().splitlines()
    return lines[:n_items]


def _yaml(task: str, data_file: Path, version: int) -> str:
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
    return common + body + f"metadata:\n  version: {version}.0\n"


def _write(directory: Path, final: Path, split: str, n_items: int | None) -> None:
    manifest = _manifest()
    files = {}
    for task in TASKS:
        data = directory / f"{task}.jsonl"
        data.write_text("".join(line + "\n" for line in _rows(task, split, n_items)), encoding="utf-8")
        files[data.name] = hashlib.sha256(data.read_bytes()).hexdigest()
        # the config names the data where it will be after the rename
        (directory / f"{task}.yaml").write_text(_yaml(task, final / data.name, manifest["generator_version"]))
    record = {"generator_version": manifest["generator_version"], "split": split, "files": files}
    (directory / "manifest.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def task_dir(split: str = "test", n_items: int | None = None) -> Path:
    """The directory holding the six tasks' YAML and JSONL for `split` (the first `n_items` items of
    each task, default all shipped), written if missing. Pass it to lm-eval's `--include_path` or
    `TaskManager(include_path=...)`."""
    _check(split, n_items)
    key = hashlib.sha256(f"{n_items}/".encode() + (DATA / "manifest.json").read_bytes()).hexdigest()[:16]
    final = cache_root() / f"{split}-{key}"
    if (final / "manifest.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp", dir=final.parent))
    try:
        _write(tmp, final, split, n_items)
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
    """The rows of `task` as lm-eval reads them."""
    _check(split, n_items)
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    return [json.loads(line) for line in _rows(task, split, n_items)]
