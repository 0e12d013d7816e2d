"""Fault injection into calibration, evaluation and the report: each stage's real entry point is
SIGKILLed or interrupted (SIGINT) at a random moment of its run, many times, each time into a fresh
output folder. Seeded (`SEED`) and bounded (`KILLS`). Each run must leave every output it wrote
whole and equal to an uninterrupted run's, or no output at all, and nothing partial (no temporary
files); an interrupted run says so; and after all the kills a clean run still works."""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import time
from pathlib import Path

import faultkit
import pandas as pd
from faultkit import workers_fixture  # noqa: F401 (the `workers` fixture)
from test_report import write_run

from utrc import ModelSpec, Policy
from utrc.loading import DEMO_DIR

SEED = 20261130
KILLS = {"calibration": 15, "evaluation": 10, "report": 25}


def kill_at_random_moments(workers, stage, entry, argv_for, check, tmp_path, env=None):
    """Run `entry` once cleanly (its duration sets the range of the moments), then KILLS[stage]
    times, each stopped by SIGKILL or SIGINT at a moment drawn uniformly from [0, duration);
    `check(out_folder, finished)` checks each run's outputs -> the number of signals that landed."""
    rng = random.Random(f"{SEED} {stage}")
    clean = workers.start(entry, argv_for(tmp_path / "reference"), f"{stage}-reference", env)
    assert clean.ready.wait(120)
    start = time.monotonic()
    assert clean.wait() == 0, clean.output()[-3000:]
    duration = time.monotonic() - start
    landed = partial = 0
    for i in range(KILLS[stage]):
        out = tmp_path / f"run{i}"
        sig = rng.choice((signal.SIGKILL, signal.SIGINT))
        child = workers.start(entry, argv_for(out), f"{stage}-{i}", env)
        hit = child.signal_after(rng.uniform(0.0, duration), sig)
        code = child.wait()
        landed += hit
        if code != 0:
            assert hit, child.output()[-3000:]
            if sig == signal.SIGKILL:
                assert code == -signal.SIGKILL, child.output()[-3000:]
            else:  # Ctrl-C: named, with the status of an interrupted program or Python's own
                assert code in (1, 130) and ("KeyboardInterrupt" in child.output() or "interrupted" in child.output())
        left = faultkit.partial_files(out) if out.exists() else []
        partial += len(left)
        assert not left, left
        check(out, finished=code == 0)
    again = workers.start(entry, argv_for(tmp_path / "again"), f"{stage}-again", env)
    assert again.wait() == 0, again.output()[-3000:]
    check(tmp_path / "again", finished=True)
    faultkit.record(f"{stage}: killed or interrupted at random moments", faults=landed, partial_outputs=partial,
                    runs=KILLS[stage], clean_run_seconds=round(duration, 2))
    assert landed >= KILLS[stage] // 2
    return landed


def test_calibration(tmp_path, workers):
    def argv(out):
        return ["--model", "demo:mamba2", "--text", "demo:64", "--n-sequences", "4", "--seq-len", "64", "--score-last",
                "4", "--keeps", "0.8", "--batch-size", "4", "--threads", "1", "--out-table", out / "table.parquet",
                "--out-summary", out / "summary.json"]

    def check(out, finished):
        table, summary = out / "table.parquet", out / "summary.json"
        if finished:
            assert table.exists() and summary.exists()
        if table.exists():
            pd.testing.assert_frame_equal(pd.read_parquet(table), reference)
        if summary.exists():  # written last, naming the table it describes
            doc = json.loads(summary.read_text())
            assert doc["format"] == "utrc-calibration/1" and doc["hash"] == reference_hash
            assert doc["table"]["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()

    reference = reference_hash = None

    def check_first(out, finished):
        nonlocal reference, reference_hash
        if reference is None:
            reference = pd.read_parquet(tmp_path / "reference" / "table.parquet")
            reference_hash = json.loads((tmp_path / "reference" / "summary.json").read_text())["hash"]
        check(out, finished)

    kill_at_random_moments(workers, "calibration", "search.calibrate:main", argv, check_first, tmp_path)


def test_evaluation(tmp_path, workers):
    config = json.loads((DEMO_DIR / "mamba2" / "config.json").read_text())
    spec = ModelSpec("demo:mamba2", "mamba2", config["num_hidden_layers"], config["hidden_size"])
    policy = Policy.paper(spec, 0.8).save(tmp_path / "policy.json")
    env = {"UTRC_CACHE": str(tmp_path / "cache")}  # the demo tasks' data and lm-eval's dataset cache

    def argv(out):
        return ["--model", "demo:mamba2", "--policy", policy, "--tasks", "demo_piqa", "--limit", "4", "--batch-size",
                "4", "--threads", "1", "--out", out / "results.json"]

    def check(out, finished):
        results = out / "results.json"
        assert results.exists() or not finished
        if results.exists():
            doc, reference = (json.loads(p.read_text()) for p in (results, tmp_path / "reference" / "results.json"))
            assert doc["format"] == "utrc-results/1"
            scores = {t: v["score"] for t, v in doc["tasks"].items()}
            assert scores == {t: v["score"] for t, v in reference["tasks"].items()}

    kill_at_random_moments(workers, "evaluation", "utrc.evaluation:main", argv, check, tmp_path, env)
    assert not faultkit.partial_files(tmp_path / "cache")


def test_report(tmp_path, workers):
    manifest = write_run(tmp_path / "run")

    def argv(out):
        return ["page", "--manifest", manifest, "--root", tmp_path / "run", "--out", out / "page.html"]

    def check(out, finished):
        page = out / "page.html"
        assert page.exists() or not finished
        if page.exists():
            assert _undated(page) == _undated(tmp_path / "reference" / "page.html")

    kill_at_random_moments(workers, "report", "reports.render:main", argv, check, tmp_path)


def _undated(page: Path) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "DATE", page.read_text())
