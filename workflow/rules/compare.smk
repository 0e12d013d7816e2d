# The searched policy against every other evaluated run of one (model, budget) (utrc.compare): paired
# bootstrap over the items, averaged over the search seeds, at the realized FLOPs each run removed
# from those items. docs/workflow.md describes the utrc-compare/1 file.


rule compare:
    input:
        searched=lambda wc: searched_evals(wc.model, wc.budget),
        against=lambda wc: [eval_file(wc.model, r, wc.budget) for r in COMPARED],
    output:
        compare_file("{model}", "{budget}"),
    log:
        log_file("{model}", "compare-flops{budget}"),
    params:
        budget=budget_of,
        against=lambda wc, input: " ".join(f"--against {r}={f}" for r, f in zip(COMPARED, input.against)),
        args=flags("compare", "resamples", "seed", "cost_tolerance"),
    shell:
        "{PYTHON} -m utrc.compare --budget {params.budget} --searched {input.searched} {params.against} {params.args}"
        " --out {output} > {log} 2>&1"
