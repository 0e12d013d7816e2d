# The Optuna search of one (model, budget, seed): `workers` jobs run search.run on one shared study
# storage at once (each until the study holds `n_trials` COMPLETE trials), so on a cluster they are
# parallel GPU jobs. With `search.seeds` > 1 each seed is its own study (sampler seed search.seed +
# seed), searched alike. The storage (a journal file beside the markers, or config search.storage)
# is deliberately not a declared output: Snakemake never deletes it, so an interrupted or extended
# search (a larger n_trials) resumes where it stopped. With several workers a first job creates the
# study and runs its first (the paper's) trial, so the workers never race to create it.


def _search_inputs(wc):
    inputs = {"calibration": calibration_summary(wc.model)}
    if WORKERS > 1:
        inputs["init"] = f"{seed_folder(wc.model, wc.budget, wc.seed)}/init.done"
    return inputs


_SEARCH = dict(
    params=dict(
        ref=model_ref,
        budget=budget_of,
        store=lambda wc: study_storage(wc.model, wc.budget, wc.seed),
        study=lambda wc: study_name(wc.model, wc.budget, wc.seed),
        args=flags("search", "text", "dev_unit", "dev_sequences", "dev_length", "score_last", "batch_size", "layers",
                   "seq_len", "quality") + " " + shlex.join(config["search"]["extra_args"]),
    ),
    shell="{PYTHON} -m search.run --model {params.ref:q} --budget {params.budget} --storage {params.store:q}"
    " --study-name {params.study} --calibration {input.calibration} --n-trials {params.n_trials} --seed {params.seed}"
    " {params.args} {MODEL_ARGS} --threads {threads} > {log} 2>&1 && touch {output}",
)


rule search_init:
    input:
        calibration=calibration_summary("{model}"),
    output:
        seed_folder("{model}", "{budget}", "{seed}") + "/init.done",
    log:
        log_file("{model}", "search-flops{budget}-seed{seed}-init"),
    params:
        n_trials=1,
        seed=lambda wc: config["search"]["seed"] + int(wc.seed),
        **_SEARCH["params"],
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        _SEARCH["shell"]


rule search_worker:
    input:
        unpack(_search_inputs),
    output:
        seed_folder("{model}", "{budget}", "{seed}") + "/worker{worker}.done",
    log:
        log_file("{model}", "search-flops{budget}-seed{seed}-worker{worker}"),
    params:
        n_trials=config["search"]["n_trials"],
        # workers draw from different seeds (TPE seeded alike would propose the same points)
        seed=lambda wc: config["search"]["seed"] + int(wc.seed) + 1000 * int(wc.worker),
        **_SEARCH["params"],
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        _SEARCH["shell"]
