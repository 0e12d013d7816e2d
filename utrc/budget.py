"""Fitting a policy onto a nominal FLOPs budget: the one rule the search, the baselines, the demo
and the profiler share. A fitted policy's nominal reduction is never below the budget.

Removal weights `w_l` (one per block that may reduce) say *where* tokens go, relative to each
other; `fit` says *how much*. The weights are mapped to keep ratios along a path `keeps(s)`,
s in [0, 2], on which every keep ratio is non-increasing:

    s in [0, 1]: keep_l = max(0.5, 1 - s * K * w_l) for w_l > 0   (K = 0.5 / min positive w, so
                 every weighted block reaches 0.5 at s = 1), keep_l = 1 for w_l = 0;
    s in [1, 2]: the weighted blocks stay at 0.5, the others follow 1 - (s - 1) * 0.5.

Each keep is rounded to the grid (multiples of `grid`), which keeps it monotone in s. The nominal
FLOPs reduction (`utrc.flops.estimate_flops`, docs/method.md §5) mostly grows along the path (not
strictly: switching a block on adds its matching cost before it removes enough tokens to pay for
it), so a bisection keeps reduction(lo) < target <= reduction(hi) and returns the policy at hi.
Blocks with equal weights get equal keeps, so the paper's one-keep schedule is the path of equal
weights at its layers (`schedule_policy`): its keep is the largest grid keep on the budget. The
overshoot above the target is at most one grid step of the blocks that move together (about
0.0007 for the paper's 7 layers of a 64-layer model at grid 0.001). At s = 2 every weighted block
keeps 0.5, which removes floor(P/2) tokens, the most any keep ratio can; a target above that is
unreachable and raises BudgetError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .flops import estimate_flops
from .names import METHOD, SCHEDULE_RUNS
from .policy import LayerSpec, ModelSpec, Policy, paper_layers
from .shapes import ModelShape

MIN_KEEP = 0.5  # every keep <= 0.5 removes floor(P/2), the most a layer can remove
GRID = 0.001  # keep ratios are multiples of this: short decimals in a file, fine enough for 2048 tokens


class BudgetError(ValueError):
    """A budget is invalid, or no policy of the given layers reaches it."""


@dataclass(frozen=True)
class Budget:
    """A nominal FLOPs reduction target, costed at `seq_len` tokens with `protect_last` protected."""

    reduction: float
    seq_len: int = 2048
    protect_last: int = 1

    def __post_init__(self):
        if not 0.0 < self.reduction < 1.0:
            raise BudgetError(
                f"budget: expected a FLOPs reduction in (0, 1) (e.g. 0.3 for 30 %), got {self.reduction!r}")
        if self.seq_len < 2 or not 0 <= self.protect_last < self.seq_len:
            raise BudgetError(f"budget: need seq_len >= 2 and 0 <= protect_last < seq_len, got {self.seq_len}, "
                              f"{self.protect_last}")


@dataclass(frozen=True)
class Fitted:
    policy: Policy
    reduction: float  # nominal FLOPs reduction (>= the target)
    token_fraction_proxy: float
    target: float


def keeps_along(weights: Mapping[int, float], s: float, grid: float | None) -> dict[int, float]:
    """Keep ratio of each block at point s in [0, 2] of the path (see the module docstring)."""
    positive = {layer: w for layer, w in weights.items() if w > 0}
    if not positive:
        positive = dict.fromkeys(weights, 1.0)  # no preference: every block alike
    K = MIN_KEEP / min(positive.values())
    keeps = {}
    for layer in weights:
        if layer in positive:
            raw = max(MIN_KEEP, 1.0 - min(s, 1.0) * K * positive[layer])
        else:
            raw = 1.0 - max(0.0, s - 1.0) * (1.0 - MIN_KEEP)
        keeps[layer] = _on_grid(raw, grid)
    return keeps


def fit(
    shape: ModelShape,
    base: Policy,
    weights: Mapping[int, float],
    budget: Budget,
    grid: float | None = GRID,
    prune_shares: Mapping[int, float] | None = None,
    target: float | None = None,
) -> Fitted:
    """The first policy along the weights' path whose nominal reduction reaches the target.

    `base` gives everything but the layers (method, importance, strategies, prune_share); the
    target is `budget.reduction` unless given (the search's multi-objective mode samples it).
    Raises BudgetError if no point of the path reaches it.
    """
    target = budget.reduction if target is None else target
    if not weights:
        raise BudgetError("no layers to place the reduction on")

    def evaluate(keeps: Mapping[int, float]) -> tuple[Policy, dict]:
        layers = {layer: LayerSpec(k, None if prune_shares is None else prune_shares.get(layer))
                  for layer, k in keeps.items() if k < 1.0}
        policy = replace(base, layers=layers)
        return policy, estimate_flops(shape, policy, budget.seq_len, budget.protect_last)

    policy, est = evaluate(keeps_along(weights, 2.0, grid))
    if est["reduction"] < target:
        raise BudgetError(
            f"budget {target:.4f} unreachable: keeping 0.5 at every block {sorted(weights)} gives "
            f"{est['reduction']:.4f} at seq_len {budget.seq_len} ({base.method}, {base.importance_source})"
        )
    lo, hi = 0.0, 2.0  # invariant: reduction(lo) < target <= reduction(hi)
    for _ in range(64):
        mid = (lo + hi) / 2
        if evaluate(keeps_along(weights, mid, grid))[1]["reduction"] >= target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    policy, est = evaluate(keeps_along(weights, hi, grid))
    return Fitted(policy, est["reduction"], est["token_fraction_proxy"], target)


def max_reduction(shape: ModelShape, base: Policy, layers, budget: Budget) -> float:
    """The largest nominal reduction any policy over `layers` reaches (every block at keep 0.5)."""
    policy = replace(base, layers={layer: LayerSpec(MIN_KEEP) for layer in layers})
    return estimate_flops(shape, policy, budget.seq_len, budget.protect_last)["reduction"]


def schedule_policy(run: str, shape: ModelShape, budget: float | Budget, *, name: str = "", seq_len: int = 2048,
                    grid: float | None = GRID) -> Policy:
    """The run `utrc-paper`, `evit` or `tome` on `budget`: the paper's layers (scaled to the
    model's depth, docs/method.md §2), one keep ratio, the largest on the grid whose nominal FLOPs
    reduction is at least the budget's (at `seq_len` tokens, protect_last 1, unless `budget` is a
    `Budget`). EViT has no matching step to pay for, so it keeps more tokens than the others at the
    same budget. Raises BudgetError if the paper's layers cannot reach the budget."""
    if run not in SCHEDULE_RUNS:
        raise ValueError(f"run: expected one of {SCHEDULE_RUNS}, got {run!r}")
    budget = budget if isinstance(budget, Budget) else Budget(float(budget), seq_len=seq_len)
    base = Policy(method=METHOD[run], model=ModelSpec.of(shape, name))
    weights = dict.fromkeys(paper_layers(shape.n_layer), 1.0)
    try:
        return fit(shape, base, weights, budget, grid).policy
    except BudgetError as err:
        raise BudgetError(f"{run} at the paper's layers {sorted(weights)}: {err}") from None


def _on_grid(keep: float, grid: float | None) -> float:
    if grid is None:
        return min(1.0, max(MIN_KEEP, keep))
    steps = math.floor(keep / grid + 0.5)
    return min(1.0, max(MIN_KEEP, round(steps * grid, 10)))
