"""The GPU profiling tables of docs/benchmarks.md, from `python -m utrc.profile` results.

    python benchmarks/profile_table.py docs/results/gpu-h200/profile-mamba2-2.7b.json

Every figure is read from the file; every ratio is against its `dense` row (the file's `baseline`
says what that is). Runs named RUN:BUDGET print as "utrc-paper 30 %", policy files by file name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = (
    "| run | prefill s | speed-up | ideal | of ideal | generate s | speed-up "
    "| peak GiB all logits | change | peak GiB last logit | change |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def _label(name: str) -> str:
    if name.endswith(".json"):
        return Path(name).stem
    run, _, budget = name.partition(":")
    return f"{run} {float(budget) * 100:.0f} %" if budget else name


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else format(value, fmt)


def _change(row: dict, variant: str) -> str:
    reduction = row.get(f"peak_memory_reduction_{variant}")
    return "" if reduction is None else f"{-reduction:+.1%}".replace("%", " %")


def table(result: dict) -> str:
    title = f"{result.get('model', '')}: {result['device']}, {result['dtype']}, {result['date']}"
    lines = [title, f"ratios against: {result.get('baseline', 'dense')}", "", HEADER]
    for name, row in result["results"].items():
        dense = name == "dense"
        lines.append("| " + " | ".join([
            _label(name),
            _cell(row, "prefill_s", ".3f"),
            "1" if dense else _cell(row, "prefill_speedup", ".3f"),
            "1" if dense else _cell(row, "ideal_speedup", ".3f"),
            "" if dense else _cell(row, "prefill_speedup_over_ideal", ".3f"),
            _cell(row, "generate_s", ".3f"),
            "1" if dense else _cell(row, "generate_speedup", ".3f"),
            _cell(row, "peak_memory_gib_all_logits", ".2f"),
            "" if dense else _change(row, "all_logits"),
            _cell(row, "peak_memory_gib_last_logits", ".2f"),
            "" if dense else _change(row, "last_logits"),
        ]) + " |")  # fmt: skip
    if not result.get("complete", True):
        lines.append("\n(the run stopped early: these are the rows it had finished)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="utrc-profile/1 JSON files")
    for path in ap.parse_args(argv).results:
        with open(path) as f:
            print(table(json.load(f)) + "\n")


if __name__ == "__main__":
    main()
