"""Search speed: completed Optuna trials per minute of `python -m search.run` on one CPU worker.

Builds the worker exactly as `search.run` does (same arguments, `search.run.prepare`: model load,
dev set, cached dense outputs, journal-file study with the paper / calibration / uniform trials
enqueued), then times `search.study.run` for `--trials` COMPLETE trials on a fresh journal file.
Setup (one-time per worker) is reported separately from the trial rate. Target: at
least 20 trials per minute on the demo model on the 2-core development CPU.

    python benchmarks/search_speed.py [--model demo:mamba2] [--trials 60] [search.run options...]

Any `search.run` option may follow (e.g. --dev-unit document --dev-sequences 32 --dev-length 1024
--threads 1); --storage and --n-trials are set by the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: `search` is not installed

import torch  # noqa: E402

from search import run as run_cli  # noqa: E402
from search.study import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--json", default=None, help="also write the result to this file")
    own, rest = ap.parse_known_args()
    if "--model" not in rest:
        rest = ["--model", "demo:mamba2", *rest]
    if "--budget" not in rest:
        rest = [*rest, "--budget", "0.3"]
    with tempfile.TemporaryDirectory() as tmp:
        storage = os.path.join(tmp, "bench.journal")
        args = run_cli.build_parser().parse_args(
            [*rest, "--storage", storage, "--n-trials", str(own.trials), "--quiet"])
        prep = run_cli.prepare(args)
        start = time.perf_counter()
        done = run(prep.study, prep.objective, own.trials, progress=None)
        elapsed = time.perf_counter() - start
        seconds = [t.user_attrs["seconds"] for t in prep.study.trials if "seconds" in t.user_attrs]
    result = {
        "trials": done,
        "trials_per_minute": done / elapsed * 60,
        "seconds_total": elapsed,
        "objective_seconds_median": sorted(seconds)[len(seconds) // 2],
        "objective_seconds_mean": sum(seconds) / len(seconds),
        "objective_seconds_p90": sorted(seconds)[int(0.9 * (len(seconds) - 1))],
        "setup_seconds": prep.setup_seconds,
        "args": rest,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1min_after": os.getloadavg()[0],  # the machine is shared: other jobs show here
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{done} trials in {elapsed:.1f} s: {result['trials_per_minute']:.1f} trials/min "
          f"(objective median {result['objective_seconds_median'] * 1000:.0f} ms, mean "
          f"{result['objective_seconds_mean'] * 1000:.0f} ms per trial; setup {prep.setup_seconds:.1f} s; "
          f"{result['torch_threads']} torch threads, {result['cores']} cores, load average {os.getloadavg()[0]:.1f})")
    if own.json:
        Path(own.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
