# Per-layer calibration statistics of each model (search.calibrate): importance signal, match
# similarities and single-layer sensitivity curves. The search reads the summary; the report draws
# the table as heatmaps. Independent of the budgets.


rule calibrate:
    output:
        table=calibration_table("{model}"),
        summary=calibration_summary("{model}"),
    log:
        log_file("{model}", "calibrate"),
    params:
        ref=model_ref,
        args=flags("calibration", "text", "n_sequences", "seq_len", "score_last", "keeps", "sensitivity_pairs",
                   "batch_size"),
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "{PYTHON} -m search.calibrate --model {params.ref:q} {params.args} {MODEL_ARGS} --threads {threads}"
        " --out-table {output.table} --out-summary {output.summary} > {log} 2>&1"
