# utrc: calibrate -> search -> export -> evaluate -> compare / profile -> report, for every configured model and budget.
#
#     snakemake --cores 2                                   # config.yaml: the demo model on the CPU
#     snakemake --cores 2 --configfile config/search-demo.yaml   # the demo's longer search, other runs in config/
#     snakemake -n --configfile config/paper.yaml           # plan the paper's run (GPUs)
#     snakemake --profile profiles/slurm --configfile config/paper.yaml   # on a SLURM cluster (docs/workflow.md)
#
# docs/workflow.md describes the rules, the outputs and every configuration key.

import sys
from pathlib import Path

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


onstart:
    if config["device"] == "cpu":  # jobs' logs have it too (utrc.loading.CPU_KERNEL_NOTE); the terminal gets it once
        print("utrc note: jobs run on the CPU, where transformers runs its PyTorch implementation of the Mamba scan "
              "and convolution (the fused kernels need a CUDA GPU): same results, slower.")


def run_summary():
    """What to open and what to deploy, at the end of a successful run: the report, and per model and budget
    the policy file its "Recommended" box names (reports.page.recommendations, the rule stated on the page).
    Reads the manifests the report rule wrote; a model without one (a partial run) is left out."""
    if str(workflow.basedir) not in sys.path:  # the repository's `reports` package, as the jobs import it
        sys.path.insert(0, str(workflow.basedir))
    from reports.data import load_run, read_manifest
    from reports.page import index_entry

    index = Path(REPORTS) / "index.html"
    lines = [f"Open the report: {index} (one page per model: {', '.join(report_page(m) for m in MODELS)})"]
    lines.append("Policy files to deploy, the report's recommendation per budget (its rule is stated on the page):")
    for model in MODELS:
        manifest = Path(R) / model / "report-manifest.json"
        if not manifest.is_file():
            continue
        for budget in index_entry(load_run(read_manifest(manifest), Path.cwd()), "")["budgets"]:
            row = budget["recommended"]
            choice = f"{row['policy_path']}  ({row['label']})" if row else "nothing evaluated yet"
            lines.append(f"  {model}  budget {budget['tag']}:  {choice}")
    lines.append("Check one with `utrc inspect FILE --model REF`; apply it with "
                 "`utrc.apply(model, utrc.Policy.load(FILE))` (README.md, \"Apply a policy\").")
    return "\n".join(lines)


onsuccess:
    if (Path(REPORTS) / "index.html").is_file():
        print(run_summary())
