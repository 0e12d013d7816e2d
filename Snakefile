# utrc: calibrate -> search -> export -> evaluate -> compare / profile -> report, for every configured model and budget.
#
#     snakemake --cores 2                                   # config.yaml: the demo model on the CPU
#     snakemake --cores 2 --configfile config/search-demo.yaml   # the demo's longer search, other runs in config/
#     snakemake -n --configfile config/paper.yaml           # plan the paper's run (GPUs)
#     snakemake --profile profiles/slurm --configfile config/paper.yaml   # on a SLURM cluster (docs/workflow.md)
#
# docs/workflow.md describes the rules, the outputs and every configuration key.

import json
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


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
    if DEVICE == "cpu":  # each job's log keeps the note; the terminal gets it once, here (workflow/scripts/wfutil.py)
        print("utrc note: jobs run on the CPU, where transformers runs its PyTorch implementation of the Mamba scan "
              "and convolution (the fused kernels need a CUDA GPU): same results, slower.")


def run_summary():
    """What to open and what to deploy, for the end of a successful run: the report pages and, per model
    and budget, the searched policy file (docs/workflow.md, "Outputs"). Only files that exist are named."""
    lines = []
    index = Path(REPORTS) / "index.html"
    if index.is_file():
        lines.append(f"Open the report: {index} (one page per model: " + ", ".join(report_page(m) for m in MODELS) + ")")
    deploy = []
    for model, entry in MODELS.items():
        for tag in entry["budgets"]:
            path = Path(policy_file(model, "utrc-searched", tag))
            if path.is_file():
                est = json.loads(path.read_text()).get("estimates") or {}
                note = f"  ({est['reduction']:.1%} fewer prefill FLOPs at {est['seq_len']} tokens)" if est else ""
                deploy.append(f"  {model}  budget {tag}:  {path}{note}")
    if deploy:
        lines += ["Policy files to deploy (the searched policy of each budget; the report compares it with the "
                  "baselines and recommends one):", *deploy]
        lines.append("Check one with `utrc inspect FILE --model REF`; apply it with "
                     "`utrc.apply(model, utrc.Policy.load(FILE))` (README.md, \"Apply a policy\")")
    return "\n".join(lines)


onsuccess:
    summary = run_summary()
    if summary:
        print(summary)
