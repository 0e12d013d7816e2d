"""Rule `report`: write the page's manifest (the files to read, the run's settings), then
python -m reports.render page (see workflow/rules/report.smk and reports/render.py)."""

import json
import platform
from pathlib import Path

import snakemake as snakemake_package
from wfutil import module_command, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
model = sm.params.model
manifest = {
    "format": "utrc-report-manifest/1",
    "model": {"ref": model["ref"], "name": model["slug"]},
    "budgets": {tag: reduction for tag, reduction in model["budgets"].items()},
    "files": sm.params.files,
    "settings": sm.params.config,
    "workflow": {"snakemake": snakemake_package.__version__, "python": platform.python_version()},
}
Path(sm.output.manifest).write_text(json.dumps(manifest, indent=1) + "\n")
command = module_command("reports.render", "page", "--manifest", sm.output.manifest, "--out", sm.output.page)
run(command, sm.log[0], f"report {model['slug']}")
