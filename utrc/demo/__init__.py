"""The embedded demo: a synthetic six-task benchmark suite and tiny trained Mamba-2 / Mamba models.

    import utrc
    model, tokenizer = utrc.load_model("demo:mamba2")      # or "demo:mamba"
    tm = utrc.demo.task_manager()                          # lm-eval TaskManager, split "test"
    texts = utrc.demo.calibration_texts(64)                # held-out training-distribution text

See docs/demo.md for the world, the tasks, how the models were trained and their accuracies.
"""

from __future__ import annotations

import random

from .items import training_episode
from .tasks import BENCHMARK, REPORTED_METRIC, TASKS, cache_root, load_items, task_dir, task_manager

__all__ = [
    "BENCHMARK",
    "REPORTED_METRIC",
    "TASKS",
    "cache_root",
    "calibration_texts",
    "load_items",
    "task_dir",
    "task_manager",
]

CALIBRATION_SEED = 1


def calibration_texts(n: int, seed: int = CALIBRATION_SEED) -> list[str]:
    """`n` documents with answered queries, like the training text but from the calibration split
    (no document shared with training, dev or test items); 200..1150 words each. Deterministic."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    return [training_episode(random.Random(f"utrc-demo/calibration/{seed}/{i}"), "calibration") for i in range(n)]
