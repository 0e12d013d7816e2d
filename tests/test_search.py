"""search: the space, cached objective, Optuna study (journal / RDB storage, resume), export."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faultkit
import optuna
import pandas as pd
import pytest
import torch
from conftest import VOCAB, tiny_model
from faultkit import workers_fixture  # noqa: F401 (the `workers` fixture)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_calibrate import write_checkpoint

from search import run as run_cli
from search.calibrate import CalibrationConfig, calibrate
from search.export import export, pareto_trials
from search.objective import DenseReference
from search.space import Budget, SearchSpace, SpaceError, check_reachable, default_layers, fit_to_budget
from search.storage import HEARTBEAT, SEEDED, fail_stale_trials, open_storage, retry_stale_trial, worker_id
from search.study import Objective, StudyConfig, StudyError, create_or_resume, register_worker, run
from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply, estimate_flops

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]


def dev_ids(n=6, length=48, seed=0):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def setup_study(tmp_path, architecture="mamba2", n_layer=8, budget=0.2, n_trials=20, storage=None, calibration=None,
                **config):
    model = tiny_model(architecture, n_layer=n_layer)
    shape = ModelShape.of(model)
    spec = ModelSpec.of(shape, "tiny")
    space = config.pop("space", None) or SearchSpace(layers=default_layers(n_layer),
                                                     importance=("clip/ssm_output", "l1/mixer_output"))
    cfg = StudyConfig(budget=Budget(budget, seq_len=256), space=space, n_trials=n_trials, **config)
    ref = DenseReference(model, dev_ids(), score_last=4, start_layer=min(space.layers))
    storage = storage or str(tmp_path / "study.journal")
    study = create_or_resume(storage, "tiny-20", cfg, shape, spec, calibration)
    return study, Objective(cfg, ref, spec), cfg, storage


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the space and the budget -------------------------------------------------------------------


def test_unreachable_budget_and_bad_layers_stop_before_any_trial(tmp_path):
    model = tiny_model("mamba", n_layer=6)
    shape, spec = ModelShape.of(model), ModelSpec.of(ModelShape.of(model))
    journal = tmp_path / "s.journal"
    space = SearchSpace(layers=(4,))
    with pytest.raises(SpaceError, match="unreachable"):
        create_or_resume(str(journal), "s", StudyConfig(Budget(0.3, seq_len=256), space), shape, spec)
    with pytest.raises(SpaceError, match=r"\[6, 9\] are outside the model: it has 6 blocks"):
        create_or_resume(str(journal), "s", StudyConfig(Budget(0.1), SearchSpace(layers=(2, 6, 9))), shape, spec)
    assert not journal.exists()  # nothing was created, no trial ran
    reach = check_reachable(shape, spec, SearchSpace(layers=(1, 2, 3, 4)), Budget(0.3, seq_len=256))
    assert reach["ssm_output"] > 0.3
    # 0.45 is within reach of the cheaper mixer_output matching (width d_model) only
    both = SearchSpace(layers=(1, 2, 3, 4), importance=("clip/ssm_output", "l1/mixer_output"))
    with pytest.raises(SpaceError, match="out of reach for importance source.*ssm_output.*fit_to_budget"):
        check_reachable(shape, spec, both, Budget(0.45, seq_len=256))
    fitted = fit_to_budget(shape, spec, both, Budget(0.45, seq_len=256))
    assert fitted.importance == ("l1/mixer_output",) and "ssm_output" in fitted.notes[0]
    assert fit_to_budget(shape, spec, both, Budget(0.3, seq_len=256)) is both


def test_command_line_bad_input_exits_with_a_message(tmp_path, capsys):
    model_dir, text = write_checkpoint(tmp_path, "mamba2", n_layer=6)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    journal = tmp_path / "s.journal"
    base = ["--model", str(model_dir), "--storage", str(journal), "--dev-sequences", "2", "--dev-length", "32",
            "--score-last", "4", "--seq-len", "256", "--n-trials", "2", "--quiet"]
    cases = [
        (["--budget", "0.2", "--text", str(empty)], "is empty"),
        (["--budget", "0.95", "--text", str(text)], "unreachable"),
        (["--budget", "0.2", "--text", str(text), "--layers", "2-7"], "[6, 7] are outside the model"),
        (["--budget", "0.2", "--text", str(text), "--dev-sequences", "0"], "at least 1 window"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_cli.main(base + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not journal.exists()


# --- the objective ------------------------------------------------------------------------------


def test_cached_objective_equals_the_public_reduced_model(architecture):
    model = tiny_model(architecture, n_layer=6)
    spec = ModelSpec.of(ModelShape.of(model))
    x = dev_ids()
    ref = DenseReference(model, x, score_last=4, start_layer=2, batch_size=4)
    policy = Policy(method="utrc", model=spec, layers={2: LayerSpec(0.6), 4: LayerSpec(0.75)},
                    residual_strategy="hybrid")
    with torch.no_grad():
        dense = torch.log_softmax(model(x).logits[:, -4:].float(), -1)
        reduced = torch.log_softmax(apply(model, policy)(x, protect_last=4).logits[:, -4:], -1)
    expected = float((dense.exp() * (dense - reduced)).sum(-1).mean())
    assert ref.score(policy).kl == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-4
    assert ref.score(Policy.dense(spec)).kl == 0.0
    with pytest.raises(ValueError, match=r"reduces at block\(s\) \[1\], before block 2"):
        ref.score(Policy(method="utrc", model=spec, layers={1: LayerSpec(0.8)}))


def test_cached_objective_on_padded_document_rows():
    """Rows of different lengths (right padding): each scored on its own last tokens, as one-row calls do."""
    model = tiny_model("mamba2", n_layer=6)
    spec = ModelSpec.of(ModelShape.of(model))
    x = dev_ids(4, 50)
    lengths = torch.tensor([30, 38, 45, 50])
    x = x.masked_fill(torch.arange(50)[None, :] >= lengths[:, None], 0)
    ref = DenseReference(model, x, score_last=3, start_layer=1, batch_size=2, lengths=lengths)
    policy = Policy(method="utrc", model=spec, layers={1: LayerSpec(0.7), 3: LayerSpec(0.6)})
    kls = []
    with torch.no_grad():
        for row, n in zip(x, lengths.tolist(), strict=True):
            one = row[None, :n]
            dense = torch.log_softmax(model(one).logits[:, -3:].float(), -1)
            reduced = torch.log_softmax(apply(model, policy)(one, protect_last=3).logits[:, -3:], -1)
            kls.append(float((dense.exp() * (dense - reduced)).sum(-1).mean()))
    assert ref.score(policy).kl == pytest.approx(sum(kls) / 4, rel=1e-4)


# --- the study ----------------------------------------------------------------------------------


def test_study_starts_from_the_paper_schedule_and_keeps_every_trial_on_budget(tmp_path):
    model = tiny_model("mamba2", n_layer=8)
    calibration = calibrate(model, dev_ids(seed=5), CalibrationConfig(score_last=4)).summary
    study, objective, cfg, storage = setup_study(tmp_path, n_trials=24, calibration=calibration)
    assert [t.user_attrs["origin"] for t in study.trials[:3]] == ["utrc-paper", "calibration", "uniform"]
    assert "bisected" in study.user_attrs["feasibility"]
    assert run(study, objective, 24, progress=None) == 24
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(t.user_attrs["nominal_reduction"] >= 0.2 for t in complete)
    paper = complete[0]
    assert {s["keep"] for s in paper.user_attrs["policy"]["layers"].values()} == {0.765}
    assert study.best_value <= paper.value
    assert len({t.params["w_4"] for t in complete[3:]}) == 21  # sampled, not replayed

    out = tmp_path / "out"
    paths = export([(storage, "tiny-20")], "tiny", out)
    assert sorted(p.name for p in (out / "policies").iterdir()) == [
        "tiny_evit_flops0.2.json", "tiny_tome_flops0.2.json", "tiny_utrc-paper_flops0.2.json",
        "tiny_utrc-searched_flops0.2.json"]
    assert sorted(p.name for p in (out / "search" / "flops0.2" / "seed0").iterdir()) == ["pareto.csv", "trials.csv"]
    searched = Policy.load(paths["utrc-searched"])
    assert searched.provenance["trial"] == study.best_trial.number
    assert searched.provenance["objective"]["quality_loss"] == study.best_value
    assert searched.provenance["calibration"]["hash"] == calibration["hash"]
    assert searched.measured["dev_kl"] == study.best_value
    shape = ModelShape.of(model)
    for run_name in ("utrc-searched", "utrc-paper", "evit", "tome"):
        p = Policy.load(paths[run_name])
        assert p.estimates["reduction"] == estimate_flops(shape, p, 256, 1)["reduction"] >= 0.2
        assert p.method == {"utrc-searched": "utrc", "utrc-paper": "utrc"}.get(run_name, run_name)
    assert Policy.load(paths["utrc-paper"]).layers == Policy.from_dict(paper.user_attrs["policy"]).layers
    assert Policy.load(paths["utrc-paper"]).measured["dev_kl"] == paper.value
    paths = {k.removesuffix(" seed 0"): v for k, v in paths.items()}
    trials = pd.read_csv(paths["trials"])
    assert len(trials) == len(study.trials) and (trials.nominal_reduction >= 0.2).all()
    pareto = pd.read_csv(paths["pareto"])
    assert study.best_trial.number in set(pareto.number)
    for _, row in pareto.iterrows():  # nobody dominates a front member
        no_worse = (trials.quality_loss <= row.quality_loss) & (trials.nominal_reduction >= row.nominal_reduction)
        better_somewhere = (trials.quality_loss < row.quality_loss) | (trials.nominal_reduction > row.nominal_reduction)
        better = trials[no_worse & better_somewhere]
        assert better.empty


def test_export_of_several_seeds_chooses_on_the_dev_set(tmp_path):
    studies = []
    for seed in (0, 1):
        model = tiny_model("mamba2", n_layer=8)
        cfg = StudyConfig(budget=Budget(0.2, seq_len=256), space=SearchSpace(layers=default_layers(8)), n_trials=5,
                          seed=seed, n_startup_trials=2)
        study = create_or_resume(str(tmp_path / f"seed{seed}.journal"), f"tiny-seed{seed}", cfg, ModelShape.of(model),
                                 ModelSpec.of(ModelShape.of(model), "tiny"))
        spec = ModelSpec.of(ModelShape.of(model), "tiny")
        reference = DenseReference(model, dev_ids(), score_last=4, start_layer=2)
        run(study, Objective(cfg, reference, spec), 5, progress=None)
        studies.append((str(tmp_path / f"seed{seed}.journal"), f"tiny-seed{seed}", study.best_value))
    paths = export([s[:2] for s in studies], "tiny", tmp_path / "out")
    chosen = Policy.load(paths["utrc-searched"]).provenance
    assert chosen["objective"]["quality_loss"] == min(s[2] for s in studies)
    assert [s["objective"]["quality_loss"] for s in chosen["chosen_from"]] == [s[2] for s in studies]
    for seed in (0, 1):  # each seed's best beside its tables
        seed_policy = tmp_path / "out" / "search" / "flops0.2" / f"seed{seed}" / "tiny_utrc-searched_flops0.2.json"
        assert Policy.load(seed_policy).provenance["seed"] == seed


def test_multi_objective_mode_gives_a_pareto_front_above_the_budget(tmp_path):
    space = SearchSpace(layers=default_layers(8), max_target=0.35)
    study, objective, _, storage = setup_study(tmp_path, n_trials=16, space=space, multi_objective=True)
    run(study, objective, 16, progress=None)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(0.2 <= t.values[1] and t.params.get("target", 0.2) <= 0.35 for t in complete)
    assert {t.number for t in study.best_trials} == {t.number for t in pareto_trials(study)}
    assert max(t.values[1] for t in complete) > 0.3  # the front spans the FLOPs range
    assert export([(storage, "tiny-20")], "tiny", tmp_path / "out")["pareto seed 0"].exists()


def test_resuming_with_other_settings_is_refused(tmp_path):
    study, objective, cfg, storage = setup_study(tmp_path, n_trials=3)
    run(study, objective, 3, progress=None)
    with pytest.raises(StudyError, match="created with other settings .*budget"):
        setup_study(tmp_path, budget=0.25, storage=storage)
    study, objective, _, _ = setup_study(tmp_path, storage=storage, n_trials=5)  # same settings: resumes
    assert run(study, objective, 5, progress=None) == 5 and len(study.trials) == 5


def test_rdb_url_works_through_the_same_option(tmp_path):
    study, objective, _, storage = setup_study(tmp_path, storage=f"sqlite:///{tmp_path / 'study.db'}", n_trials=4)
    assert run(study, objective, 4, progress=None) == 4
    assert study.trials[0].user_attrs["origin"] == "utrc-paper"
    assert Policy.load(export([(storage, "tiny-20")], "tiny", tmp_path / "out")["utrc-searched"]).method == "utrc"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_trials_are_failed_only_when_their_owner_is_gone(tmp_path):
    """Same host: the process is asked (alive: never stale, however old its heartbeat). Other
    hosts: the heartbeat's age. No heartbeat yet: stale once every other registered worker is gone."""
    storage = open_storage(str(tmp_path / "s.journal"), stale_after=900)
    study = optuna.create_study(storage=storage, study_name="s")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = worker_id()["host"]
    dead = {"host": here, "pid": gone.pid, "start": None}
    study.set_user_attr(f"worker {here} {gone.pid} None", dead)
    long_ago, now = time.time() - 10_000, time.time()
    owners = {  # trial -> (heartbeat time, owner)
        "dead here": (now, dead),
        "alive here, silent for hours": (long_ago, {"host": here, "pid": alive.pid, "start": None}),
        "other host, silent": (long_ago, {"host": "elsewhere", "pid": 1, "start": "1"}),
        "other host, beating": (now, {"host": "elsewhere", "pid": 1, "start": "1"}),
        "no heartbeat yet": None,
    }
    trials = {}
    for name, beat in owners.items():
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        if beat:
            storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, {"time": beat[0], "worker": beat[1]})
        trials[name] = trial.number
    try:
        fail_stale_trials(study)
    finally:
        alive.kill()
    states = {name: study.trials[n].state for name, n in trials.items()}
    assert states == {"dead here": TrialState.FAIL, "alive here, silent for hours": TrialState.RUNNING,
                      "other host, silent": TrialState.FAIL, "other host, beating": TrialState.RUNNING,
                      "no heartbeat yet": TrialState.FAIL}
    retried = {t.user_attrs["retry_of"]: t for t in study.trials if t.state == TrialState.WAITING}
    assert set(retried) == {trials["dead here"], trials["other host, silent"], trials["no heartbeat yet"]}
    assert retried[trials["dead here"]].system_attrs["fixed_params"] == study.trials[trials["dead here"]].params
    register_worker(study)  # the worker that checks is left out: it runs no trial while it checks
    fresh = study.ask()
    fail_stale_trials(study)  # every other registered worker is gone
    assert study.trials[fresh.number].state == TrialState.FAIL
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        study.set_user_attr(f"worker {here} {alive.pid} None", {"host": here, "pid": alive.pid, "start": None})
        fresh = study.ask()
        impatient = open_storage(str(tmp_path / "s.journal"), stale_after=0)
        fail_stale_trials(optuna.load_study(study_name="s", storage=impatient))  # a live worker here may own it
    finally:
        alive.kill()
    assert study.trials[fresh.number].state == TrialState.RUNNING


