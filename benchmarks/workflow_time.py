"""Time the README's main command, `snakemake --cores 2`, as on a fresh machine (target:
under 10 minutes on 2 CPU cores, no network).

The repository's files (without .venv, results, reports-out, .snakemake, caches) are copied into a
temporary directory, with empty demo-data and Hugging Face caches (UTRC_CACHE, HF_HOME) and the
hub switched off (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1), and the workflow runs there with this
environment's Python. Reported: wall time, the CPU time of all jobs, the load average before and
after (the development machine is shared), then whether a second `snakemake -n` has nothing to do.

    python benchmarks/workflow_time.py [--cores 2] [--json docs/results/workflow-time-cpu.json] [-- SNAKEMAKE ARGS]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "results", "reports-out", ".snakemake", ".git", "gpu-carry", "__pycache__", ".pytest_cache",
        "utrc.egg-info", "build"}


def fresh_copy(dest: Path) -> None:
    def ignore(directory, names):
        return [n for n in names if n in SKIP or n.endswith(".tmp")]

    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--keep", default=None, help="run in this directory and keep it (default: a temporary one)")
    ap.add_argument("snakemake_args", nargs="*")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="utrc-workflow-"))
    caches = Path(tempfile.mkdtemp(prefix="utrc-caches-"))
    fresh_copy(work)
    env = dict(os.environ, UTRC_CACHE=str(caches / "utrc"), HF_HOME=str(caches / "hf"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *args.snakemake_args]
    load_before = os.getloadavg()
    start = time.time()
    proc = subprocess.run(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    (work / "benchmark-run.log").write_text(proc.stdout)
    again = subprocess.run([*command, "-n"], cwd=work, env=env, capture_output=True, text=True)
    result = {
        "command": "snakemake --cores %d %s" % (args.cores, " ".join(args.snakemake_args)),
        "status": proc.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "second_run_nothing_to_do": "Nothing to be done" in again.stdout + again.stderr,
        "outputs": sorted(str(p.relative_to(work)) for p in (work / "reports-out").glob("*.html"))
        + sorted(str(p.relative_to(work)) for p in (work / "results").glob("*/policies/*.json")),
        "cpu": platform.processor() or platform.machine(),
        "cores_available": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d"),
        "workdir": str(work),
    }
    shutil.rmtree(caches, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)  # keep it with --keep DIR
        result["workdir"] = None
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
