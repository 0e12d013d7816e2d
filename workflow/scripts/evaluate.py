"""Rules `evaluate` / `evaluate_dense`: python -m utrc.evaluation of one policy on the configured
tasks, written as one utrc-results/1 file (see workflow/rules/evaluate.smk)."""

from wfutil import module_command, options, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
e = sm.params.settings
tasks = sm.params.tasks if isinstance(sm.params.tasks, str) else ",".join(sm.params.tasks)
command = module_command(
    "utrc.evaluation",
    *options(
        model=sm.params.ref, policy=sm.params.policy, tasks=tasks, out=sm.output[0], batch_size=e["batch_size"],
        device=sm.params.device, dtype=sm.params.dtype, max_length=e["max_length"], limit=e["limit"], threads=sm.threads,
    ),
)
what = "dense" if sm.params.policy == "dense" else f"{sm.wildcards.method} flops{sm.wildcards.budget}"
run(command, sm.log[0], f"evaluate {sm.wildcards.model} {what}", sm.threads)
