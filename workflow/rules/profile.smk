# Memory and throughput of dense and each policy of one budget, in one process on the same inputs
# (python -m utrc.profile, SPEC §6). On the CPU it measures wall time and resident memory, labelled so.


rule profile:
    input:
        policies=lambda wc: [policy_file(wc.model, m, wc.budget) for m in PROFILE["methods"]],
    output:
        R + "/{model}/profile/flops{budget}.json",
    log:
        R + "/{model}/logs/profile-flops{budget}.log",
    params:
        ref=lambda wc: MODELS[wc.model]["ref"],
        settings=job_settings("profile", "seq_len", "memory_batch", "prefill_batch", "generate_batch", "new_tokens",
                          "repeats", "measure"),
        device=DEVICE,
        dtype=config["dtype"],
    threads: THREADS
    resources:
        gpu=GPU,
    script:
        "../scripts/profile.py"
