"""Imported once by faultkit's forkserver (never by the tests): the packages the entry points use,
and one load of each demo model, which pulls in the modules transformers imports lazily. A forked
child then starts in a fraction of a second and still runs its whole entry point itself."""

import threading

import lm_eval.evaluator  # noqa: F401
import lm_eval.tasks  # noqa: F401
import optuna  # noqa: F401
import pandas  # noqa: F401
import pyarrow.parquet  # noqa: F401
import torch
import transformers.utils.logging

import reports.render  # noqa: F401
import search.calibrate  # noqa: F401
import search.export  # noqa: F401
import search.run  # noqa: F401
import utrc.evaluation  # noqa: F401
from utrc import load_model

torch.set_num_threads(1)  # before any operation: forked children must not inherit a started thread pool
# No progress bar here: tqdm's first bar creates a lock shared by every process forked afterwards,
# and a child killed while drawing a bar would leave it held for all the others (a real `python -m`
# run has its own). The bar's monitor thread would be forked half-alive, too.
transformers.utils.logging.disable_progress_bar()
for _name in ("demo:mamba2", "demo:mamba"):
    load_model(_name)
transformers.utils.logging.enable_progress_bar()
assert threading.active_count() == 1, [t.name for t in threading.enumerate()]  # fork copies only one thread
