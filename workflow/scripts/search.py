"""Rules `search_init` / `search_worker`: python -m search.run on the (model, budget) study, then a
small marker file saying which worker ran what (see workflow/rules/search.smk)."""

import json
import time
from pathlib import Path

from wfutil import module_command, options, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
s = sm.params.settings
worker = sm.wildcards.get("worker", "init")
command = module_command(
    "search.run",
    *options(
        model=sm.params.ref, budget=sm.params.reduction, storage=sm.params.store, study_name=sm.params.study,
        n_trials=sm.params.n_trials, seed=s["seed"] + sm.params.seed_offset, text=s["text"], dev_unit=s["dev_unit"],
        dev_sequences=s["dev_sequences"], dev_length=s["dev_length"], score_last=s["score_last"],
        batch_size=s["batch_size"], calibration=sm.input.calibration, layers=s["layers"], seq_len=s["seq_len"],
        quality=s["quality"], device=sm.params.device, dtype=sm.params.dtype, threads=sm.threads,
    ),
    *s["extra_args"],
)
start = time.time()
run(command, sm.log[0], f"search {sm.wildcards.model} flops{sm.wildcards.budget} worker {worker}", sm.threads)
marker = {
    "study": sm.params.study,
    "storage": sm.params.store,
    "worker": worker,
    "n_trials": sm.params.n_trials,
    "command": command[1:],
    "seconds": round(time.time() - start, 1),
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}
Path(sm.output[0]).write_text(json.dumps(marker, indent=1) + "\n")
