"""Helpers of the workflow's scripts: run one project command, its output on the terminal and in the log.

Every rule's script builds the command line of a package entry point (`python -m search.run ...`),
then calls `run`, which

* writes the command to the rule's log first (a log says exactly what ran),
* runs it from the repository root's view (PYTHONPATH gets the root, so `search` and `reports`
  import from any working directory) with OMP_NUM_THREADS set to the job's threads,
* copies its stdout and stderr to the terminal, each line prefixed with the job's tag, and to the
  log. Progress bars that redraw one line (tqdm's carriage returns) are shown at most every
  `PROGRESS_EVERY` seconds, as whole lines, so two parallel jobs do not overwrite each other;
* raises `SystemExit` with the command's status if it fails, naming the log.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRESS_EVERY = 5.0  # seconds between two lines of one redrawn progress bar
# Lines written to the log only: utrc.loading.CPU_KERNEL_NOTE, which every CPU job prints once; the Snakefile's
# `onstart` says it once for the whole run instead.
LOG_ONLY_PREFIXES = ("utrc note: on the CPU, transformers runs",)


def python_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def module_command(module: str, *args) -> list[str]:
    """[python, -m, module, args...] with None arguments dropped and the rest as strings."""
    return [sys.executable, "-m", module, *(str(a) for a in args if a is not None)]


def options(**flags) -> list[str]:
    """--flag value pairs from keyword arguments (underscores become dashes); None is left out,
    True gives a bare flag, a list or tuple is joined with commas."""
    out = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def run(command: list[str], log_path: str, tag: str, threads: int = 1) -> None:
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log:
        log.write(f"$ {shlex.join(command)}\n")
        print(f"[{tag}] $ {shlex.join(command)}", flush=True)
        start = time.time()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=python_env(threads),
                                cwd=os.getcwd())
        _copy(proc.stdout, log, tag)
        status = proc.wait()
        elapsed = time.time() - start
        log.write(f"[exit status {status} after {elapsed:.1f} s]\n")
    if status != 0:
        print(f"[{tag}] failed (exit status {status}); the full output is in {log_path}", file=sys.stderr, flush=True)
        raise SystemExit(status)
    print(f"[{tag}] done in {elapsed:.1f} s", flush=True)


def _copy(stream, log, tag: str) -> None:
    """Copy a child's output to the terminal and the log, line by line; redrawn lines throttled."""
    pending, last_shown = b"", 0.0
    held = None  # the latest redrawn line not yet shown
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        pending += chunk
        while True:
            cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            line, end, pending = pending[:cut], pending[cut : cut + 1], pending[cut + 1 :]
            text = line.decode("utf-8", "replace").rstrip()
            if not text:
                continue
            if end == b"\r":  # a progress bar redrawing its line
                held = text
                if time.time() - last_shown >= PROGRESS_EVERY:
                    _show(text, log, tag)
                    held, last_shown = None, time.time()
            else:
                if held is not None and not text.startswith(held[:20]):
                    _show(held, log, tag)  # the bar's last state before other output
                held = None
                _show(text, log, tag)
    if held is not None:
        _show(held, log, tag)
    if pending.strip():
        _show(pending.decode("utf-8", "replace").rstrip(), log, tag)


def _show(text: str, log, tag: str) -> None:
    log.write(text + "\n")
    if text.startswith(LOG_ONLY_PREFIXES):
        return
    print(f"[{tag}] {text}", flush=True)
