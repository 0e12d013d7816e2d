"""search: progress lines name the objective and show the best so far; the study stores the
objectives' names (optuna-dashboard shows them instead of "Objective 0")."""

import re

import pytest
from optuna.trial import TrialState
from test_search import setup_study

from search.space import SearchSpace, default_layers
from search.study import load_study, run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_progress_names_the_metric_and_the_best_so_far(tmp_path):
    study, objective, _, storage = setup_study(tmp_path, n_trials=12)
    lines = []
    assert run(study, objective, 12, progress=lines.append) == 12

    assert [line.split(" ", 2)[1] for line in lines] == ["0", "10"]  # every 10th trial
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    pattern = r"trial 10 COMPLETE: dev KL (\S+); best so far: trial (\d+), dev KL (\S+) \(11/12 complete\)"
    value, best_number, best_value = re.fullmatch(pattern, lines[1]).groups()
    first_eleven = complete[:11]
    best = min(first_eleven, key=lambda t: t.values[0])  # the best when trial 10 had just finished
    assert float(value) == pytest.approx(complete[10].values[0], abs=5e-5)
    assert (int(best_number), float(best_value)) == (best.number, pytest.approx(best.values[0], abs=5e-5))

    # the names are in the storage: a process that opens the study later (optuna-dashboard) sees them
    assert load_study(storage, "tiny-20").metric_names == ["dev KL"]


def test_two_objectives_are_named_both(tmp_path):
    space = SearchSpace(layers=default_layers(8), max_target=0.35)
    setup_study(tmp_path, n_trials=1, space=space, multi_objective=True, dev_error_weight=4)
    storage = str(tmp_path / "study.journal")
    assert load_study(storage, "tiny-20").metric_names == ["dev KL", "nominal FLOPs reduction"]
