"""Rule `export`: python -m search.export into a scratch folder, then the files moved to their
deployable names (results/{model}/policies/{model}_{method}_flops{budget}.json) and the trial
tables beside the study (see workflow/rules/export.smk)."""

import shutil
from pathlib import Path

from wfutil import module_command, options, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
scratch = Path(sm.output.trials).parent / ".export"
shutil.rmtree(scratch, ignore_errors=True)
command = module_command("search.export", *options(storage=sm.params.store, study_name=sm.params.study, out=scratch))
run(command, sm.log[0], f"export {sm.wildcards.model} flops{sm.wildcards.budget}")


def exported(pattern):
    """The one file search.export wrote matching `pattern` (its names carry the budget in its own form)."""
    found = sorted(scratch.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"search.export wrote {len(found)} files matching {pattern} in {scratch}, expected 1; "
                         f"its output is in {sm.log[0]}")
    return found[0]


moves = {exported("trials-*.csv"): sm.output.trials, exported("pareto-*.csv"): sm.output.pareto}
for method, name in sm.params.files.items():
    moves[exported(f"policies/{name}-*.json")] = sm.output[method.replace("-", "_")]
with open(sm.log[0], "a") as log:
    for src, dst in moves.items():
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)
        log.write(f"{src} -> {dst}\n")
shutil.rmtree(scratch, ignore_errors=True)
