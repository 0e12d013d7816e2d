"""One Optuna study per (model, FLOPs budget): creation, resume, the trial objective, seeding.

Storage (`search.storage`): a path is an Optuna journal file, a URL an RDB; both with a heartbeat,
so a RUNNING trial is failed as stale (and its parameters enqueued again) only when its owner is
really gone, and a worker killed at any moment loses nothing but the trial it was running.
Completed trials are never touched; the study runs until it holds `n_trials` COMPLETE trials,
however many workers, interruptions and restarts that takes.

The first trials enqueued in a new study ("seeded", `SEEDED`): the paper's hand-set schedule at the
same budget (so the best trial can only be at least as good), then the calibration prior (removal
weights inversely proportional to each block's measured sensitivity) and uniform removal over all
searchable blocks. Each is evaluated exactly once per study, whatever interrupts it:

* a seeded trial that no longer has a COMPLETE, WAITING or RUNNING copy (Ctrl-C failed it) is
  enqueued again when a worker starts (`requeue_seeded`), and a worker does not stop while one
  waits;
* a trial whose parameters another trial already evaluates (its lineage, `search.storage.lineage`,
  is COMPLETE, or RUNNING under a lower number) is pruned at its start (user attr
  ``duplicate_of``), so copies enqueued by workers racing each other are run once;
* a worker whose running trial was failed as stale elsewhere (its heartbeat stalled) keeps its
  result (`keep_late_result`) instead of crashing.

Then the TPE sampler, reseeded before each trial from (seed, trial number): workers sharing a
seed never propose alike, and a single worker's run is reproducible.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from utrc import ModelShape, ModelSpec, Policy
from utrc.budget import fit
from utrc.io import now, versions
from utrc.names import budget_tag
from utrc.policy import paper_layers

from .objective import DenseReference
from .space import FEASIBILITY, Budget, SearchSpace, SpaceError, check_reachable, paper_weights
from .storage import SEEDED, StorageError, fail_stale_trials, lineage, open_storage, worker_id

PAPER_PARAMS = {"importance": "clip/ssm_output", "prune_share": 0.5, "residual_strategy": "merge",
                "hidden_strategy": "hybrid"}
QUALITIES = ("kl", "dev_error", "kl+dev_error")


class StudyError(ValueError):
    """A study cannot be created or resumed with these settings."""


@dataclass(frozen=True)
class StudyConfig:
    budget: Budget
    space: SearchSpace
    n_trials: int = 100  # COMPLETE trials the study should hold
    seed: int = 0
    multi_objective: bool = False  # minimise quality loss and maximise FLOPs reduction (>= budget)
    quality: str = "kl"  # "kl" | "dev_error" (1 - dev accuracy) | "kl+dev_error"
    dev_error_weight: float = 1.0  # weight of dev_error in "kl+dev_error"
    n_startup_trials: int = 10  # random trials before TPE models the history
    stale_after: float = 900.0  # seconds without heartbeat after which a trial of another host's worker is stale

    def metric_names(self) -> list[str]:
        """The objectives' names: what `set_metric_names` stores (optuna-dashboard shows them instead of
        "Objective 0") and what the progress lines say."""
        quality = {"kl": "dev KL", "dev_error": "dev error",
                   "kl+dev_error": f"dev KL + {self.dev_error_weight:g} x dev error"}[self.quality]
        return [quality, "nominal FLOPs reduction"] if self.multi_objective else [quality]

    def settings(self) -> dict:
        """What must not change when a study is resumed."""
        return {
            "budget": {"reduction": self.budget.reduction, "seq_len": self.budget.seq_len,
                       "protect_last": self.budget.protect_last},
            "space": {k: v for k, v in self.space.to_dict().items() if k != "notes"},
            "multi_objective": self.multi_objective,
            "quality": self.quality,
            "dev_error_weight": self.dev_error_weight,
        }


def default_study_name(model_name: str, budget: Budget) -> str:
    tag = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_name).strip("-")
    return f"{tag}-flops{budget_tag(budget.reduction)}"


# --- storage and workers -----------------------------------------------------------------------


def load_study(storage: str, study_name: str) -> optuna.Study:
    """An existing study, or StudyError listing the studies the storage holds."""
    store = _open(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if study_name not in names:
        raise StudyError(f"study {study_name!r} not found in {storage}; it holds {names or 'no study'}")
    return optuna.load_study(study_name=study_name, storage=store)


def register_worker(study: optuna.Study) -> dict:
    """Record this process in the study's user attrs (a trial killed before its first heartbeat is
    stale once every registered worker is gone, see `search.storage`) -> its id."""
    me = worker_id()
    study.set_user_attr(f"worker {me['host']} {me['pid']} {me['start']}", dict(me, since=now()))
    return me


def requeue_seeded(study: optuna.Study) -> list[str]:
    """Enqueue again every seeded trial of which no copy is COMPLETE, WAITING or RUNNING (a Ctrl-C
    failed it; or it was pruned as a copy of one that then failed) -> the origins enqueued."""
    trials = study.get_trials(deepcopy=False)
    out = []
    for origin in SEEDED:
        copies = [t for t in trials if lineage(t) == origin and "fixed_params" in t.system_attrs]
        if copies and not any(t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) for t in copies):
            last = copies[-1]
            study.enqueue_trial(last.system_attrs["fixed_params"],
                                user_attrs={"origin": origin, "retry_of": last.number})
            out.append(origin)
    return out


def _open(storage: str, stale_after: float = 900.0):
    try:
        return open_storage(storage, stale_after)
    except StorageError as e:
        raise StudyError(str(e)) from None


# --- creating / resuming ----------------------------------------------------------------------


def create_or_resume(storage: str, study_name: str, config: StudyConfig, shape: ModelShape, spec: ModelSpec,
                     calibration: dict | None = None, dev: dict | None = None) -> optuna.Study:
    """Open the study (creating it and its first enqueued trials if new), check that a resumed
    study was created with the same settings, and fail stale trials. Raises StudyError /
    SpaceError before any trial runs."""
    validate(config, shape)
    reach = check_reachable(shape, spec, config.space, config.budget)
    store = _open(storage, config.stale_after)
    directions = ["minimize", "maximize"] if config.multi_objective else ["minimize"]
    study = optuna.create_study(storage=store, study_name=study_name, sampler=_sampler(config), directions=directions,
                                load_if_exists=True)
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable API since Optuna 3.2
            study.set_metric_names(config.metric_names())
    settings = config.settings()
    stored = study.user_attrs.get("settings")
    if stored is None:  # new, or its creation was interrupted: "settings", written last, marks it done
        for params, origin in first_trials(config, shape, calibration):
            study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)
        attrs = {
            "feasibility": FEASIBILITY,
            "model": {"spec": {"name": spec.name, "architecture": spec.architecture, "n_layer": spec.n_layer,
                               "d_model": spec.d_model}, "shape": _shape_dict(shape)},
            "reachable": reach,
            "calibration": _calibration_ref(calibration),
            "dev": dev or {},
            "space_notes": list(config.space.notes),
            "sampler": {"name": "TPESampler", "seed": config.seed, "multivariate": True,
                        "n_startup_trials": config.n_startup_trials,
                        "reseeded": "before each trial, from (seed, trial number)"},
            "objectives": ["quality_loss", "nominal_reduction"] if config.multi_objective else ["quality_loss"],
            "versions": versions(),
            "created": now(),
            "settings": settings,
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    else:
        _check_same(study_name, storage, stored, settings)
        stored_dev = study.user_attrs.get("dev", {}).get("hash")
        if dev and stored_dev and dev.get("hash") != stored_dev:
            raise StudyError(
                f"study {study_name!r} in {storage} was scored on another dev set (hash {stored_dev[:12]}…, now "
                f"{dev.get('hash', '')[:12]}…); use the same --text/--dev-* settings or another --study-name"
            )
    register_worker(study)
    fail_stale_trials(study)
    requeue_seeded(study)
    return study


def validate(config: StudyConfig, shape: ModelShape) -> None:
    """Raise SpaceError / StudyError for settings no trial could run with (cheap; no model run)."""
    config.space.validate(shape)
    if config.n_trials < 1:
        raise StudyError(f"n_trials: expected a positive number of trials, got {config.n_trials}")
    if config.quality not in QUALITIES:
        raise StudyError(f"quality: expected one of {list(QUALITIES)}, got {config.quality!r}")
    if config.multi_objective and not (config.space.max_target and config.space.max_target > config.budget.reduction):
        raise StudyError(
            f"multi-objective mode samples the FLOPs target in [budget, max_target]: give a max_target above the "
            f"budget {config.budget.reduction} (got {config.space.max_target})"
        )


def first_trials(config: StudyConfig, shape: ModelShape, calibration: dict | None) -> list[tuple[dict, str]]:
    """(params, origin) of the trials enqueued at creation: paper, calibration prior, uniform."""
    space, out = config.space, []
    common, paper_ok = {}, True
    for key, value in PAPER_PARAMS.items():
        if not _param_in_space(space, key, value):
            warnings.warn(f"the paper's {key}={value!r} is outside the search space: the paper trial is not enqueued",
                          stacklevel=2)
            paper_ok = False
        elif _is_searched(space, key):
            common[key] = value
    if space.per_layer_prune_share and paper_ok:
        common.update({f"q_{layer}": PAPER_PARAMS["prune_share"] for layer in space.layers})
    if config.multi_objective:
        common["target"] = config.budget.reduction
    paper = paper_weights(space, shape.n_layer)
    if paper is None:
        warnings.warn(f"paper layers {list(paper_layers(shape.n_layer))} are not all searchable: "
                      "paper trial not enqueued", stacklevel=2)
    elif paper_ok:
        out.append(({**{f"w_{layer}": w for layer, w in paper.items()}, **common}, "utrc-paper"))
    prior = prior_weights(calibration, space.layers)
    if prior is not None and space.weight_step:
        prior = {layer: round(round(w / space.weight_step) * space.weight_step, 6) for layer, w in prior.items()}
    if prior is not None:
        out.append(({**{f"w_{layer}": w for layer, w in prior.items()}, **common}, "calibration"))
    out.append(({**{f"w_{layer}": 1.0 for layer in space.layers}, **common}, "uniform"))
    return out


def prior_weights(calibration: dict | None, layers) -> dict[int, float] | None:
    """Removal weights from the calibration's sensitivity curves: w_l = min sensitivity / sensitivity_l
    (mean KL over the calibrated keeps, of the paper's pair if calibrated, else the first pair)."""
    if not calibration:
        return None
    curves = calibration["sensitivity"]["kl"]
    pair = PAPER_PARAMS["importance"] if PAPER_PARAMS["importance"] in curves else next(iter(curves), None)
    if pair is None or not all(str(layer) in curves[pair] for layer in layers):
        return None
    sens = {layer: sum(curves[pair][str(layer)]) / len(curves[pair][str(layer)]) + 1e-6 for layer in layers}
    low = min(sens.values())
    return {layer: round(low / s, 6) for layer, s in sens.items()}


def space_from_calibration(space: SearchSpace, calibration: dict | None) -> SearchSpace:
    """Drop importance pairs the calibration found uninformative (every token scored alike)."""
    if not calibration:
        return space
    signal = calibration.get("importance_signal", {})
    dropped = [p for p in space.importance if p in signal and not signal[p]["informative"]]
    if not dropped:
        return space
    kept = tuple(p for p in space.importance if p not in dropped)
    note = f"calibration {calibration['hash'][:12]}: dropped uninformative importance pairs {dropped}"
    return replace(space, importance=kept, notes=space.notes + (note,))


# --- the objective ----------------------------------------------------------------------------


class Objective:
    """`objective(trial)`: sample a policy, project it onto the budget, score it on the dev set.

    reference   DenseReference of the dev set (cached dense outputs; start_layer <= first searchable block)
    accuracy    optional `policy -> mean accuracy` on dev items (for the dev_error qualities)
    Trial user attrs: policy (the full utrc-policy/1 dict), nominal_reduction, token_fraction_proxy,
    overshoot, kl, top1_agreement, dev_accuracy, seconds (the worker is in the heartbeat).
    `last` holds the latest trial's result from the moment it is known (see `keep_late_result`).
    """

    def __init__(self, config: StudyConfig, reference: DenseReference, spec: ModelSpec,
                 accuracy: Callable[[Policy], float] | None = None):
        if config.quality not in QUALITIES:
            raise StudyError(f"quality: expected one of {list(QUALITIES)}, got {config.quality!r}")
        if config.quality != "kl" and accuracy is None:
            raise StudyError(f"quality {config.quality!r} needs dev items for accuracy (e.g. --dev-tasks)")
        if reference.start_layer > min(config.space.layers):
            raise StudyError(
                f"the dense cache starts at block {reference.start_layer}, after the first searchable block "
                f"{min(config.space.layers)}"
            )
        self.config = config
        self.reference = reference
        self.shape = reference.shape
        self.spec = spec
        self.accuracy = accuracy
        self.current: int | None = None  # the trial being run
        self.last: Result | None = None

    def policy(self, trial) -> tuple[Policy, object]:
        """Sample (or replay) a trial's parameters -> (policy on the budget, utrc.budget.Fitted)."""
        space, budget = self.config.space, self.config.budget
        weights = {layer: trial.suggest_float(f"w_{layer}", 0.0, 1.0, step=space.weight_step) for layer in space.layers}
        pair = _categorical(trial, "importance", space.importance)
        metric, source = pair.split("/")
        lo, hi = space.prune_share
        # rounded: Optuna's stepped floats carry binary noise (0.8500000000000001) into the policy file
        q = round(trial.suggest_float("prune_share", lo, hi, step=space.prune_share_step), 6) if lo < hi else lo
        per_layer = None
        if space.per_layer_prune_share:
            per_layer = {layer: round(trial.suggest_float(f"q_{layer}", lo, hi, step=space.prune_share_step), 6)
                         for layer in space.layers}
        base = Policy(
            method="utrc", model=self.spec, prune_share=q, importance=metric, importance_source=source,
            hidden_strategy=_categorical(trial, "hidden_strategy", space.hidden_strategies),
            residual_strategy=_categorical(trial, "residual_strategy", space.residual_strategies),
        )
        target = budget.reduction
        if self.config.multi_objective:
            target = trial.suggest_float("target", budget.reduction, space.max_target)
        projected = fit(self.shape, base, weights, budget, space.keep_grid, per_layer, target)
        if projected.reduction < budget.reduction:  # the hard requirement; project guarantees it
            raise SpaceError(f"policy below budget: {projected.reduction} < {budget.reduction}")
        return projected.policy, projected

    def __call__(self, trial):
        t0 = time.perf_counter()
        self.current, self.last = trial.number, None
        evaluated = evaluated_elsewhere(trial)
        if evaluated is not None:
            trial.set_user_attr("duplicate_of", evaluated)
            raise optuna.TrialPruned(f"trial {evaluated} evaluates the same parameters")
        policy, projected = self.policy(trial)
        score = self.reference.score(policy)
        quality = score.kl
        attrs = {
            "policy": policy.to_dict(),
            "nominal_reduction": projected.reduction,
            "token_fraction_proxy": projected.token_fraction_proxy,
            "overshoot": projected.reduction - projected.target,
            "kl": score.kl,
            "top1_agreement": score.top1_agreement,
        }
        if self.config.quality != "kl":
            acc = float(self.accuracy(policy))
            attrs["dev_accuracy"] = acc
            if self.config.quality == "dev_error":
                quality = 1.0 - acc
            else:
                quality = score.kl + self.config.dev_error_weight * (1.0 - acc)
        attrs["seconds"] = time.perf_counter() - t0
        values = [quality, projected.reduction] if self.config.multi_objective else [quality]
        self.last = Result(trial.number, values, attrs, dict(trial.params), dict(trial.distributions))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return tuple(values) if self.config.multi_objective else quality


@dataclass(frozen=True)
class Result:
    """A scored trial, as the objective knew it before reporting it to the storage."""

    number: int
    values: list[float]
    attrs: dict
    params: dict
    distributions: dict


def evaluated_elsewhere(trial) -> int | None:
    """The number of another trial of `trial`'s lineage that is COMPLETE, or RUNNING with a lower
    number (of two racing copies the later yields), else None. Only enqueued trials (seeded,
    retries) can have copies."""
    trials = trial.study.get_trials(deepcopy=False)
    me = trials[trial.number]
    if "fixed_params" not in me.system_attrs:
        return None
    for t in trials:
        if t.number != me.number and lineage(t) == lineage(me) and (
                t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.number < me.number)):
            return t.number
    return None


