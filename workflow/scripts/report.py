"""Rule `report`: write the page's manifest (the files to read, each budget's Optuna study, the run's settings), then
python -m reports.render page (see workflow/rules/report.smk and reports/render.py)."""

import platform
import sys

import snakemake as snakemake_package
from wfutil import ROOT, module_command, run

sys.path.insert(0, str(ROOT))  # Snakemake runs this file on its own; utrc.io is torch-free and light
from utrc.io import atomic_write_json

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
model = sm.params.model
manifest = {
    "format": "utrc-report-manifest/1",
    "model": {"ref": model["ref"], "name": model["slug"]},
    "budgets": {tag: reduction for tag, reduction in model["budgets"].items()},
    "files": sm.params.files,
    "studies": sm.params.studies,
    "settings": sm.params.config,
    "workflow": {"snakemake": snakemake_package.__version__, "python": platform.python_version()},
}
atomic_write_json(sm.output.manifest, manifest)
command = module_command("reports.render", "page", "--manifest", sm.output.manifest, "--out", sm.output.page)
run(command, sm.log[0], f"report {model['slug']}")
