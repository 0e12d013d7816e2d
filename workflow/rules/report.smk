# One self-contained HTML page per model (reports.render) and an index of them. The page reads only
# the files listed in its manifest (written beside the results), never a glob, so results of budgets
# no longer configured do not leak into it. The manifest also names each budget's Optuna study
# (storage and name; the first search seed's), which the page tells how to open in optuna-dashboard.


def budget_studies(model):
    """tag -> the budget's Optuna study {storage, name} (search seed 0, as its tables in the manifest)."""
    return {tag: {"storage": study_storage(model, tag, 0), "name": study_name(model, tag, 0)}
            for tag in MODELS[model]["budgets"]}


rule report:
    input:
        lambda wc: flat_files(model_outputs(wc.model)),
    output:
        page=REPORTS + "/{model,(?!index\\.html$)[A-Za-z0-9][A-Za-z0-9._-]*}.html",  # index.html is the index's
        manifest=f"{R}/{{model}}/report-manifest.json",
    log:
        log_file("{model}", "report"),
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
        f"{REPORTS}/index.html",
    log:
        f"{R}/logs/report-index.log",
    shell:
        "{PYTHON} -m reports.render index --out {output} {input.manifests} > {log} 2>&1"