def keep_late_result(study: optuna.Study, result: Result) -> str:
    """Keep the result of a trial that was failed as stale while its owner still ran it (its
    heartbeat stalled: a suspended process, an unreachable file system): as a new COMPLETE trial
    of the same lineage (`late_result_of` names the failed one), unless another copy of that
    lineage is COMPLETE or RUNNING already. -> what happened, for the log."""
    failed = study.get_trials(deepcopy=False)[result.number]
    mine = lineage(failed)
    other = next((t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                  if lineage(t) == mine), None)
    if other is not None:
        return f"trial {result.number} was failed as stale while it ran; trial {other} evaluates its parameters"
    study.add_trial(optuna.trial.create_trial(
        params=result.params, distributions=result.distributions, values=result.values,
        user_attrs={**failed.user_attrs, **result.attrs, "lineage": mine, "late_result_of": result.number}))
    return (f"trial {result.number} was failed as stale while it ran; its result is kept as trial "
            f"{len(study.get_trials(deepcopy=False)) - 1}")


def run(study: optuna.Study, objective: Objective, n_trials: int,
        progress: Callable[[str], None] | None = print) -> int:
    """Run trials until the study holds `n_trials` COMPLETE trials -> COMPLETE trials now.
    `progress` gets a line every 10th trial: its objective values by name and the study's best so far."""
    names = objective.config.metric_names()

    def complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def report(st, trial):
        if progress and trial.number % 10 == 0:
            progress(f"trial {trial.number} {trial.state.name}: {describe_values(names, trial.values)}; "
                     f"{best_so_far(st, names)} ({complete()}/{n_trials} complete)")

    def seeded_waiting() -> bool:
        return any(lineage(t) in SEEDED for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    stop = optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))
    while complete() < n_trials or seeded_waiting():
        try:
            study.optimize(objective, n_trials=max(1, n_trials - complete()), callbacks=[stop, report])
        except (ValueError, UpdateFinishedTrialError) as err:
            # Another worker failed our running trial as stale meanwhile (its retry is enqueued):
            # Optuna refuses our writes to it. Go on, keeping its result if it was scored.
            if not (isinstance(err, UpdateFinishedTrialError) or str(err) == "Cannot tell a FAIL trial."):
                raise
            last = objective.last
            message = (keep_late_result(study, last) if last is not None and last.number == objective.current else
                       f"trial {objective.current} was failed as stale before it was scored; its retry will run it")
            if progress:
                progress(message)
    return complete()


