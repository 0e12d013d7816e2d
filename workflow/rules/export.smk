# The deployable policy files of one (model, budget) (python -m search.export): the best searched
# policy and the paper / EViT / ToMe baselines on the same budget, plus the trial and Pareto tables.


rule export:
    input:
        workers=lambda wc: worker_markers(wc.model, wc.budget),
    output:
        **{m.replace("-", "_"): R + "/{model}/policies/{model}_" + m + "_flops{budget}.json" for m in POLICY_METHODS},
        trials=R + "/{model}/search/flops{budget}/trials.csv",
        pareto=R + "/{model}/search/flops{budget}/pareto.csv",
    log:
        R + "/{model}/logs/export-flops{budget}.log",
    params:
        study=study_name,
        store=study_storage,
        files={m: EXPORT_NAMES[m] for m in POLICY_METHODS},
    script:
        "../scripts/export.py"
