"""Calibration statistics and Optuna search for per-layer UTRC reduction policies (issue 5).

Run from the repository root (this package is not installed):

    python -m search.calibrate --model demo:mamba2 --text demo --out results/demo-mamba2/calibration
    python -m search.run       --model demo:mamba2 --budget 0.3 --storage results/demo-mamba2/study.journal ...
    python -m search.export    --storage results/demo-mamba2/study.journal --budget 0.3 --out results/demo-mamba2

Modules: `data` (calibration text -> token windows), `calibrate` (per-layer statistics),
`space` (search space and the projection of sampled ratios onto a FLOPs budget), `objective`
(cached dense outputs, KL of a policy from dense), `study` (Optuna study, storage, resume),
`export` (policy files, baselines, trial tables). Optuna is imported here only, never in `utrc`.
See docs/search.md.
"""