# --- helpers ----------------------------------------------------------------------------------


def describe_values(names: list[str], values: list[float] | None) -> str:
    """"dev KL 0.4123" (and ", nominal FLOPs reduction 0.3012" for two objectives); "no value" for a failed trial."""
    if values is None:
        return "no value"
    return ", ".join(f"{name} {value:.4f}" for name, value in zip(names, values, strict=True))


def best_so_far(study: optuna.Study, names: list[str]) -> str:
    """The COMPLETE trial with the lowest quality loss (the first objective) so far, as the export picks it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "no complete trial yet"
    best = min(done, key=lambda t: t.values[0])
    return f"best so far: trial {best.number}, {names[0]} {best.values[0]:.4f}"


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TrialSeededTPE(seed=config.seed, multivariate=True, n_startup_trials=config.n_startup_trials)


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random state is reseeded before each trial from (seed, trial number). Trial numbers
    are unique within a study, so workers given the same seed (the command line's default 0)
    never propose alike, a resumed worker does not replay earlier draws, and one worker's run is
    reproducible. (The random states are TPESampler's own, as of Optuna 5.0.)"""

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study, trial) -> None:
        seed = (self._base_seed * 1_000_003 + trial.number) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def _categorical(trial, name: str, choices):
    return trial.suggest_categorical(name, list(choices)) if len(choices) > 1 else choices[0]


