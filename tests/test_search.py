"""search: the space, cached objective, Optuna study (journal / RDB storage, resume), export."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import VOCAB, tiny_model
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_calibrate import write_checkpoint

from search import run as run_cli
from search.calibrate import CalibrationConfig, calibrate
from search.export import export, pareto_trials
from search.objective import DenseReference
from search.space import Budget, SearchSpace, SpaceError, check_reachable, default_layers, fit_to_budget
from search.study import (Objective, StudyConfig, StudyError, create_or_resume, recover_stale_trials,
                          register_worker, run, worker_id)
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
    policy = Policy(method="utrc", model=spec, layers={2: LayerSpec(0.6), 4: LayerSpec(0.75)}, residual_strategy="hybrid")
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
        for row, n in zip(x, lengths.tolist()):
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
        better = trials[(trials.quality_loss <= row.quality_loss) & (trials.nominal_reduction >= row.nominal_reduction)
                        & ((trials.quality_loss < row.quality_loss) | (trials.nominal_reduction > row.nominal_reduction))]
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
        run(study, Objective(cfg, DenseReference(model, dev_ids(), score_last=4, start_layer=2), spec), 5, progress=None)
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


def test_stale_running_trials_are_failed_and_retried(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(storage=storage, study_name="s")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = {"host": worker_id()["host"], "pid": gone.pid, "start": None}
    study.set_user_attr(f"worker {dead['host']} {dead['pid']} None", dead)
    orphan = study.ask()  # killed before its objective recorded an owner
    orphan.suggest_float("x", 0, 1)
    mine = study.ask()
    mine.set_user_attr("worker", worker_id())  # this live process
    theirs = study.ask()
    theirs.set_user_attr("worker", dead)
    theirs.suggest_float("x", 0, 1)
    assert recover_stale_trials(study, storage, stale_after=900) == [orphan.number, theirs.number]
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == states[theirs.number] == TrialState.FAIL
    assert states[mine.number] == TrialState.RUNNING
    retried = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.user_attrs["retry_of"] for t in retried] == [orphan.number, theirs.number]
    assert retried[1].system_attrs["fixed_params"] == {"x": theirs.params["x"]}
    register_worker(study)  # a live worker now: an ownerless RUNNING trial might be its own
    fresh = study.ask()
    assert recover_stale_trials(study, storage, stale_after=900) == []
    assert recover_stale_trials(study, storage, stale_after=0) == [mine.number, fresh.number]  # the timeout


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
