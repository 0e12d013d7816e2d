"""One Optuna study per (model, FLOPs budget): storage, resume, the trial objective, seeding.

Storage: a path is an Optuna `JournalStorage` on a `JournalFileBackend` file (several worker
processes may share it; the file lock serialises writes); a URL (``sqlite:///…``,
``postgresql://…``) is an `RDBStorage` with Optuna's heartbeat (stale trials failed and retried
by `RetryFailedTrialCallback`).

Resume: the journal backend has no heartbeat in Optuna 5, so every worker marks stale trials
itself before it starts (`recover_stale_trials`): a RUNNING trial is stale when the worker that
owns it (user attr ``worker``: host, pid, process start time) is a dead process on this host, or
when it started more than `stale_after` seconds ago (workers on other hosts). A stale trial is
set to FAIL and its parameters are enqueued again, so e.g. the paper's schedule is always
evaluated. Completed trials are never touched; the study runs until it holds `n_trials` COMPLETE
trials, however many workers and restarts that takes.

The first trials enqueued in a new study: the paper's hand-set schedule at the same budget (so
the best trial can only be at least as good), then the calibration prior (removal weights
inversely proportional to each block's measured sensitivity) and uniform removal over all
searchable blocks. Then the TPE sampler, seeded.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from utrc import ModelShape, ModelSpec, Policy
from utrc.budget import fit
from utrc.names import budget_tag
from utrc.policy import paper_layers

from . import provenance
from .objective import DenseReference
from .space import FEASIBILITY, Budget, SearchSpace, SpaceError, check_reachable, paper_weights

PAPER_PARAMS = {"importance": "clip/ssm_output", "prune_share": 0.5, "residual_strategy": "merge", "hidden_strategy": "hybrid"}
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
    stale_after: float = 900.0  # seconds after which a RUNNING trial of an unknown worker is stale

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


# --- storage ----------------------------------------------------------------------------------


def open_storage(storage: str, heartbeat_interval: int = 60):
    """A journal file storage for a path, an RDB storage (with heartbeat) for a URL."""
    if "://" in storage:
        return RDBStorage(
            storage,
            heartbeat_interval=heartbeat_interval,
            grace_period=3 * heartbeat_interval,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=3),
        )
    directory = os.path.dirname(os.path.abspath(storage))
    os.makedirs(directory, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def load_study(storage: str, study_name: str) -> optuna.Study:
    """An existing study, or StudyError listing the studies the storage holds."""
    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if study_name not in names:
        raise StudyError(f"study {study_name!r} not found in {storage}; it holds {names or 'no study'}")
    return optuna.load_study(study_name=study_name, storage=store)


# --- worker identity and stale trials ---------------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    """Start time of a process (Linux /proc), so that a reused pid is not mistaken for the worker."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_id() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid)}


def _worker_dead(worker: dict | None) -> bool:
    if not worker or worker.get("host") != socket.gethostname():
        return False  # unknown here: only the timeout can tell
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return worker.get("start") is not None and _start_ticks(pid) != worker.get("start")


def recover_stale_trials(study: optuna.Study, storage, stale_after: float) -> list[int]:
    """Mark stale RUNNING trials of `study` (opened on the storage object `storage`) FAIL and
    enqueue their parameters again -> the stale trials' numbers.

    A trial's owner is its ``worker`` user attr. A trial killed before its objective recorded that
    (the few milliseconds after Optuna created it) has no owner; it is stale when every worker
    that ever registered with the study (study user attrs ``worker <host> <pid> <start>``) is a
    dead process on this host. Otherwise a trial is stale after `stale_after` seconds.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    registered = [v for k, v in study.user_attrs.items() if k.startswith("worker ")]
    all_workers_dead = bool(registered) and all(_worker_dead(w) for w in registered)
    now = time.time()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        owner = t.user_attrs.get("worker")
        gone = _worker_dead(owner) if owner else all_workers_dead
        if gone or now - started > stale_after:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "failed_as", "stale: its worker is gone")  # before FAIL freezes it
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            params = dict(t.system_attrs.get("fixed_params") or t.params)
            study.enqueue_trial(params, user_attrs={"origin": t.user_attrs.get("origin", "sampled"), "retry_of": t.number})
            stale.append(t.number)
    return stale


def register_worker(study: optuna.Study) -> dict:
    """Record this process in the study's user attrs (see `recover_stale_trials`) -> its id."""
    me = worker_id()
    study.set_user_attr(f"worker {me['host']} {me['pid']} {me['start']}", dict(me, since=provenance.now()))
    return me


