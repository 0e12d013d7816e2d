"""Imported once by faultkit's forkserver (never by the tests): the packages the entry points use,
and one load of each demo model, which pulls in the modules transformers imports lazily. A forked
child then starts in a fraction of a second and still runs its whole entry point itself."""

import lm_eval.evaluator  # noqa: F401
import lm_eval.tasks  # noqa: F401
import optuna  # noqa: F401
import pandas  # noqa: F401
import pyarrow.parquet  # noqa: F401
import torch

import reports.render  # noqa: F401
import search.calibrate  # noqa: F401
import search.export  # noqa: F401
import search.run  # noqa: F401
import utrc.evaluation  # noqa: F401
from utrc import load_model

torch.set_num_threads(1)  # before any operation: forked children must not inherit a started thread pool
for _name in ("demo:mamba2", "demo:mamba"):
    load_model(_name)
