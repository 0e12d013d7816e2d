"""Real worker processes for the fault tests, started fast, and what they leave behind.

A Python process that imports torch, transformers, Optuna and lm-eval takes 10-30 s to start on a
busy 2-core CI machine, so a suite of hundreds of kills cannot start each victim afresh. Every
process here is forked from one multiprocessing forkserver that imported those packages once
(tests/faultkit_server.py); the child then runs a real command-line entry point (`search.run`, `search.calibrate`,
`utrc.evaluation`, `reports.render`, ...) exactly as `python -m` would, its stdout and stderr in a
log file, in its own process with its own pid, and the test stops it with a real signal.

Also here: `partial_files` (what no finished run may leave: temporary files of the atomic writer,
journal lock files and their rename leftovers) and `journal_trials` (a study's trials read from a
journal file without writing to it).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["faultkit", "faultkit_server"])  # the server imports and warms up once


@dataclass
class Child:
    """A running entry point: `signal(sig)` / `stop()` it, `wait()` for it, read its `output()`."""

    process: multiprocessing.process.BaseProcess
    log: Path
    ready: object  # an Event the child sets once its signal handlers are in place

    def signal_after(self, delay: float, sig: int) -> bool:
        """Wait until it is ready, then `delay` seconds, then send `sig` -> True if it still ran."""
        if not self.ready.wait(60):
            raise TimeoutError(f"{self.log.name}: never started:\n{self.output()[-3000:]}")
        self.process.join(delay)
        return self.signal(sig)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int) -> bool:
        """Send `sig`; False when the process had already ended."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return self.process.exitcode is None

    def stop(self) -> bool:
        """SIGSTOP it and wait until it is stopped (the signal is delivered asynchronously); False
        when it had already ended."""
        if not self.signal(signal.SIGSTOP):
            return False
        return wait_for(lambda: _state(self.pid) in ("T", "t", None), timeout=10, every=0.001)

    def wait(self, timeout: float = 120) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise TimeoutError(f"{self.log.name}: still running after {timeout} s:\n{self.output()[-3000:]}")
        return self.process.exitcode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Workers:
    """Starts entry points ("package.module:function", called with argv) in forked processes, each
    logging to `folder`/<name>.log; `close()` kills (SIGKILL, after SIGCONT) whatever still runs,
    so a failing test leaves no stopped or running process behind. The `workers` fixture."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.children: list[Child] = []

    def start(self, entry: str, argv: list, name: str, env: dict | None = None) -> Child:
        _ensure_server()
        log = self.folder / f"{name}.log"
        ready = CONTEXT.Event()
        process = CONTEXT.Process(target=_run, args=(entry, [str(a) for a in argv], str(log), env or {}, ready),
                                  daemon=True)
        process.start()
        child = Child(process, log, ready)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            if child.process.exitcode is None:
                child.signal(signal.SIGKILL)
                child.process.join(10)


@pytest.fixture(name="workers")
def workers_fixture(tmp_path):
    pool = Workers(tmp_path)
    yield pool
    pool.close()


def _ensure_server() -> None:
    # Python 3.11's forkserver ignores the parent's sys.path: give it the repository and tests/
    # through PYTHONPATH, for its start only.
    before = os.environ.get("PYTHONPATH")
    here = Path(__file__).resolve().parent
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), str(here.parent), before]))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def _run(entry: str, argv: list[str], log: str, env: dict, ready) -> None:
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt, as in a shell
    ready.set()
    import torch

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)  # as search.run's `python -m` entry does
    module, function = entry.split(":")
    getattr(importlib.import_module(module), function)(argv)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def partial_files(*folders: Path) -> list[Path]:
    """Files a finished or killed run must not leave: the atomic writer's temporary files
    (``.<name>.<random>.tmp``), journal lock files and their ``.rename`` leftovers."""
    found = []
    for folder in folders:
        for path in Path(folder).rglob("*"):
            name = path.name
            if name.endswith((".tmp", ".lock", ".rename", ".partial")) or ".rename" in name:
                found.append(path)
    return found


def journal_trials(path: Path, study_name: str) -> list:
    """The trials of `study_name` in the journal at `path` ([] before the study exists), read
    through Optuna's own reader: nothing is written, no lock is taken."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not Path(path).exists():
        return []
    storage = JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def record(test: str, **counts) -> None:
    """Add a test's counts (faults injected, bad inputs tried, trials lost, partial outputs left) to
    the reliability log that benchmarks/reliability.py collects, when it runs the suite."""
    path = os.environ.get("UTRC_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **counts}) + "\n")


def wait_for(condition, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False
