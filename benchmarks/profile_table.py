"""The GPU profiling table of docs/benchmarks.md, from `python -m utrc.profile` results.

    python benchmarks/profile_table.py docs/results/profile-mamba2-2.7b-h100.json

Policies named METHOD:BUDGET print as "paper 30 %" etc.; every figure is read from the file.
"""

from __future__ import annotations

import argparse
import json

HEADER = (
    "| policy | prefill s | speed-up | ideal | of ideal | generate s | speed-up "
    "| peak GiB all logits | reduction | peak GiB last logit |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _label(name: str) -> str:
    method, _, budget = name.partition(":")
    return f"{method} {float(budget) * 100:.0f} %" if budget else name


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else format(value, fmt)


def table(result: dict) -> str:
    lines = [f"{result['model']} — {result['device']}, {result['dtype']}, {result['date']}", "", HEADER]
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
            "" if dense else _cell(row, "peak_memory_reduction_all_logits", ".1%").replace("%", " %"),
            _cell(row, "peak_memory_gib_last_logits", ".2f"),
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="utrc-profile/1 JSON files")
    for path in ap.parse_args(argv).results:
        with open(path) as f:
            print(table(json.load(f)) + "\n")


if __name__ == "__main__":
    main()
