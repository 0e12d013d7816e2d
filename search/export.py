"""Export the studies of one (model, budget): the deployable policy files under their final names
(`utrc.names`), and each search seed's trial tables.

Under `out`, the model's results folder (B = the budget as a fraction, e.g. 0.3; S = the seed,
the position of its study on the command line):

    policies/MODEL_utrc-searched_flopsB.json   the best trial (lowest quality loss; every trial meets the
                                               budget) of the seed whose best is lowest: chosen on the dev set
    policies/MODEL_utrc-paper_flopsB.json      the paper's schedule on the same budget (utrc.budget)
    policies/MODEL_evit_flopsB.json            EViT pruning at the paper's layers, same budget
    policies/MODEL_tome_flopsB.json            ToMe merging at the paper's layers, same budget
    search/flopsB/seedS/trials.csv             every trial: state, origin, objective values, KL, reductions, keeps
    search/flopsB/seedS/pareto.csv             the non-dominated COMPLETE trials (quality loss down, reduction up)
    search/flopsB/seedS/MODEL_utrc-searched_flopsB.json   each seed's best, when there are several seeds

The baselines are fitted with the study's own budget and keep grid (`utrc.budget.schedule_policy`),
so each meets the budget from above exactly as a trial does, and the utrc-paper file equals the
study's enqueued paper trial (whose dev KL it carries). A baseline the paper's layers cannot reach
stops the export naming it. Every file carries `provenance` (study, storage, trial, objective values,
calibration hash, settings hash, versions, date) and `estimates` (nominal FLOPs at the study's
seq_len / protect_last). No model is loaded: the study records the model's shape.

    python -m search.export --name demo-mamba2 --out results/demo-mamba2 \\
        --study results/demo-mamba2/search/flops0.3/seed0/study.journal demo-mamba2-flops0.3-seed0
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from utrc import ModelShape, Policy, estimate_flops
from utrc.budget import Budget, BudgetError, schedule_policy
from utrc.io import atomic_write_text, stamp
from utrc.names import SCHEDULE_RUNS, policy_path, seed_dir, seed_policy_path

from . import provenance
from .study import StudyError, load_study


def export(studies: list[tuple[str, str]], name: str, out: str | Path) -> dict[str, Path]:
    """Write the files above for the (storage, study name) of each seed -> {what: path}. Raises
    StudyError if a study has no complete trial or the studies differ in settings, BudgetError if a
    baseline cannot reach the budget."""
    if not studies:
        raise StudyError("no study to export: give at least one --study STORAGE NAME")
    out = Path(out)
    loaded = [_load(storage, study_name) for storage, study_name in studies]
    first = loaded[0].user_attrs
    for (storage, study_name), study in zip(studies[1:], loaded[1:], strict=True):
        if provenance.json_hash(study.user_attrs["settings"]) != provenance.json_hash(first["settings"]):
            raise StudyError(f"study {study_name!r} in {storage} was run with other settings than {studies[0][1]!r}: "
                             "seeds of one budget must differ in their seed only")
    budget = Budget(**first["settings"]["budget"])
    shape = ModelShape(**first["model"]["shape"])
    paths = {}

    bests = []
    for seed, ((storage, study_name), study) in enumerate(zip(studies, loaded, strict=True)):
        folder = out / seed_dir(budget.reduction, seed)
        table = trials_table(study)
        pareto = {t.number for t in pareto_trials(study)}
        paths[f"trials seed {seed}"] = atomic_write_text(folder / "trials.csv", table.to_csv(index=False))
        front = table[table.number.isin(pareto)].sort_values("nominal_reduction")
        paths[f"pareto seed {seed}"] = atomic_write_text(folder / "pareto.csv", front.to_csv(index=False))
        best = best_trial(study)
        meta = dict(_common(storage, study_name, study), seed=seed, trial=best.number,
                    origin=best.user_attrs.get("origin", "sampled"), objective=_objective(study, best),
                    method="utrc search (Optuna TPE)")
        policy = _with_meta(Policy.from_dict(best.user_attrs["policy"]), shape, budget, meta,
                            _trial_measured(best, study))
        bests.append(policy)
        if len(studies) > 1:
            paths[f"utrc-searched seed {seed}"] = policy.save(out / seed_policy_path(name, budget.reduction, seed))

    chosen = min(range(len(bests)), key=lambda s: (next(iter(bests[s].provenance["objective"].values())), s))
    searched = bests[chosen]
    if len(bests) > 1:
        seeds = [{"seed": s, "study": p.provenance["study"], "objective": p.provenance["objective"]}
                 for s, p in enumerate(bests)]
        searched = replace(searched, provenance={**searched.provenance, "chosen_from": seeds})
    paths["utrc-searched"] = searched.save(out / policy_path(name, "utrc-searched", budget.reduction))

    storage, study_name = studies[0]
    study = loaded[0]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    paper_trial = next((t for t in complete if t.user_attrs.get("origin") == "utrc-paper"), None)
    for run in SCHEDULE_RUNS:
        policy = schedule_policy(run, shape, budget, name=first["model"]["spec"]["name"],
                                 grid=first["settings"]["space"].get("keep_grid"))
        meta, measured = dict(_common(storage, study_name, study), method=f"baseline: {run}"), None
        if run == "utrc-paper" and paper_trial is not None:
            meta.update(trial=paper_trial.number, objective=_objective(study, paper_trial))
            measured = _trial_measured(paper_trial, study)
        policy = _with_meta(policy, shape, budget, meta, measured)
        paths[run] = policy.save(out / policy_path(name, run, budget.reduction))
    return paths


def _load(storage: str, study_name: str) -> optuna.Study:
    study = load_study(storage, study_name)
    if "settings" not in study.user_attrs:
        raise StudyError(f"study {study_name!r} in {storage} was not created by search.run (no settings recorded)")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise StudyError(f"study {study_name!r} in {storage} has no COMPLETE trial yet; run python -m search.run first")
    return study


def _common(storage: str, study_name: str, study: optuna.Study) -> dict:
    attrs = study.user_attrs
    return {
        "study": study_name,
        "storage": str(storage),
        "budget": attrs["settings"]["budget"]["reduction"],
        "feasibility": attrs.get("feasibility"),
        "calibration": attrs.get("calibration"),
        "config_hash": provenance.json_hash(attrs["settings"]),
        **stamp(),
    }


def _objective(study: optuna.Study, trial) -> dict:
    return dict(zip(study.user_attrs.get("objectives", ["quality_loss"]), trial.values, strict=True))


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
        for layer in range(n_layer):
            row[f"keep_{layer}"] = layers.get(str(layer), {}).get("keep", 1.0) if policy else None
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        rows.append(row)
    return pd.DataFrame(rows)


def _trial_measured(trial, study: optuna.Study) -> dict:
    dev = study.user_attrs.get("dev", {})
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
    keys = ("reduction", "token_fraction_proxy", "dense", "reduced", "seq_len", "protect_last")
    estimates = {k: est[k] for k in keys}
    return replace(policy, estimates=estimates, measured=measured, provenance=meta)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", nargs=2, action="append", required=True, metavar=("STORAGE", "NAME"),
                    help="a seed's study: its journal file or RDB URL, and its name (repeat for more seeds)")
    ap.add_argument("--name", required=True, help="the model's name in the file names, e.g. demo-mamba2")
    ap.add_argument("--out", required=True, help="the model's results folder (policies/ and search/ go under it)")
    args = ap.parse_args(argv)
    try:
        paths = export([tuple(s) for s in args.study], args.name, args.out)
    except (StudyError, BudgetError) as err:
        raise SystemExit(f"error: {err}") from None
    for key, path in paths.items():
        print(f"{key:24} {path}")


if __name__ == "__main__":
    main()
