"""Generate the six demo tasks' items and write them into the package (`utrc/demo/data/`), where
`utrc.demo.task_manager` reads them. The generator is part of the repository, not of the installed
library: rerun this after changing it (a test fails until the shipped items match it).

    python -m demo.tasks              # writes utrc/demo/data/{dev,test}/*.jsonl.gz and manifest.json

Item i of a task uses its own string-seeded RNG, so the first k items are the same whatever the
count; rows are in lm-eval's form (`utrc.demo.tasks` writes the task configs that read them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

from utrc.demo.tasks import DATA, SPLITS, TASKS

from . import items as I
from .world import GENERATOR_VERSION

SEEDS = {"dev": 2, "test": 3}
ITEMS_PER_TASK = {
    "demo_lambada": 150,
    "demo_hellaswag": 75,
    "demo_piqa": 100,
    "demo_arc_easy": 75,
    "demo_arc_challenge": 75,
    "demo_winogrande": 100,
}
"""Item counts (dev and test alike): fewer for the 4-way tasks, whose items cost 4 requests each,
so the six tasks evaluate in under a minute on 2 CPU cores."""


def generate_items(task: str, split: str, n_items: int | None = None) -> list[dict]:
    """The items of `task` for `split` ("dev" or "test"), deterministic."""
    if split not in SEEDS:
        raise ValueError(f"split: expected one of {list(SEEDS)}, got {split!r}")
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    count = ITEMS_PER_TASK[task] if n_items is None else n_items
    rngs = (random.Random(f"utrc-demo/{split}/{SEEDS[split]}/{task}/{i}") for i in range(count))
    return [{"id": i, **I.build_item(task, rng, split)} for i, rng in enumerate(rngs)]


def lm_eval_row(task: str, item: dict) -> dict:
    """An item as lm-eval's task config reads it: winogrande in the "multiple input" form (one
    context per option, scored on the shared ending)."""
    if task != "demo_winogrande":
        return item
    row = {k: v for k, v in item.items() if k != "context"}
    row["choices"] = [f"{item['context']} {o}" for o in item["options"]]
    return row


def jsonl(task: str, split: str) -> bytes:
    rows = (json.dumps(lm_eval_row(task, item), sort_keys=True) for item in generate_items(task, split))
    return "".join(row + "\n" for row in rows).encode()


def main() -> None:
    manifest = {"generator_version": GENERATOR_VERSION, "seeds": SEEDS, "items": ITEMS_PER_TASK, "sha256": {}}
    for split in SPLITS:
        (DATA / split).mkdir(parents=True, exist_ok=True)
        for task in TASKS:
            data = jsonl(task, split)
            # mtime 0: the same bytes every run
            (DATA / split / f"{task}.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))
            manifest["sha256"][f"{split}/{task}.jsonl"] = hashlib.sha256(data).hexdigest()
    (DATA / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(SPLITS) * len(TASKS)} task files to {Path(DATA)}")


if __name__ == "__main__":
    main()
