"""Where a study lives: an Optuna journal file or an RDB, each with a heartbeat that tells live
workers from gone ones.

`open_storage(path)` is Optuna's `JournalStorage` on its `JournalFileBackend`, with three
additions for workers that are killed at any moment:

* **Heartbeat.** Optuna 5 gives only `RDBStorage` a heartbeat; `HeartbeatJournalStorage`
  implements Optuna's heartbeat interface (`BaseHeartbeat`) for the journal, so that Optuna's own
  trial loop records a heartbeat every `heartbeat_interval` seconds while a trial runs (trial
  system attr ``heartbeat``: the time and the worker's host, pid and process start time) and
  calls `fail_stale_trials` before each trial. A RUNNING trial is stale only when its owner is
  really gone: a process on this host is asked directly (its pid and start time: a reused pid is
  not mistaken for it), so a live owner is never failed however long its trial runs; an owner on
  another host is gone when its heartbeat is older than `stale_after` seconds; a trial killed
  before its first heartbeat is stale when every other worker registered with the study (study
  user attrs ``worker …``) is gone, by the same two rules. A stale trial is
  failed and `retry_stale_trial` enqueues its parameters again (the same callback serves the RDB
  storage).
* **Torn last line.** A process killed (or a machine losing power) in the middle of a journal
  write leaves a last line without its newline; Optuna's reader skips it, but its next append
  would glue a record onto it and make the file unreadable. Every append here first drops such
  a line, under the journal's lock, and says on stderr what was dropped.
* **Lock of a killed writer.** The journal's lock is Optuna's symlink lock file
  (``<journal>.lock``, so plain Optuna processes and these exclude each other); its link target
  names the holder, so a lock left by a killed process on this host is broken at once instead
  of after Optuna's 30-second grace period (which still applies to holders on other hosts).

A URL (``sqlite:///…``, ``postgresql://…``) is an `RDBStorage` with Optuna's heartbeat and the
same retry callback; its heartbeat also writes the trial system attr ``heartbeat``, so that a
trial names the worker that ran it whichever storage holds the study.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna's trial loop checks for
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

HEARTBEAT = "heartbeat"  # trial system attr: {"time": unix seconds, "worker": worker_id()}
LOCK_GRACE = 30.0  # seconds before a lock held by another host (or a plain Optuna process) is broken
SEEDED = ("utrc-paper", "calibration", "uniform")  # enqueued first trials, each evaluated exactly once per study


class StorageError(ValueError):
    """A storage that cannot be opened or read; the message names it and what to do."""


def open_storage(storage: str, stale_after: float = 900.0):
    """The storage at `storage`: a journal file path or an RDB URL, with the heartbeat above."""
    interval = heartbeat_interval(stale_after)
    if "://" in storage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna calls its heartbeat experimental
            return OwnerRDBStorage(storage, heartbeat_interval=interval, grace_period=max(1, round(stale_after)),
                                   heartbeat_stale_trial_callback=retry_stale_trial)
    folder = os.path.dirname(os.path.abspath(storage))
    try:
        os.makedirs(folder, exist_ok=True)
        backend = RepairingJournalFile(storage)
    except OSError as e:
        raise StorageError(f"storage {storage}: cannot create or open the journal ({e.strerror}: {e.filename}); "
                           "give a file path in a writable folder, or an RDB URL") from None
    try:
        return HeartbeatJournalStorage(backend, interval, stale_after)  # reads the whole journal
    except ValueError as e:  # json's and Optuna's decoding errors
        raise StorageError(f"journal {storage}: line {_first_damaged_line(storage)} is a damaged record ({e}). A "
                           "process killed mid-write left a torn line and a program without the repair described "
                           "in search/storage.py appended a record to it: delete the torn start of that line (up to "
                           "its last '{\"op_code\"') and run again") from None


def heartbeat_interval(stale_after: float) -> int:
    """Seconds between heartbeats: a minute, or often enough that `stale_after` spans several."""
    return max(1, min(60, int(stale_after / 4)))


# --- workers ----------------------------------------------------------------------------------


def worker_id() -> dict:
    """This process: host, pid, and its start time (so that a reused pid is not mistaken for it)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid)}


def worker_gone(worker: dict | None) -> bool:
    """True when `worker` was a process on this host that no longer runs; False when it runs or
    lives on another host (only its heartbeat can tell)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process runs under that pid
    return worker.get("start") is not None and _start_ticks(pid) != worker.get("start")


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


# --- stale trials -----------------------------------------------------------------------------


def lineage(trial) -> str:
    """What a trial evaluates: a seeded trial's origin (paper, calibration, uniform), or for a
    sampled point the number of the trial that first drew it (retries and late results keep it)."""
    origin = trial.user_attrs.get("origin", "sampled")
    return origin if origin in SEEDED else trial.user_attrs.get("lineage", f"trial {trial.number}")


def retry_stale_trial(study: optuna.Study, trial) -> None:
    """Heartbeat callback of both storages: enqueue a trial failed as stale again (same parameters,
    origin and lineage; `retry_of` names it)."""
    params = {**(trial.system_attrs.get("fixed_params") or {}), **trial.params}
    study.enqueue_trial(params, user_attrs={"origin": trial.user_attrs.get("origin", "sampled"),
                                            "lineage": lineage(trial), "retry_of": trial.number})


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's `fail_stale_trials` (it runs before every trial too): fail and retry stale trials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def record_owner(storage, trial_id: int) -> None:
    """The heartbeat's trial system attr: the time and this worker (host, pid, start time)."""
    try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT, {"time": time.time(), "worker": worker_id()})
    except UpdateFinishedTrialError:
        pass  # failed as stale by another worker meanwhile: its owner learns it when it reports


