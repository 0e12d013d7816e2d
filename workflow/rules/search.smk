# The Optuna search of one (model, budget): `workers` jobs run `python -m search.run` on one shared
# study storage at once (each until the study holds `n_trials` COMPLETE trials), so on a cluster they
# are parallel GPU jobs. The storage (a journal file beside the markers, or config search.storage)
# is deliberately not a declared output: Snakemake never deletes it, so an interrupted or extended
# search (a larger n_trials) resumes where it stopped. With several workers a first job creates the
# study and runs its first (the paper's) trial, so the workers never race to create it.


def _search_inputs(wc):
    inputs = {"calibration": calibration_summary(wc.model)}
    if WORKERS > 1:
        inputs["init"] = f"{R}/{wc.model}/search/flops{wc.budget}/init.json"
    return inputs


_SEARCH_PARAMS = dict(
    ref=lambda wc: MODELS[wc.model]["ref"],
    reduction=budget_of,
    study=study_name,
    store=study_storage,
    settings=job_settings("search", "seed", "text", "dev_unit", "dev_sequences", "dev_length", "score_last", "batch_size",
                      "layers", "seq_len", "quality", "extra_args"),
    device=DEVICE,
    dtype=config["dtype"],
)


rule search_init:
    input:
        calibration=R + "/{model}/calibration/summary.json",
    output:
        R + "/{model}/search/flops{budget}/init.json",
    log:
        R + "/{model}/logs/search-flops{budget}-init.log",
    params:
        n_trials=1,
        seed_offset=0,
        **_SEARCH_PARAMS,
    threads: THREADS
    resources:
        gpu=GPU,
    script:
        "../scripts/search.py"


rule search_worker:
    input:
        unpack(_search_inputs),
    output:
        R + "/{model}/search/flops{budget}/worker{worker}.json",
    log:
        R + "/{model}/logs/search-flops{budget}-worker{worker}.log",
    params:
        n_trials=config["search"]["n_trials"],
        # workers draw from different seeds (TPE seeded alike would propose the same points)
        seed_offset=lambda wc: 1000 * int(wc.worker),
        **_SEARCH_PARAMS,
    threads: THREADS
    resources:
        gpu=GPU,
    script:
        "../scripts/search.py"
