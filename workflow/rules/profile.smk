# Memory and throughput of dense and each policy of one budget, in one process on the same inputs
# (utrc.profile, docs/method.md §6). On the CPU it measures wall time and resident memory, labelled so.


rule profile:
    input:
        policies=lambda wc: [policy_file(wc.model, r, wc.budget) for r in PROFILE["methods"]],
    output:
        profile_file("{model}", "{budget}"),
    log:
        log_file("{model}", "profile-flops{budget}"),
    params:
        ref=model_ref,
        policies=lambda wc, input: shlex.join(f"--policy={p}" for p in input.policies),
        args=flags("profile", "seq_len", "memory_batch", "prefill_batch", "generate_batch", "new_tokens", "repeats",
                   "measure"),
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "{PYTHON} -m utrc.profile --model {params.ref:q} {params.policies} {params.args} {MODEL_ARGS}"
        " --out {output} > {log} 2>&1"