def test_killed_worker_resumes_keeping_completed_trials(tmp_path):
    """SIGKILL a worker process while a trial runs; the rerun keeps COMPLETE trials, fails the stale
    one, re-runs its parameters and reaches the trial count."""
    model_dir, text = write_checkpoint(tmp_path, "mamba2", n_layer=6, n_docs=40, words=60)
    journal = tmp_path / "study.journal"
    cmd = [sys.executable, "-m", "search.run", "--model", str(model_dir), "--budget", "0.2", "--storage", str(journal),
           "--study-name", "s", "--n-trials", "40", "--text", str(text), "--dev-sequences", "12", "--dev-length",
           "96", "--score-last", "4", "--seq-len", "256", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    worker = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    deadline = time.time() + 120
    killed_while_running = None
    try:
        while time.time() < deadline and worker.poll() is None:
            time.sleep(0.05)
            if not journal.exists():
                continue
            os.kill(worker.pid, signal.SIGSTOP)  # freeze it, then look: no race with its next write
            trials = _trials(storage)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            holds_lock = Path(str(journal) + ".lock").exists()
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 3 and running and not holds_lock:
                os.kill(worker.pid, signal.SIGKILL)
                killed_while_running = running[0].number
                break
            os.kill(worker.pid, signal.SIGCONT)
    finally:
        if worker.poll() is None and killed_while_running is None:
            worker.kill()
        worker.wait()
    assert killed_while_running is not None, worker.stderr.read().decode()[-2000:]
    before = {t.number: t.values for t in _trials(storage) if t.state == TrialState.COMPLETE}
    assert 3 <= len(before) < 40

    run_cli.main(cmd[3:] + ["--threads", "1"])  # the rerun, in this process (one interpreter start less)
    after = {t.number: t for t in _trials(JournalStorage(JournalFileBackend(str(journal))))}
    assert all(after[n].state == TrialState.COMPLETE and after[n].values == v for n, v in before.items())
    stale = after[killed_while_running]
    assert stale.state == TrialState.FAIL
    retry = [t for t in after.values() if t.user_attrs.get("retry_of") == killed_while_running]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert all(retry[0].params[k] == v for k, v in stale.params.items())
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 40
    assert not any(t.state == TrialState.RUNNING for t in after.values())


def _trials(storage):
    try:
        study = optuna.load_study(study_name="s", storage=storage)
    except KeyError:  # the worker has not created the study yet
        return []
    return study.get_trials(deepcopy=False)


# --- interruptions, stale trials, torn journals, seeds (real worker processes: tests/faultkit.py) ---------------


def search_argv(journal, n_trials, *extra):
    """A small real search of the demo model: a worker sets up in about a second, a trial takes a fraction."""
    return ["--model", "demo:mamba2", "--budget", "0.2", "--storage", str(journal), "--study-name", "s",
            "--n-trials", str(n_trials), "--text", "demo:64", "--dev-sequences", "4", "--dev-length", "64",
            "--score-last", "4", "--seq-len", "256", "--threads", "1", *extra]


def stop_while(child, journal, condition, timeout=120):
    """SIGSTOP `child` at a moment `condition(trials)` holds and it does not hold the journal's lock
    -> those trials (the child stays stopped)."""
    deadline = time.time() + timeout
    while time.time() < deadline and child.stop():
        trials = faultkit.journal_trials(journal, "s")
        if condition(trials) and not Path(str(journal) + ".lock").exists():
            return trials
        child.signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"the condition never held; the worker's output:\n{child.output()[-3000:]}")


