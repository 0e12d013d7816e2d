"""Policies shaped like a search's output, for the GPU speed check "a searched-style policy is as fast as
the uniform schedule at equal FLOPs": 12 reduction blocks (every 4th from block 8), a different keep
at each (seeded random removal weights fitted to the budget by the search's own fitter,
`utrc.budget.fit`) and a different prune share at each. Written once here (CPU) and carried
to the GPU machine:

    python benchmarks/searched_style.py --out benchmarks/policies
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from utrc import ModelSpec, Policy
from utrc.budget import Budget, fit
from utrc.shapes import PAPER_SHAPES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name in ("state-spaces/mamba2-2.7b", "state-spaces/mamba-2.8b"):
        shape = PAPER_SHAPES[name]
        rng = random.Random(0)
        layers = range(8, 56, 4)
        weights = {layer: rng.uniform(0.5, 1.5) for layer in layers}
        shares = {layer: round(rng.uniform(0.3, 0.7), 2) for layer in layers}
        for budget in (0.1, 0.2, 0.3):
            base = Policy(method="utrc", model=ModelSpec.of(shape, f"{name} (random weights)"))
            policy = fit(shape, base, weights, Budget(budget), prune_shares=shares).policy
            path = Path(args.out) / f"searched-style-{name.split('/')[1]}-{budget}.json"
            policy.save(path)
            print(path, {k: v.keep for k, v in policy.layers.items()})


if __name__ == "__main__":
    main()