class OwnerRDBStorage(RDBStorage):
    """Optuna's RDB storage; its heartbeat (Optuna's, which decides staleness) also names the worker."""

    def record_heartbeat(self, trial_id: int) -> None:
        super().record_heartbeat(trial_id)
        record_owner(self, trial_id)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with Optuna's heartbeat interface (see the module docstring)."""

    def __init__(self, backend, interval: int, stale_after: float):
        super().__init__(backend)
        self._interval = interval
        self._stale_after = stale_after

    def record_heartbeat(self, trial_id: int) -> None:
        record_owner(self, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        me = worker_id()
        others = [w for key, w in self.get_study_user_attrs(study_id).items()
                  if key.startswith("worker ") and (w.get("host"), w.get("pid")) != (me["host"], me["pid"])]
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT)
            if beat is not None:
                owner = beat.get("worker") or {}
                gone = worker_gone(owner) if owner.get("host") == me["host"] else now - beat["time"] > self._stale_after
            else:  # killed in the milliseconds between its creation and its first heartbeat? Then its
                # owner is one of the other registered workers, and every one of them must be gone.
                started = t.datetime_start.timestamp() if t.datetime_start else now
                gone = all(worker_gone(w) if w.get("host") == me["host"] else now - started > self._stale_after
                           for w in others)
            if gone:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return retry_stale_trial


# --- the journal file: torn lines and the lock ------------------------------------------------


class RepairingJournalFile(JournalFileBackend):
    """Optuna's journal file; each append first drops a torn last line (see the module docstring)."""

    def __init__(self, path: str):
        self._journal_lock = HolderLock(path)
        self._journal_lock.sweep()
        super().__init__(path, lock_obj=self._journal_lock)
        self.path = path

    def append_logs(self, logs: list[dict]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        self._journal_lock.acquire()
        try:
            dropped = drop_torn_tail(self.path)
            with open(self.path, "ab") as f:  # as Optuna's JournalFileBackend writes
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            self._journal_lock.release()
        if dropped:
            preview = dropped[:160].decode("utf-8", "replace")
            print(f"warning: journal {self.path}: dropped its torn last line ({len(dropped)} bytes, an unfinished "
                  f"write of a killed process; the records before it are intact): {preview!r}", file=sys.stderr)


def _first_damaged_line(path: str) -> int | None:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                json.loads(line)
            except ValueError:
                if line.endswith(b"\n"):
                    return number
    return None


def drop_torn_tail(path: str) -> bytes:
    """Cut a last line that lacks its newline off the file at `path` -> the bytes cut (b"" if none).
    Call it holding the journal's lock: no live writer is then in the middle of a line."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return b""
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return b""
        start = end
        while start > 0:  # back to the newline that ends the last complete line
            step = min(65536, start)
            f.seek(start - step)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                start = start - step + cut + 1
                break
            start -= step
        f.seek(start)
        dropped = f.read()
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
        return dropped


def _holder(target: str) -> dict | None:
    try:
        return json.loads(target[len(HolderLock.PREFIX):]) if target.startswith(HolderLock.PREFIX) else None
    except ValueError:
        return None


class HolderLock:
    """Optuna's symlink lock (`JournalFileSymlinkLock`: the link ``<journal>.lock`` exists while a
    writer holds it) whose link target names the holder, so that a lock left by a killed process
    on this host is broken at once. Other holders' locks are broken after `LOCK_GRACE` seconds,
    as Optuna does; breaking renames the link away first, as Optuna's release does."""

    PREFIX = "utrc-lock "

    def __init__(self, path: str):
        self.lock_file = path + ".lock"

    def acquire(self) -> bool:
        me = self.PREFIX + json.dumps(worker_id())
        delay = 0.001
        while True:
            try:
                os.symlink(me, self.lock_file)
                return True
            except FileExistsError:
                if self._break_if_stale():
                    continue
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def release(self) -> None:
        moved = f"{self.lock_file}.{uuid.uuid4().hex}.rename"
        try:
            os.rename(self.lock_file, moved)
        except FileNotFoundError:  # broken by another writer after LOCK_GRACE: nothing left to release
            print(f"warning: the lock {self.lock_file} was broken while this process held it", file=sys.stderr)
            return
        os.unlink(moved)

    def sweep(self) -> None:
        """Remove what a holder killed between the two steps of a release left: its renamed link."""
        folder, name = os.path.split(self.lock_file)
        for entry in os.scandir(folder or "."):
            if entry.name.startswith(name + ".") and entry.name.endswith(".rename") and entry.is_symlink():
                try:
                    if worker_gone(_holder(os.readlink(entry.path))):
                        os.unlink(entry.path)
                except OSError:
                    pass  # released meanwhile

    def _break_if_stale(self) -> bool:
        try:
            target = os.readlink(self.lock_file)
            age = time.time() - os.lstat(self.lock_file).st_mtime
        except OSError:
            return True  # released meanwhile: try again at once
        killed = worker_gone(_holder(target))
        if not (killed or age > LOCK_GRACE):
            return False
        moved = f"{self.lock_file}.{uuid.uuid4().hex}.rename"
        try:
            os.rename(self.lock_file, moved)
        except OSError:
            return True  # another waiter broke it first
        if os.readlink(moved) != target:  # broken and taken again in between: give it back
            try:
                os.link(moved, self.lock_file, follow_symlinks=False)
            except FileExistsError:
                pass
        else:
            print(f"warning: broke the lock {self.lock_file} of "
                  f"{'a killed process' if killed else f'a writer silent for {age:.0f} s'} ({target})", file=sys.stderr)
        os.unlink(moved)
        return True
