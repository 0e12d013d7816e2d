"""Rule `report_index`: python -m reports.render index over the models' manifests."""

from wfutil import module_command, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
command = module_command("reports.render", "index", "--out", sm.output[0], *sm.input.manifests)
run(command, sm.log[0], "report index")