def test_ctrl_c_during_the_paper_trial_loses_nothing(tmp_path, workers):
    """Ctrl-C marks the running trial FAIL; the paper's seeded trial must still run exactly once."""
    journal = tmp_path / "study.journal"
    worker = workers.start("search.run:main", search_argv(journal, 8), "w1")
    trials = stop_while(worker, journal, lambda ts: any(t.state == TrialState.RUNNING and t.user_attrs.get("origin")
                                                        == "utrc-paper" and t.params for t in ts))
    worker.signal(signal.SIGINT)
    worker.signal(signal.SIGCONT)
    worker.wait()
    paper = [t for t in faultkit.journal_trials(journal, "s") if t.user_attrs.get("origin") == "utrc-paper"]
    assert [t.state for t in paper] == [TrialState.FAIL] and trials[0].number == paper[0].number
    interrupted = worker.output()
    rerun = workers.start("search.run:main", search_argv(journal, 8), "w2")
    assert rerun.wait() == 0, rerun.output()[-3000:]
    trials = faultkit.journal_trials(journal, "s")
    for origin in ("utrc-paper", "uniform"):
        assert [t.state for t in trials if t.user_attrs.get("origin") == origin].count(TrialState.COMPLETE) == 1
    paths = export([(str(journal), "s")], "s", tmp_path / "out")
    assert Policy.load(paths["utrc-paper"]).measured["dev_kl"] > 0
    assert worker.process.exitcode == 130 and "interrupted: the study's COMPLETE trials are kept" in interrupted


