"""Fault injection into the search: workers SIGKILLed or interrupted (SIGINT, as Ctrl-C) at random
moments, alone or beside a second worker on the same study, and journals torn at random bytes (a
power loss mid-write). Seeded and bounded: `SEED` fixes every moment and byte, `ROUNDS` / `CUTS` the
counts. Each test asserts that nothing finished is lost, that nothing partial is left, that every
interruption says so, and that the study then completes with each seeded trial evaluated once."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

import faultkit
import optuna
from faultkit import workers_fixture  # noqa: F401 (the `workers` fixture)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_search import search_argv

from search.export import export
from search.storage import lineage, open_storage
from utrc import Policy

SEED = 20261130
ROUNDS = 30  # rounds of one or two workers, each worker stopped by one signal
CUTS = 160  # torn journals
COMPLETE = TrialState.COMPLETE


def test_workers_killed_at_random_moments_lose_nothing(tmp_path, workers):
    rng = random.Random(SEED)
    journal = tmp_path / "study.journal"
    finished: dict[int, list[float]] = {}  # every COMPLETE trial seen so far -> its values
    faults = 0
    for r in range(ROUNDS):
        plan = [(rng.uniform(0.0, 3.0), rng.choice((signal.SIGKILL, signal.SIGINT)))  # (moment, signal) per worker
                for _ in range(rng.choice((1, 2, 2)))]
        children = [workers.start("search.run:main", search_argv(journal, 100_000), f"round{r}-worker{i}")
                    for i in range(len(plan))]
        start = time.monotonic()
        for (moment, sig), child in sorted(zip(plan, children, strict=True), key=lambda pair: pair[0][0]):
            faults += child.signal_after(max(0.0, moment - (time.monotonic() - start)), sig)
        for (_, sig), child in zip(plan, children, strict=True):
            code = child.wait()
            if sig == signal.SIGKILL:
                assert code == -signal.SIGKILL, child.output()[-3000:]
            else:  # Ctrl-C: a message that says what happened and what to do, status 130
                assert code == 130 and "interrupted: the study's COMPLETE trials are kept" in child.output(), \
                    child.output()[-3000:]
        trials = faultkit.journal_trials(journal, "s")
        lost = [n for n, values in finished.items() if trials[n].state != COMPLETE or trials[n].values != values]
        assert not lost, f"round {r}: finished trials {lost} were lost"
        finished.update({t.number: t.values for t in trials if t.state == COMPLETE})
        assert not [p for p in faultkit.partial_files(tmp_path) if p.suffix == ".tmp"]

    final = workers.start("search.run:main", search_argv(journal, len(finished) + 4), "final")
    assert final.wait() == 0, final.output()[-3000:]
    trials = faultkit.journal_trials(journal, "s")
    lost = [n for n, values in finished.items() if trials[n].state != COMPLETE or trials[n].values != values]
    partial = faultkit.partial_files(tmp_path)
    faultkit.record("search: workers killed or interrupted at random moments", faults=faults, trials_lost=len(lost),
                    partial_outputs=len(partial), rounds=ROUNDS,
                    complete_trials=sum(t.state == COMPLETE for t in trials))
    assert not lost and not partial, (lost, partial)
    assert faults >= ROUNDS  # the signals landed on running workers
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    evaluated = Counter(lineage(t) for t in trials if t.state == COMPLETE)
    assert evaluated["utrc-paper"] == evaluated["uniform"] == 1 and max(evaluated.values()) == 1  # each point once
    paths = export([(str(journal), "s")], "s", tmp_path / "out")
    assert Policy.load(paths["utrc-paper"]).measured["dev_kl"] > 0


def test_journals_torn_at_random_bytes_keep_every_whole_record(tmp_path, workers, capsys):
    made = workers.start("search.run:main", search_argv(tmp_path / "study.journal", 6), "make")
    assert made.wait() == 0, made.output()[-3000:]
    data = (tmp_path / "study.journal").read_bytes()
    rng = random.Random(SEED)
    cuts = sorted(rng.sample(range(1, len(data)), CUTS))
    torn = 0
    for cut in cuts:
        whole = data[: data.rfind(b"\n", 0, cut) + 1]  # the records written before the power loss
        journal = tmp_path / "cut" / "study.journal"
        journal.parent.mkdir(exist_ok=True)
        journal.write_bytes(data[:cut])
        before = _trials(whole, tmp_path / "whole.journal")
        study = optuna.create_study(storage=open_storage(str(journal)), study_name="s", load_if_exists=True)
        study.set_user_attr("after the cut", cut)  # the next worker's first writes
        err = capsys.readouterr().err
        repaired = journal.read_bytes()
        assert repaired.startswith(whole) and repaired.endswith(b"\n")
        assert _trials(repaired, tmp_path / "again.journal") == before  # plain Optuna reads it, every record kept
        if cut > len(whole):
            torn += 1
            assert f"dropped its torn last line ({cut - len(whole)} bytes" in err, err
        else:
            assert "torn" not in err
    faultkit.record("search: journals torn at random bytes", faults=torn, trials_lost=0, partial_outputs=0)
    assert torn >= CUTS * 0.9


def _trials(data: bytes, path) -> list[tuple]:
    path.write_bytes(data)
    try:
        study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    except KeyError:  # cut before the study was created
        return []
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.get_trials(deepcopy=False)]
