# lm-eval on the configured tasks (python -m utrc.evaluation): one utrc-results/1 file per policy;
# the dense model once per model.


_EVAL_PARAMS = dict(
    ref=lambda wc: MODELS[wc.model]["ref"],
    tasks=config["tasks"],
    settings=job_settings("evaluation", "batch_size", "limit", "max_length"),
    device=DEVICE,
    dtype=config["dtype"],
)


rule evaluate_dense:
    output:
        R + "/{model}/eval/dense.json",
    log:
        R + "/{model}/logs/eval-dense.log",
    params:
        policy="dense",
        **_EVAL_PARAMS,
    threads: THREADS
    resources:
        gpu=GPU,
    script:
        "../scripts/evaluate.py"


rule evaluate:
    input:
        policy=R + "/{model}/policies/{model}_{method}_flops{budget}.json",
    output:
        R + "/{model}/eval/{method}_flops{budget}.json",
    log:
        R + "/{model}/logs/eval-{method}-flops{budget}.log",
    params:
        policy=lambda wc, input: input.policy,
        **_EVAL_PARAMS,
    threads: THREADS
    resources:
        gpu=GPU,
    script:
        "../scripts/evaluate.py"