def _is_searched(space: SearchSpace, key: str) -> bool:
    if key == "importance":
        return len(space.importance) > 1
    if key == "prune_share":
        return space.prune_share[0] < space.prune_share[1]
    if key == "residual_strategy":
        return len(space.residual_strategies) > 1
    return len(space.hidden_strategies) > 1


def _param_in_space(space: SearchSpace, key: str, value) -> bool:
    if key == "importance":
        return value in space.importance
    if key == "prune_share":
        lo, hi = space.prune_share
        if not lo <= value <= hi:
            return False
        return lo == hi or space.prune_share_step is None or math.isclose(
            (value - lo) / space.prune_share_step, round((value - lo) / space.prune_share_step))
    if key == "residual_strategy":
        return value in space.residual_strategies
    return value in space.hidden_strategies


def _shape_dict(shape: ModelShape) -> dict:
    from dataclasses import asdict

    return asdict(shape)


def _calibration_ref(calibration: dict | None) -> dict | None:
    if not calibration:
        return None
    return {"hash": calibration["hash"], "path": calibration.get("_path"),
            "file_sha256": calibration.get("_file_sha256")}


def _check_same(study_name: str, storage: str, stored: dict, given: dict) -> None:
    diffs = [k for k in sorted(set(stored) | set(given)) if stored.get(k) != given.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: stored {stored.get(k)!r}, given {given.get(k)!r}" for k in diffs)
        raise StudyError(
            f"study {study_name!r} in {storage} was created with other settings ({detail}); resume it with the "
            "same settings or choose another --study-name"
        )
