# Per-layer calibration statistics of each model (python -m search.calibrate): importance signal,
# match similarities and single-layer sensitivity curves. The search reads the summary; the report
# draws the table as heatmaps. Independent of the budgets.


rule calibrate:
    output:
        table=R + "/{model}/calibration/table.parquet",
        summary=R + "/{model}/calibration/summary.json",
    log:
        R + "/{model}/logs/calibrate.log",
    params:
        ref=lambda wc: MODELS[wc.model]["ref"],
        settings=config["calibration"],
        device=DEVICE,
        dtype=config["dtype"],
    threads: THREADS
    resources:
        gpu=GPU,
    script:
        "../scripts/calibrate.py"
