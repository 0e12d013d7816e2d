# One self-contained HTML page per model (python -m reports.render page) and an index of them.
# The page reads only the files listed in its manifest (written beside the results), never a glob,
# so results of budgets no longer configured do not leak into it. The manifest also names each budget's
# Optuna study (storage and name), which the page tells how to open in optuna-dashboard.

from types import SimpleNamespace


def budget_studies(model):
    """tag -> the budget's Optuna study {storage, name}, as the search rules name them."""
    studies = {}
    for tag in MODELS[model]["budgets"]:
        wc = SimpleNamespace(model=model, budget=tag)  # the wildcards the search rules see
        studies[tag] = {"storage": study_storage(wc), "name": study_name(wc)}
    return studies


rule report:
    input:
        lambda wc: flat_files(model_outputs(wc.model)),
    output:
        page=REPORTS + "/{model,(?!index\\.html$)[A-Za-z0-9][A-Za-z0-9._-]*}.html",  # index.html is the index's
        manifest=R + "/{model}/report-manifest.json",
    log:
        R + "/{model}/logs/report.log",
    params:
        model=lambda wc: MODELS[wc.model],
        files=lambda wc: model_outputs(wc.model),
        studies=lambda wc: budget_studies(wc.model),
        config=config,
    script:
        "../scripts/report.py"


rule report_index:
    input:
        manifests=[f"{R}/{m}/report-manifest.json" for m in MODELS],
        pages=[report_page(m) for m in MODELS],
    output:
        REPORTS + "/index.html",
    log:
        R + "/logs/report-index.log",
    script:
        "../scripts/report_index.py"
