# lm-eval on the configured tasks (utrc.evaluation): one utrc-results/1 file per policy, with per-item
# scores for the paired comparison; the dense model once per model, and each search seed's policy
# when there are several.


_EVAL = dict(
    params=dict(
        ref=model_ref,
        tasks=config["tasks"] if isinstance(config["tasks"], str) else ",".join(config["tasks"]),
        args=flags("evaluation", "batch_size", "limit", "max_length"),
    ),
    shell="{PYTHON} -m utrc.evaluation --model {params.ref:q} --policy {params.policy} --tasks {params.tasks:q}"
    " {params.args} {MODEL_ARGS} --threads {threads} --item-scores --out {output} > {log} 2>&1",
)


rule evaluate_dense:
    output:
        eval_file("{model}", "dense"),
    log:
        log_file("{model}", "eval-dense"),
    params:
        policy="dense",
        **_EVAL["params"],
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        _EVAL["shell"]


rule evaluate:
    input:
        policy=policy_file("{model}", "{run}", "{budget}"),
    output:
        eval_file("{model}", "{run}", "{budget}"),
    log:
        log_file("{model}", "eval-{run}-flops{budget}"),
    params:
        policy=lambda wc, input: input.policy,
        **_EVAL["params"],
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        _EVAL["shell"]


rule evaluate_seed:
    input:
        policy=seed_policy_file("{model}", "{budget}", "{seed}"),
    output:
        eval_file("{model}", "utrc-searched", "{budget}", "{seed}"),
    log:
        log_file("{model}", "eval-utrc-searched-flops{budget}-seed{seed}"),
    params:
        policy=lambda wc, input: input.policy,
        **_EVAL["params"],
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        _EVAL["shell"]
