"""Parallel search on a real PostgreSQL server: several `python -m search.run` workers on one Optuna study in
an RDB storage (`postgresql+psycopg2://...`), as `search.storage` configures it for the workflow.

The test starts its own server (Debian's postgresql: initdb in a temporary directory, pg_ctl on a free
port, trust authentication on 127.0.0.1) and stops it after. Like the workflow's `search_init` job, one
process creates the study before the workers start: workers that start at once on a fresh database race
to create Optuna's tables. Skipped where PostgreSQL is not installed, unless UTRC_REQUIRE_POSTGRES=1
(set by .ci/run), which makes a missing server a failure.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_workflow import ROOT, tiny_model  # noqa: F401 (tiny_model is a fixture)

from search.storage import HEARTBEAT

REQUIRED = os.environ.get("UTRC_REQUIRE_POSTGRES") == "1"
WORKERS, QUEUED, N_TRIALS = 3, 6, 14


def postgres_bin() -> Path | None:
    """The newest installed server's binaries (Debian: /usr/lib/postgresql/VERSION/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run `command` as the `postgres` user."""
    if os.geteuid() != 0:
        return command
    return ["su", "postgres", "-s", "/bin/sh", "-c", subprocess.list2cmdline(command)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A running PostgreSQL server with an empty database `utrc`; its SQLAlchemy URL."""
    bindir = postgres_bin()
    if bindir is None:
        message = "PostgreSQL is not installed (initdb, pg_ctl; Debian: apt-get install postgresql)"
        if REQUIRED:
            pytest.fail(f"UTRC_REQUIRE_POSTGRES=1 but {message}")
        pytest.skip(message)
    data = Path(tempfile.mkdtemp(prefix="utrc-postgres-"))  # under /tmp: the server's user must reach it
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
    port = free_port()
    log = data / "server.log"

    def run(*command: str, timeout: float = 120):
        proc = subprocess.run(as_server_user(list(command)), capture_output=True, text=True, timeout=timeout,
                              check=False)
        assert proc.returncode == 0, f"{command[0]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"

    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(log), "-w", "-o",
        f"-k {data} -c listen_addresses=127.0.0.1 -p {port}", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "utrc")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/utrc"
    finally:
        subprocess.run(as_server_user([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(data, ignore_errors=True)


def search_command(model: Path, storage: str, n_trials: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "search.run", "--model", str(model), "--budget", "0.15", "--storage", storage,
            "--study-name", "tiny-flops0.15", "--n-trials", str(n_trials), "--seed", str(seed), "--text", "demo:24",
            "--dev-sequences", "4", "--dev-length", "64", "--score-last", "4", "--batch-size", "4",
            "--seq-len", "512", "--threads", "1"]


def test_parallel_workers_share_one_study_on_postgres(postgres_url, tiny_model, tmp_path):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # one process creates the study and runs its first trial (the workflow's search_init) ...
    init = subprocess.run(search_command(tiny_model, postgres_url, 1, 0), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
    # queued trials (as the study's own first trials are queued) that the workers must split between them
    study = optuna.load_study(study_name="tiny-flops0.15", storage=postgres_url)
    first = study.trials[0].params
    weights = sorted(name for name in first if name.startswith("w_"))
    queued = {f"queued-{k}": {**first, **{w: round(0.1 + 0.13 * k + 0.02 * i, 4) for i, w in enumerate(weights)}}
              for k in range(QUEUED)}
    for origin, params in queued.items():
        study.enqueue_trial(params, user_attrs={"origin": origin})
    # ... then the workers start at once, each with its own seed, until the study holds N_TRIALS COMPLETE trials
    workers = [subprocess.Popen(search_command(tiny_model, postgres_url, N_TRIALS, 1000 * w), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for w in range(1, WORKERS + 1)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name="tiny-flops0.15", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicate, no missing number
    assert {t.state for t in trials} == {TrialState.COMPLETE}  # nothing failed, left running or left waiting
    # every worker stops once the study holds N_TRIALS; at most one trial in flight per other worker on top
    assert N_TRIALS <= len(trials) <= N_TRIALS + WORKERS - 1
    # each queued trial ran exactly once, with its own parameters (two workers never took the same one)
    origins = [t.user_attrs["origin"] for t in trials if "origin" in t.user_attrs]
    assert len(origins) == len(set(origins)) and set(queued) <= set(origins), origins
    for t in trials:
        if t.user_attrs.get("origin") in queued:
            assert t.params == pytest.approx(queued[t.user_attrs["origin"]]), t.number
    # and the work was shared: every worker process ran trials of its own, each trial names its owner (the
    # heartbeat's trial system attr, search/storage.py)
    owners = {(t.system_attrs[HEARTBEAT]["worker"]["host"], t.system_attrs[HEARTBEAT]["worker"]["pid"]) for t in trials}
    assert len(owners) == WORKERS + 1, owners
    assert study.metric_names == ["dev KL"]

    # the study exports from the server like from a journal file
    out = tmp_path / "export"
    export = subprocess.run([sys.executable, "-m", "search.export", "--study", postgres_url, "tiny-flops0.15",
                             "--name", "tiny", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert (out / "policies" / "tiny_utrc-searched_flops0.15.json").is_file()
