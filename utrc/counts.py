"""How many tokens a reduction layer removes, and how many of those it prunes (docs/method.md §1 steps 1 and 6).

The same formulas serve the reduced forward pass (tensors, one count per batch row) and the FLOPs
model (plain ints), so the two can never disagree.
"""

from __future__ import annotations

import math

import torch

# `keep * P` is computed in binary floating point: 0.7 * 10 is 7.000000000000001, whose ceiling
# would keep 8 of 10 tokens. Subtracting a tolerance far below 1/P makes the ceiling the one of the
# decimal product a user wrote down.
_CEIL_TOLERANCE = 1e-9


def removal_count(prefix_len: int, keep: float) -> int:
    """r = min(floor(P/2), P - ceil(keep * P)) for a reducible prefix of P tokens."""
    kept = math.ceil(keep * prefix_len - _CEIL_TOLERANCE)
    return max(0, min(prefix_len // 2, prefix_len - kept))


def removal_counts(prefix_len: torch.Tensor, keep: float) -> torch.Tensor:
    """`removal_count` per batch row: prefix_len [B] int64 -> r [B] int64."""
    p = prefix_len.clamp(min=0)
    kept = torch.ceil(p.to(torch.float64) * keep - _CEIL_TOLERANCE).to(torch.int64)
    return torch.minimum(p // 2, p - kept).clamp(min=0)


def prune_count(removed: int, prune_share: float) -> int:
    """Of r selected sources, floor(q * r + 0.5) are pruned, the rest merged (hybrid strategy)."""
    return int(math.floor(prune_share * removed + 0.5))


def prune_counts(removed: torch.Tensor, prune_share: float) -> torch.Tensor:
    return torch.floor(removed.to(torch.float64) * prune_share + 0.5).to(torch.int64)
