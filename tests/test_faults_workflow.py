"""Killing the Snakemake process itself (SIGKILL: no chance to stop its jobs) ends its jobs too,
instead of leaving them running as orphans (workflow/rules/python.smk: exec + PR_SET_PDEATHSIG).

A real Snakemake run of a one-rule workflow that runs its command as every rule of workflow/rules
does (`{PYTHON} -m ...` from workflow/rules/python.smk, under the workflow's shell prefix); the
command only waits, so the test is about the process chain, not about any result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_killing_snakemake_ends_its_jobs(tmp_path):
    (tmp_path / "Snakefile").write_text(
        f'include: "{ROOT / "workflow" / "rules" / "python.smk"}"\n'
        'shell.prefix("set -euo pipefail; ")\n'
        'rule wait:\n    output: "done.txt"\n    log: "wait.log"\n'
        '    shell: "{PYTHON} -c \'import os, time; open(\\"command.pid\\", \\"w\\").write(str(os.getpid())); '
        'time.sleep(600)\' > {log} 2>&1"\n')
    main = subprocess.Popen([sys.executable, "-m", "snakemake", "-c1", "-s", str(tmp_path / "Snakefile"), "-d",
                             str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "command.pid").exists() or not (tmp_path / "command.pid").read_text():
            assert time.time() < deadline and main.poll() is None, "the job never started"
            time.sleep(0.2)
        command = int((tmp_path / "command.pid").read_text())
        assert _alive(command)
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.time() + 20
        while _alive(command) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(command), "the job outlived Snakemake"
    finally:
        for name in ("command",):
            path = tmp_path / f"{name}.pid"
            if path.exists() and path.read_text() and _alive(int(path.read_text())):
                os.kill(int(path.read_text()), signal.SIGKILL)
        if main.poll() is None:
            main.kill()
