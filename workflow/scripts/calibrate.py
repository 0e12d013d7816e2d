"""Rule `calibrate`: python -m search.calibrate for one model (see workflow/rules/calibrate.smk)."""

from wfutil import module_command, options, run

sm = snakemake  # noqa: F821 (given by Snakemake's `script:` directive)
c = sm.params.settings
command = module_command(
    "search.calibrate",
    *options(
        model=sm.params.ref, text=c["text"], n_sequences=c["n_sequences"], seq_len=c["seq_len"],
        score_last=c["score_last"], keeps=c["keeps"], sensitivity_pairs=c["sensitivity_pairs"],
        batch_size=c["batch_size"], device=sm.params.device, dtype=sm.params.dtype, threads=sm.threads,
        out_table=sm.output.table, out_summary=sm.output.summary,
    ),
)
run(command, sm.log[0], f"calibrate {sm.wildcards.model}", sm.threads)
