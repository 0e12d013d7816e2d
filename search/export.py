"""Export one study (one model, one FLOPs budget): policy files, baselines, trial tables.

Layout under `out` (B = the budget as a fraction, e.g. 0.3):

    policies/searched-B.json   the best trial's policy (lowest quality loss; every trial meets the budget)
    policies/paper-B.json      the paper's hand-set schedule, keep solved onto the same budget
    policies/evit-B.json       EViT pruning at the paper's layers, same budget
    policies/tome-B.json       ToMe / PuMer merging at the paper's layers, same budget
    policies/dense-B.json      no reduction (the reference)
    trials-B.csv               every trial: state, origin, objective values, KL, reductions, parameters, keeps
    pareto-B.csv               the non-dominated COMPLETE trials (quality loss down, nominal reduction up)

All baselines go through the same projection as the trials (`search.space.project`, the same
keep grid), so each meets the budget from above exactly as a trial does; the paper file equals
the study's enqueued paper trial. Every file carries `provenance` (study, storage, trial,
objective values, calibration hash, settings hash, versions, date) and `estimates` (nominal FLOPs
at the study's seq_len / protect_last). No model is loaded: the study records the model's shape.

    python -m search.export --storage results/demo-mamba2/study.journal --study-name demo-mamba2-flops30 \\
        --out results/demo-mamba2
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from utrc import ModelShape, ModelSpec, Policy, estimate_flops
from utrc.io import atomic_write_text
from utrc.policy import paper_layers

from . import provenance
from .space import Budget, SpaceError, project
from .study import StudyError, budget_tag, load_study

BASELINES = ("paper", "evit", "tome", "dense")


def export(storage: str, study_name: str, out: str | Path) -> dict[str, Path]:
    """Write the files above -> {name: path}. Raises StudyError if the study has no complete trial."""
    study = load_study(storage, study_name)
    attrs = study.user_attrs
    if "settings" not in attrs:
        raise StudyError(f"study {study_name!r} in {storage} was not created by search.run (no settings recorded)")
    settings = attrs["settings"]
    budget = Budget(**settings["budget"])
    shape = ModelShape(**attrs["model"]["shape"])
    spec = ModelSpec(**attrs["model"]["spec"])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise StudyError(f"study {study_name!r} in {storage} has no COMPLETE trial yet; run python -m search.run first")
    tag = budget_tag(budget.reduction)
    out = Path(out)
    common = {
        "study": study_name,
        "storage": str(storage),
        "budget": budget.reduction,
        "feasibility": attrs.get("feasibility"),
        "calibration": attrs.get("calibration"),
        "config_hash": provenance.json_hash(settings),
        "versions": provenance.versions(),
        "date": provenance.now(),
    }

    best = best_trial(study)
    paths = {}
    meta = dict(common, trial=best.number, origin=best.user_attrs.get("origin", "sampled"),
                objective=dict(zip(attrs.get("objectives", ["quality_loss"]), best.values)),
                method="utrc search (Optuna TPE)")
    searched = _with_meta(Policy.from_dict(best.user_attrs["policy"]), shape, budget, meta, _trial_measured(best, attrs))
    paths["searched"] = searched.save(out / "policies" / f"searched-{tag}.json")

    paper_trial = next((t for t in complete if t.user_attrs.get("origin") == "paper"), None)
    skipped: dict[str, str] = {}
    for method, policy in baselines(shape, spec, budget, settings["space"].get("keep_grid"), skipped).items():
        meta = dict(common, method=f"baseline: {method}")
        measured = None
        if method == "paper" and paper_trial is not None:
            meta.update(trial=paper_trial.number, objective=dict(zip(attrs.get("objectives", ["quality_loss"]), paper_trial.values)))
            measured = _trial_measured(paper_trial, attrs)
        paths[method] = _with_meta(policy, shape, budget, meta, measured).save(out / "policies" / f"{method}-{tag}.json")

    for method, reason in skipped.items():
        print(f"warning: no {method} baseline at budget {budget.reduction}: {reason}", file=sys.stderr)
    table = trials_table(study)
    pareto = set(t.number for t in pareto_trials(study))
    paths["trials"] = atomic_write_text(out / f"trials-{tag}.csv", table.to_csv(index=False))
    paths["pareto"] = atomic_write_text(out / f"pareto-{tag}.csv", table[table.number.isin(pareto)].sort_values(
        "nominal_reduction").to_csv(index=False))
    return paths


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The COMPLETE trial with the lowest quality loss (the first objective); ties: lower number."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: (t.values[0], t.number))


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Non-dominated COMPLETE trials by (quality loss, lower is better; nominal reduction, higher is better)."""
    points = [(t, t.values[0], t.user_attrs.get("nominal_reduction", math.nan))
              for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = []
    for t, q, r in points:
        dominated = any((q2 <= q and r2 >= r) and (q2 < q or r2 > r) for _, q2, r2 in points)
        if not dominated:
            front.append(t)
    return front


def baselines(shape: ModelShape, spec: ModelSpec, budget: Budget, grid: float | None,
              skipped: dict[str, str] | None = None) -> dict[str, Policy]:
    """paper / evit / tome at the paper's layers and dense, each projected onto `budget`. A
    method that cannot reach the budget at the paper's layers is left out (its reason goes into
    `skipped`), never written below the budget."""
    weights = {l: 1.0 for l in paper_layers(shape.n_layer)}
    out = {}
    for method in ("paper", "evit", "tome"):
        base = Policy(method="utrc" if method == "paper" else method, model=spec)
        try:
            out[method] = project(shape, base, weights, budget, grid).policy
        except SpaceError as err:
            if skipped is None:
                raise
            skipped[method] = str(err)
    out["dense"] = Policy.dense(spec)
    return out


def trials_table(study: optuna.Study):
    """One row per trial: number, state, origin, values, the recorded metrics, parameters, keep_<l>."""
    import pandas as pd

    names = study.user_attrs.get("objectives", ["quality_loss"])
    n_layer = study.user_attrs["model"]["spec"]["n_layer"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row = {
            "number": t.number,
            "state": t.state.name,
            "origin": a.get("origin", "sampled"),
            "retry_of": a.get("retry_of"),
            "duplicate_of": a.get("duplicate_of"),  # pruned: that trial evaluates the same parameters
        }
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values else None
        for key in ("kl", "top1_agreement", "dev_accuracy", "nominal_reduction", "token_fraction_proxy", "overshoot",
                    "seconds"):
            row[key] = a.get(key)
        policy = a.get("policy") or {}
        for key in ("importance", "importance_source", "prune_share", "hidden_strategy", "residual_strategy"):
            row[key] = policy.get(key)
        layers = policy.get("layers", {})
        for l in range(n_layer):
            row[f"keep_{l}"] = layers.get(str(l), {}).get("keep", 1.0) if policy else None
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        rows.append(row)
    return pd.DataFrame(rows)


def _trial_measured(trial, attrs) -> dict:
    dev = attrs.get("dev", {})
    measured = {
        "dev_kl": trial.user_attrs.get("kl"),
        "dev_top1_agreement": trial.user_attrs.get("top1_agreement"),
        "protocol": (
            f"mean KL(dense || policy) of the next-token distribution at the last {dev.get('score_last')} (protected) "
            f"positions of {dev.get('n_sequences')} x {dev.get('seq_len')}-token dev windows "
            f"(text {dev.get('text')!r}, hash {str(dev.get('hash'))[:12]})"
        ),
    }
    if "dev_accuracy" in trial.user_attrs:
        measured["dev_accuracy"] = trial.user_attrs["dev_accuracy"]
    return measured


def _with_meta(policy: Policy, shape: ModelShape, budget: Budget, meta: dict, measured: dict | None) -> Policy:
    est = estimate_flops(shape, policy, budget.seq_len, budget.protect_last)
    estimates = {k: est[k] for k in ("reduction", "token_fraction_proxy", "dense", "reduced", "seq_len", "protect_last")}
    return replace(policy, estimates=estimates, measured=measured, provenance=meta)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, help="the study's journal file or RDB URL")
    ap.add_argument("--study-name", default=None, help="default: derived from --model and --budget as search.run does")
    ap.add_argument("--model", default=None)
    ap.add_argument("--budget", default=None)
    ap.add_argument("--out", required=True, help="output directory (policies/, trials-B.csv, pareto-B.csv)")
    args = ap.parse_args(argv)
    name = args.study_name
    if name is None:
        if not (args.model and args.budget):
            ap.error("give --study-name, or --model and --budget")
        from .run import parse_budget
        from .study import default_study_name

        name = default_study_name(args.model, Budget(parse_budget(args.budget)))
    try:
        paths = export(args.storage, name, args.out)
    except (StudyError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    for key, path in paths.items():
        print(f"{key:9} {path}")


if __name__ == "__main__":
    main()
