"""Rule `report`: write the page's manifest (the files to read, each budget's Optuna study, the run's
settings), then render the page from it (reports.render, see workflow/rules/report.smk)."""

import platform

import snakemake as snakemake_package

from reports.render import render_page
from utrc.io import atomic_write_json

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
model = sm.params.model
manifest = {
    "format": "utrc-report-manifest/1",
    "model": {"ref": model["ref"], "name": model["slug"]},
    "budgets": model["budgets"],
    "files": sm.params.files,
    "studies": sm.params.studies,
    "settings": sm.params.config,
    "workflow": {"snakemake": snakemake_package.__version__, "python": platform.python_version()},
}
atomic_write_json(sm.output.manifest, manifest)
with open(sm.log[0], "w") as log:
    log.write(f"wrote {sm.output.manifest}, {render_page(sm.output.manifest, sm.output.page)}\n")