# --- creating / resuming ----------------------------------------------------------------------


def create_or_resume(storage: str, study_name: str, config: StudyConfig, shape: ModelShape, spec: ModelSpec,
                     calibration: dict | None = None, dev: dict | None = None) -> optuna.Study:
    """Open the study (creating it and its first enqueued trials if new), check that a resumed
    study was created with the same settings, and fail stale trials. Raises StudyError /
    SpaceError before any trial runs."""
    validate(config, shape)
    reach = check_reachable(shape, spec, config.space, config.budget)
    store = open_storage(storage)
    directions = ["minimize", "maximize"] if config.multi_objective else ["minimize"]
    existing = {s.study_name for s in optuna.get_all_study_summaries(store)}
    sampler = _sampler(config, study_name, store if study_name in existing else None)
    study = optuna.create_study(storage=store, study_name=study_name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable API since Optuna 3.2
            study.set_metric_names(config.metric_names())
    settings = config.settings()
    stored = study.user_attrs.get("settings")
    if stored is None:
        attrs = {
            "settings": settings,
            "feasibility": FEASIBILITY,
            "model": {"spec": {"name": spec.name, "architecture": spec.architecture, "n_layer": spec.n_layer,
                               "d_model": spec.d_model}, "shape": _shape_dict(shape)},
            "reachable": reach,
            "calibration": _calibration_ref(calibration),
            "dev": dev or {},
            "space_notes": list(config.space.notes),
            "sampler": {"name": "TPESampler", "seed": config.seed, "multivariate": True,
                        "n_startup_trials": config.n_startup_trials},
            "objectives": ["quality_loss", "nominal_reduction"] if config.multi_objective else ["quality_loss"],
            "versions": provenance.versions(),
            "created": provenance.now(),
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        for params, origin in first_trials(config, shape, calibration):
            study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)
    else:
        _check_same(study_name, storage, stored, settings)
        stored_dev = study.user_attrs.get("dev", {}).get("hash")
        if dev and stored_dev and dev.get("hash") != stored_dev:
            raise StudyError(
                f"study {study_name!r} in {storage} was scored on another dev set (hash {stored_dev[:12]}…, now "
                f"{dev.get('hash', '')[:12]}…); use the same --text/--dev-* settings or another --study-name"
            )
    recover_stale_trials(study, store, config.stale_after)
    register_worker(study)
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
            warnings.warn(f"the paper's {key}={value!r} is outside the search space: the paper trial is not enqueued")
            paper_ok = False
        elif _is_searched(space, key):
            common[key] = value
    if space.per_layer_prune_share and paper_ok:
        common.update({f"q_{l}": PAPER_PARAMS["prune_share"] for l in space.layers})
    if config.multi_objective:
        common["target"] = config.budget.reduction
    paper = paper_weights(space, shape.n_layer)
    if paper is None:
        warnings.warn(f"paper layers {list(paper_layers(shape.n_layer))} are not all searchable: paper trial not enqueued")
    elif paper_ok:
        out.append(({**{f"w_{l}": w for l, w in paper.items()}, **common}, "utrc-paper"))
    prior = prior_weights(calibration, space.layers)
    if prior is not None and space.weight_step:
        prior = {l: round(round(w / space.weight_step) * space.weight_step, 6) for l, w in prior.items()}
    if prior is not None:
        out.append(({**{f"w_{l}": w for l, w in prior.items()}, **common}, "calibration"))
    out.append(({**{f"w_{l}": 1.0 for l in space.layers}, **common}, "uniform"))
    return out


def prior_weights(calibration: dict | None, layers) -> dict[int, float] | None:
    """Removal weights from the calibration's sensitivity curves: w_l = min sensitivity / sensitivity_l
    (mean KL over the calibrated keeps, of the paper's pair if calibrated, else the first pair)."""
    if not calibration:
        return None
    curves = calibration["sensitivity"]["kl"]
    pair = PAPER_PARAMS["importance"] if PAPER_PARAMS["importance"] in curves else next(iter(curves), None)
    if pair is None or not all(str(l) in curves[pair] for l in layers):
        return None
    sens = {l: sum(curves[pair][str(l)]) / len(curves[pair][str(l)]) + 1e-6 for l in layers}
    low = min(sens.values())
    return {l: round(low / s, 6) for l, s in sens.items()}


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
    overshoot, kl, top1_agreement, dev_accuracy, seconds, worker.
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
        self.worker = worker_id()

    def policy(self, trial) -> tuple[Policy, object]:
        """Sample (or replay) a trial's parameters -> (policy on the budget, utrc.budget.Fitted)."""
        space, budget = self.config.space, self.config.budget
        weights = {l: trial.suggest_float(f"w_{l}", 0.0, 1.0, step=space.weight_step) for l in space.layers}
        pair = _categorical(trial, "importance", space.importance)
        metric, source = pair.split("/")
        lo, hi = space.prune_share
        # rounded: Optuna's stepped floats carry binary noise (0.8500000000000001) into the policy file
        q = round(trial.suggest_float("prune_share", lo, hi, step=space.prune_share_step), 6) if lo < hi else lo
        per_layer = None
        if space.per_layer_prune_share:
            per_layer = {l: round(trial.suggest_float(f"q_{l}", lo, hi, step=space.prune_share_step), 6)
                         for l in space.layers}
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
        trial.set_user_attr("worker", self.worker)
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
            quality = (1.0 - acc) if self.config.quality == "dev_error" else score.kl + self.config.dev_error_weight * (1.0 - acc)
        attrs["seconds"] = time.perf_counter() - t0
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.config.multi_objective:
            return quality, projected.reduction
        return quality


def run(study: optuna.Study, objective: Objective, n_trials: int, progress: Callable[[str], None] | None = print) -> int:
    """Run trials until the study holds `n_trials` COMPLETE trials -> COMPLETE trials now.
    `progress` gets a line every 10th trial: its objective values by name and the study's best so far."""
    names = objective.config.metric_names()

    def complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def report(st, trial):
        if progress and trial.number % 10 == 0:
            progress(f"trial {trial.number} {trial.state.name}: {describe_values(names, trial.values)}; "
                     f"{best_so_far(st, names)} ({complete()}/{n_trials} complete)")

    stop = optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))
    while complete() < n_trials:
        study.optimize(objective, n_trials=n_trials - complete(), callbacks=[stop, report])
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


def _sampler(config: StudyConfig, study_name: str, storage) -> optuna.samplers.BaseSampler:
    # A resumed worker continues from a different seed so it does not replay the first run's draws.
    done = 0
    if storage is not None:
        done = len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=config.seed + done, multivariate=True,
                                          n_startup_trials=config.n_startup_trials)


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
    return {"hash": calibration["hash"], "path": calibration.get("_path"), "file_sha256": calibration.get("_file_sha256")}


def _check_same(study_name: str, storage: str, stored: dict, given: dict) -> None:
    diffs = [k for k in sorted(set(stored) | set(given)) if stored.get(k) != given.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: stored {stored.get(k)!r}, given {given.get(k)!r}" for k in diffs)
        raise StudyError(
            f"study {study_name!r} in {storage} was created with other settings ({detail}); resume it with the "
            "same settings or choose another --study-name"
        )