def test_a_live_worker_is_never_failed_however_long_its_trial_runs(tmp_path, workers):
    """A worker that starts while another's trial has run longer than --stale-after leaves it
    alone (its owner is a live process on this host) and the owner finishes normally."""
    journal = tmp_path / "study.journal"
    slow = workers.start("search.run:main", search_argv(journal, 6, "--stale-after", "1"), "a")
    trials = stop_while(slow, journal, lambda ts: any(t.state == TrialState.RUNNING and t.params for t in ts))
    (running,) = [t.number for t in trials if t.state == TrialState.RUNNING]
    time.sleep(2.5)  # the stopped trial is now older than --stale-after, and its heartbeat too
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    other = workers.start("search.run:main", search_argv(journal, done + 1, "--stale-after", "1"), "b")
    assert other.wait() == 0, other.output()[-3000:]
    assert faultkit.journal_trials(journal, "s")[running].state == TrialState.RUNNING
    slow.signal(signal.SIGCONT)
    assert slow.wait() == 0, slow.output()[-3000:]
    assert faultkit.journal_trials(journal, "s")[running].state == TrialState.COMPLETE


def test_a_worker_whose_trial_was_failed_elsewhere_keeps_its_result(tmp_path, workers):
    """When a worker on another host fails a trial whose heartbeat stalled (here: the owner is
    stopped), the owner, once it runs again, neither crashes nor loses what it computed."""
    journal = tmp_path / "study.journal"
    owner = workers.start("search.run:main", search_argv(journal, 5), "owner")
    def scoring(ts):  # all parameters drawn: the trial is being scored
        full = max((len(t.params) for t in ts if t.state == TrialState.COMPLETE and t.number >= 2), default=None)
        return any(t.state == TrialState.RUNNING and len(t.params) == full for t in ts)

    trials = stop_while(owner, journal, scoring)
    (stalled,) = [t for t in trials if t.state == TrialState.RUNNING]
    storage = open_storage(str(journal))
    storage.set_trial_state_values(stalled._trial_id, TrialState.FAIL)  # what fail_stale_trials does on that host
    retry_stale_trial(optuna.load_study(study_name="s", storage=storage), stalled)
    owner.signal(signal.SIGCONT)
    assert owner.wait() == 0, owner.output()[-3000:]
    assert f"trial {stalled.number} was failed as stale while it ran; its result is kept as trial" in owner.output()
    trials = faultkit.journal_trials(journal, "s")
    (kept,) = [t for t in trials if t.user_attrs.get("late_result_of") == stalled.number]
    assert kept.state == TrialState.COMPLETE and kept.params == stalled.params and kept.values[0] > 0
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == stalled.number]
    assert retry.state == TrialState.PRUNED and retry.user_attrs["duplicate_of"] == kept.number  # not run twice


