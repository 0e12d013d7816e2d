# utrc: calibrate -> search -> export -> evaluate -> compare / profile -> report, for every configured model and budget.
#
#     snakemake --cores 2                                   # config.yaml: the demo model on the CPU
#     snakemake --cores 2 --configfile config/search-demo.yaml   # the demo's longer search, other runs in config/
#     snakemake -n --configfile config/paper.yaml           # plan the paper's run (GPUs)
#     snakemake --profile profiles/slurm --configfile config/paper.yaml
#
# docs/workflow.md describes the rules, the outputs and every configuration key.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/python.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    export,
    compare,
    report,
    report_index,


rule all:
    input:
        f"{REPORTS}/index.html",
        [report_page(m) for m in MODELS],
        [flat_files(model_outputs(m)["policies"]) for m in MODELS],
    default_target: True
