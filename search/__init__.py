"""Calibration statistics and Optuna search for per-layer UTRC reduction policies.

Run from the repository root (this package is not installed):

    python -m search.calibrate --model demo:mamba2 --text demo --out-table calib.parquet --out-summary calib.json
    python -m search.run       --model demo:mamba2 --budget 0.3 --storage study-0.3.journal --calibration calib.json
    python -m search.export --study study-0.3.journal demo-mamba2-flops0.3 --name demo-mamba2 --out results/demo-mamba2

Modules: `data` (calibration text -> token windows / document rows), `provenance` (hashes;
versions and dates: `utrc.io`), `calibrate` (per-layer statistics), `space` (the search space and the budgets it
reaches; `utrc.budget` fits sampled ratios onto a budget), `objective` (cached dense outputs, KL of a policy from
dense), `accuracy` (dev accuracy through lm-eval), `study` (Optuna study, storage, resume),
`run` (the worker's command line), `export` (the policy files under their final names, trial tables).
Optuna is imported here only, never in `utrc`. See docs/search.md.
"""
