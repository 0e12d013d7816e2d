"""search: budget projection, cached objective, Optuna study (journal / RDB storage, resume), export."""

import json
import os
import random
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
from search.export import baselines, export, pareto_trials
from search.objective import DenseReference
from search.space import (Budget, SearchSpace, SpaceError, check_reachable, default_layers, fit_to_budget, paper_weights,
                          project)
from search.study import (Objective, StudyConfig, StudyError, create_or_resume, recover_stale_trials,
                          register_worker, run, worker_id)
from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply, estimate_flops
from utrc.policy import paper_layers
from utrc.shapes import PAPER_SHAPES

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


# --- projection onto the budget -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["state-spaces/mamba2-2.7b", "state-spaces/mamba-2.8b", "state-spaces/mamba2-130m"])
def test_projection_lands_on_the_budget_from_above(name):
    shape = PAPER_SHAPES[name]
    spec = ModelSpec.of(shape, name)
    layers = default_layers(shape.n_layer)
    rng = random.Random(0)
    draws = [{l: rng.random() for l in layers} for _ in range(6)]
    draws.append({l: (1.0 if l == layers[3] else 0.0) for l in layers})  # one block cannot carry 30 %: phase 2
    draws.append({l: 0.0 for l in layers})  # no preference: uniform
    for target in (0.1, 0.2, 0.3):
        for i, weights in enumerate(draws):
            p = project(shape, Policy(method="utrc", model=spec), weights, Budget(target))
            est = estimate_flops(shape, p.policy, 2048, 1)["reduction"]
            assert est == p.reduction >= target
            keeps = [s.keep for s in p.policy.layers.values()]
            assert all(0.5 <= k < 1 and abs(k * 1000 - round(k * 1000)) < 1e-6 for k in keeps)
            if i < 6:  # distinct weights: blocks cross grid points one at a time
                assert p.reduction - target < 0.002
            if i == len(draws) - 1:  # equal weights, equal keeps
                assert len(set(keeps)) == 1 and len(keeps) == len(layers)


def test_paper_weights_give_the_smallest_grid_keep_on_budget():
    shape = PAPER_SHAPES["state-spaces/mamba2-2.7b"]
    spec = ModelSpec.of(shape)
    space = SearchSpace(layers=default_layers(64))
    for target in (0.1, 0.2, 0.3):
        p = project(shape, Policy(method="utrc", model=spec), paper_weights(space, 64), Budget(target))
        assert set(p.policy.layers) == set(paper_layers(64))
        (keep,) = {s.keep for s in p.policy.layers.values()}
        looser = estimate_flops(shape, Policy.paper(spec, round(keep + 0.001, 3)))["reduction"]
        assert p.reduction >= target > looser  # one grid step more keep misses the budget
    assert keep == 0.906  # 30 %: the largest grid keep on budget (the released code uses 0.905)


def test_unreachable_budget_and_bad_layers_stop_before_any_trial(tmp_path):
    model = tiny_model("mamba", n_layer=6)
    shape, spec = ModelShape.of(model), ModelSpec.of(ModelShape.of(model))
    journal = tmp_path / "s.journal"
    space = SearchSpace(layers=(4,))
    with pytest.raises(SpaceError, match="unreachable"):
        create_or_resume(str(journal), "s", StudyConfig(Budget(0.3, seq_len=256), space), shape, spec)
    with pytest.raises(SpaceError, match=r"\[6, 9\] are outside the model: it has 6 blocks"):
        create_or_resume(str(journal), "s", StudyConfig(Budget(0.1), SearchSpace(layers=(2, 6, 9))), shape, spec)
    with pytest.raises(SpaceError, match="budget: expected a FLOPs reduction in"):
        Budget(1.5)
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
    skipped = {}
    found = baselines(shape, spec, Budget(0.45, seq_len=256), 0.001, skipped)
    assert set(found) == {"evit", "dense"} and set(skipped) == {"paper", "tome"}  # never written below budget


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
    assert [t.user_attrs["origin"] for t in study.trials[:3]] == ["paper", "calibration", "uniform"]
    assert "bisected" in study.user_attrs["feasibility"]
    assert run(study, objective, 24, progress=None) == 24
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(t.user_attrs["nominal_reduction"] >= 0.2 for t in complete)
    paper = complete[0]
    assert {s["keep"] for s in paper.user_attrs["policy"]["layers"].values()} == {0.765}
    assert study.best_value <= paper.value
    assert len({t.params["w_4"] for t in complete[3:]}) == 21  # sampled, not replayed

    paths = export(storage, "tiny-20", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "policies").iterdir()) == [
        "dense-0.2.json", "evit-0.2.json", "paper-0.2.json", "searched-0.2.json", "tome-0.2.json"]
    searched = Policy.load(paths["searched"])
    assert searched.provenance["trial"] == study.best_trial.number
    assert searched.provenance["objective"]["quality_loss"] == study.best_value
    assert searched.provenance["calibration"]["hash"] == calibration["hash"]
    assert searched.measured["dev_kl"] == study.best_value
    shape = ModelShape.of(model)
    for method in ("searched", "paper", "evit", "tome"):
        p = Policy.load(paths[method])
        assert p.estimates["reduction"] == estimate_flops(shape, p, 256, 1)["reduction"] >= 0.2
        assert p.method == {"searched": "utrc", "paper": "utrc"}.get(method, method)
    assert Policy.load(paths["paper"]).layers == Policy.from_dict(paper.user_attrs["policy"]).layers
    assert Policy.load(paths["paper"]).measured["dev_kl"] == paper.value
    assert Policy.load(paths["dense"]).method == "dense"
    trials = pd.read_csv(paths["trials"])
    assert len(trials) == len(study.trials) and (trials.nominal_reduction >= 0.2).all()
    pareto = pd.read_csv(paths["pareto"])
    assert study.best_trial.number in set(pareto.number)
    for _, row in pareto.iterrows():  # nobody dominates a front member
        better = trials[(trials.quality_loss <= row.quality_loss) & (trials.nominal_reduction >= row.nominal_reduction)
                        & ((trials.quality_loss < row.quality_loss) | (trials.nominal_reduction > row.nominal_reduction))]
        assert better.empty


def test_multi_objective_mode_gives_a_pareto_front_above_the_budget(tmp_path):
    space = SearchSpace(layers=default_layers(8), max_target=0.35)
    study, objective, _, storage = setup_study(tmp_path, n_trials=16, space=space, multi_objective=True)
    run(study, objective, 16, progress=None)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(0.2 <= t.values[1] and t.params.get("target", 0.2) <= 0.35 for t in complete)
    assert {t.number for t in study.best_trials} == {t.number for t in pareto_trials(study)}
    assert max(t.values[1] for t in complete) > 0.3  # the front spans the FLOPs range
    assert export(storage, "tiny-20", tmp_path / "out")["pareto"].exists()


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
    assert study.trials[0].user_attrs["origin"] == "paper"
    assert Policy.load(export(storage, "tiny-20", tmp_path / "out")["searched"]).method == "utrc"


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