def test_a_torn_last_journal_line_is_dropped_and_said(tmp_path, capsys):
    """A power loss mid-write leaves half a record at the end of the journal. The next worker
    drops it (saying what) instead of appending onto it, which made the journal unreadable."""
    study, objective, cfg, storage = setup_study(tmp_path, n_trials=4)
    run(study, objective, 4, progress=None)
    journal = Path(storage)
    data = journal.read_bytes()
    torn = data[: data.rstrip(b"\n").rfind(b"\n") + 1 + 25]  # the last record cut after 25 bytes
    journal.write_bytes(torn)
    kept = {t.number: t.values for t in faultkit.journal_trials(journal, "tiny-20") if t.state == TrialState.COMPLETE}
    study, objective, _, _ = setup_study(tmp_path, storage=storage, n_trials=6)
    assert run(study, objective, 6, progress=None) == 6
    err = capsys.readouterr().err
    assert f"journal {journal}: dropped its torn last line (25 bytes" in err
    assert data[len(torn) - 25:len(torn)].decode() in err  # what was dropped
    after = {t.number: t for t in faultkit.journal_trials(journal, "tiny-20")}
    assert all(after[n].state == TrialState.COMPLETE and after[n].values == v for n, v in kept.items())
    assert export([(storage, "tiny-20")], "tiny", tmp_path / "out")["utrc-searched"].exists()


