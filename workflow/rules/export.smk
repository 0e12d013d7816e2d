# The deployable policy files of one (model, budget) (search.export writes them under their final
# names): the searched policy (the best of the budget's search seeds on the dev set) and the
# utrc-paper / evit / tome schedules on the same budget; each seed's trial and Pareto tables, and
# with several seeds each seed's best policy.


def _export_outputs(wc=None):
    model, tag = ("{model}", "{budget}")
    out = {r.replace("-", "_"): policy_file(model, r, tag) for r in POLICY_RUNS}
    for seed in SEEDS:
        out.update({f"{name}{seed}": path for name, path in search_tables(model, tag, seed).items()})
        if len(SEEDS) > 1:
            out[f"seed{seed}"] = seed_policy_file(model, tag, seed)
    return out


rule export:
    input:
        lambda wc: [m for seed in SEEDS for m in worker_markers(wc.model, wc.budget, seed)],
    output:
        **_export_outputs(),
    log:
        log_file("{model}", "export-flops{budget}"),
    params:
        studies=lambda wc: " ".join(
            f"--study {shlex.quote(study_storage(wc.model, wc.budget, s))} {study_name(wc.model, wc.budget, s)}"
            for s in SEEDS
        ),
        out=lambda wc: f"{R}/{wc.model}",
    shell:
        "{PYTHON} -m search.export --name {wildcards.model} --out {params.out:q} {params.studies} > {log} 2>&1"
