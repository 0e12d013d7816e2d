"""Rule `profile`: python -m utrc.profile, dense and the budget's policies in one process
(see workflow/rules/profile.smk)."""

from wfutil import module_command, options, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
p = sm.params.settings
command = module_command(
    "utrc.profile",
    *options(
        model=sm.params.ref, device=sm.params.device, dtype=sm.params.dtype, seq_len=p["seq_len"],
        memory_batch=p["memory_batch"], prefill_batch=p["prefill_batch"], generate_batch=p["generate_batch"],
        new_tokens=p["new_tokens"], repeats=p["repeats"], measure=p["measure"], out=sm.output[0],
    ),
)
for policy in sm.input.policies:
    command += ["--policy", policy]
run(command, sm.log[0], f"profile {sm.wildcards.model} flops{sm.wildcards.budget}", sm.threads)
