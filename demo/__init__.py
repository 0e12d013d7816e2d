"""The demo's generator and trainer, kept in the repository and out of the installed library:
the synthetic world (`vocab`, `world`), the six tasks' items (`items`, `tasks`, which writes the
items shipped in `utrc/demo/data/`), the tokenizer, the trainer and a quick scorer. docs/demo.md
describes them; `utrc.demo` reads what they produced (models, task items).

    texts = demo.calibration_texts(64)     # held-out text of the training distribution
"""

from __future__ import annotations

import random

from .items import training_episode

CALIBRATION_SEED = 1


def calibration_texts(n: int, seed: int = CALIBRATION_SEED) -> list[str]:
    """`n` documents with answered queries, like the training text but from the calibration split
    (no document shared with training, dev or test items); 200..1150 words each. Deterministic."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    return [training_episode(random.Random(f"utrc-demo/calibration/{seed}/{i}"), "calibration") for i in range(n)]
