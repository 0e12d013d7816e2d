"""Calibration statistics and Optuna search for per-layer UTRC reduction policies (issue 5).

Run from the repository root (this package is not installed):

    python -m search.calibrate --model demo:mamba2 --text demo --out-table calib.parquet --out-summary calib.json
    python -m search.run       --model demo:mamba2 --budget 0.3 --storage study-0.3.journal --calibration calib.json
    python -m search.export    --storage study-0.3.journal --model demo:mamba2 --budget 0.3 --out results/demo-mamba2

Modules: `data` (calibration text -> token windows / document rows), `provenance` (hashes,
versions), `calibrate` (per-layer statistics), `space` (search space and the projection of
sampled ratios onto a FLOPs budget), `objective` (cached dense outputs, KL of a policy from
dense), `accuracy` (dev accuracy through lm-eval), `study` (Optuna study, storage, resume),
`run` (the worker's command line), `export` (policy files, baselines, trial tables).
Optuna is imported here only, never in `utrc`. See docs/search.md.
"""