def test_a_damaged_journal_line_is_named(tmp_path):
    """A torn line that a program without the repair appended onto: a clear error naming the line."""
    study, objective, cfg, storage = setup_study(tmp_path, n_trials=2)
    run(study, objective, 2, progress=None)
    lines = Path(storage).read_bytes().splitlines(keepends=True)
    lines[5] = lines[5][:10] + lines[6]
    Path(storage).write_bytes(b"".join(lines))
    with pytest.raises(StudyError, match=rf"journal {storage}: line 6 is a damaged record .* delete the torn start"):
        setup_study(tmp_path, storage=storage)


def test_workers_with_the_same_seed_propose_different_trials(tmp_path):
    """Two workers on one study with the default seed, alternating trials: every sampled point differs
    (each trial reseeds the sampler with its own number); one worker alone is reproducible."""
    _, _, _, storage = setup_study(tmp_path, n_trials=20, seed=0)  # the study exists; two workers start on it
    study, objective, _, _ = setup_study(tmp_path, storage=storage, n_trials=20, seed=0)
    other, other_objective, _, _ = setup_study(tmp_path, storage=storage, n_trials=20, seed=0)
    for _ in range(8):
        run(study, objective, len(study.get_trials(states=(TrialState.COMPLETE,))) + 1, progress=None)
        run(other, other_objective, len(other.get_trials(states=(TrialState.COMPLETE,))) + 1, progress=None)
    sampled = [tuple(sorted(t.params.items())) for t in study.trials if t.user_attrs.get("origin") not in SEEDED]
    assert len(sampled) >= 12 and len(set(sampled)) == len(sampled)
    again, again_objective, _, _ = setup_study(tmp_path / "again", n_trials=16, seed=0)
    alone, alone_objective, _, _ = setup_study(tmp_path / "alone", n_trials=16, seed=0)
    run(again, again_objective, 6, progress=None)
    run(alone, alone_objective, 6, progress=None)
    assert [t.params for t in again.trials] == [t.params for t in alone.trials]
