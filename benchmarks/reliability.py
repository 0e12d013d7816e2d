"""Run the fault-injection suite and write its figures (docs/reliability.md) to a results file.

    python benchmarks/reliability.py [--json docs/results/reliability.json]

Runs `python -m pytest -q tests/test_faults_*.py` (the tests CI runs as part of the whole suite)
with UTRC_RELIABILITY_LOG set: each fault test appends what it did (faults injected, bad inputs
tried, finished trials lost, partial outputs left). This script sums them and records the command,
the pytest summary, its wall time, the machine (CPUs, load before and after: the development
machine is shared), the commit and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utrc.io import atomic_write_json, now  # noqa: E402 (the repository root is put on the path first)

COUNTS = ("faults", "bad_inputs", "trials_lost", "partial_outputs")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the result here (e.g. docs/results/reliability.json)")
    args = ap.parse_args()
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_faults_*.py"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "reliability.jsonl"
        load_before = os.getloadavg()
        start = time.time()
        proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ, UTRC_RELIABILITY_LOG=str(log)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.time() - start
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    result = {
        "command": "python -m pytest -q " + " ".join(tests),
        "pytest_status": proc.returncode,
        "pytest_summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        "wall_s": round(wall, 1),
        "totals": {key: sum(row.get(key, 0) for row in rows) for key in COUNTS},
        "tests": rows,
        "machine": {"cpu": cpu_model(), "cores_available": len(os.sched_getaffinity(0)),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "commit": git("rev-parse", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain") else ""),
        "date": now(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_json(args.json, result, indent=1)
    if proc.returncode != 0:
        print(proc.stdout[-5000:], file=sys.stderr)
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
