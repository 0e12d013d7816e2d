"""The embedded demo's data: two tiny trained Mamba-2 / Mamba models and the items of six
synthetic tasks, as lm-eval tasks. The generator and the trainer that made them live in the
repository's `demo/` package, not in the installed library (docs/demo.md).

    import utrc
    model, tokenizer = utrc.load_model("demo:mamba2")      # or "demo:mamba" (utrc/demo/models/)
    tm = utrc.demo.task_manager()                          # lm-eval TaskManager, split "test"
"""

from __future__ import annotations

from .tasks import TASKS, cache_root, load_items, task_dir, task_manager

__all__ = ["TASKS", "cache_root", "load_items", "task_dir", "task_manager"]
