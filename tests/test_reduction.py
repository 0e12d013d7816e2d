"""The reduction step on hand-made tensors: docs/method.md §1 steps 1-8 and the baselines of §2."""

import math

import pytest
import torch

from utrc.counts import prune_count, removal_count, removal_counts
from utrc.reduction import evit_plan, importance_scores, tome_plan, utrc_plan

# Seven tokens; the last is protected (protect_last=1), so the reducible prefix is P = 6.
SCORES = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.0]])  # token 6 has the lowest score but is protected
FEATURES = torch.tensor(
    [[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.1, 1.0], [1.0, 0.0]]]
)  # token 4 is (1,1) so token 3 matches it exactly; token 6 equals token 0 but may never be a destination
HIDDEN = torch.arange(10.0, 17.0).view(1, 7, 1)
RESIDUAL = torch.arange(100.0, 107.0).view(1, 7, 1)
LENGTHS = torch.tensor([7])
PROTECT = torch.tensor([1])


def test_utrc_hand_worked_example():
    # Order by (score, position): 1, 5, 3 | 0, 4, 2  ->  A = {1, 5, 3}, Bset = {0, 2, 4}.
    # Matches: 1 -> 0 (cos 0.995), 5 -> 2 (cos 0.995, exactly equal to 1's), 3 -> 4 (cos 1.0).
    # keep 0.6: r = min(3, 6 - ceil(3.6)) = 2. The two best edges: 3 (1.0), then the tie 1 vs 5 at
    # 0.995 goes to the lower score, 1. Split: floor(0.5 * 2 + 0.5) = 1 pruned = the lower score, 1;
    # 3 is merged into 4.
    plan = utrc_plan(SCORES, FEATURES, LENGTHS, PROTECT, keep=0.6, prune_share=0.5)
    assert plan.src[0].tolist() == [1, 3]  # lowest score first
    assert plan.dst[0].tolist() == [0, 4]
    assert plan.merge_hidden[0].tolist() == [False, True]  # hybrid: 1 pruned, 3 merged
    assert plan.merge_residual[0].tolist() == [True, True]  # merge: both merged
    sizes = torch.ones(1, 7)
    assert plan.positions(torch.arange(7)[None]).tolist() == [[0, 2, 4, 5, 6]]
    assert plan.hidden(HIDDEN, sizes).flatten().tolist() == [10.0, 12.0, 13.5, 15.0, 16.0]
    assert plan.residual(RESIDUAL, sizes).flatten().tolist() == [100.5, 102.0, 103.5, 105.0, 106.0]
    assert plan.sizes(sizes).tolist() == [[2.0, 1.0, 2.0, 1.0, 1.0]]


def test_merge_is_weighted_by_the_sizes_before_the_layer():
    plan = utrc_plan(SCORES, FEATURES, LENGTHS, PROTECT, keep=0.6, prune_share=0.5)
    sizes = torch.tensor([[3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0]])
    res = plan.residual(RESIDUAL, sizes).flatten().tolist()
    assert res[0] == pytest.approx((3 * 100 + 1 * 101) / 4)
    assert res[2] == pytest.approx((1 * 104 + 2 * 103) / 3)
    assert plan.sizes(sizes).tolist() == [[4.0, 1.0, 3.0, 1.0, 1.0]]
    assert plan.sizes(sizes).sum() == sizes.sum()  # residual branch merges everything: sizes are conserved


@pytest.mark.parametrize(
    "hidden, residual, hidden_out, residual_out",
    [
        ("prune", "prune", [10.0, 12.0, 14.0, 15.0, 16.0], [100.0, 102.0, 104.0, 105.0, 106.0]),
        ("merge", "hybrid", [10.5, 12.0, 13.5, 15.0, 16.0], [100.0, 102.0, 103.5, 105.0, 106.0]),
    ],
)
def test_strategies(hidden, residual, hidden_out, residual_out):
    plan = utrc_plan(SCORES, FEATURES, LENGTHS, PROTECT, 0.6, 0.5, hidden, residual)
    sizes = torch.ones(1, 7)
    assert plan.hidden(HIDDEN, sizes).flatten().tolist() == hidden_out
    assert plan.residual(RESIDUAL, sizes).flatten().tolist() == residual_out


def test_prune_share_zero_and_one():
    assert utrc_plan(SCORES, FEATURES, LENGTHS, PROTECT, 0.6, 0.0).merge_hidden.all()
    assert not utrc_plan(SCORES, FEATURES, LENGTHS, PROTECT, 0.6, 1.0).merge_hidden.any()


def test_evit_removes_lowest_scores_of_the_prefix_only():
    plan = evit_plan(SCORES, LENGTHS, PROTECT, keep=0.6)
    assert plan.positions(torch.arange(7)[None]).tolist() == [[0, 2, 3, 4, 6]]  # 1 and 5 go; 6 is protected
    assert plan.hidden(HIDDEN, torch.ones(1, 7)).flatten().tolist() == [10.0, 12.0, 13.0, 14.0, 16.0]
    assert plan.sizes(torch.ones(1, 7)).tolist() == [[1.0] * 5]


def test_tome_matches_even_to_odd_indices():
    # A = {0, 2, 4}, Bset = {1, 3, 5}: 0 -> 1 (0.995), 2 -> 5 (0.995), 4 -> 3 (1.0); the tie goes to position 0.
    plan = tome_plan(FEATURES, LENGTHS, PROTECT, keep=0.6)
    sizes = torch.ones(1, 7)
    assert plan.positions(torch.arange(7)[None]).tolist() == [[1, 2, 3, 5, 6]]
    assert plan.hidden(HIDDEN, sizes).flatten().tolist() == [10.5, 12.0, 13.5, 15.0, 16.0]
    assert plan.residual(RESIDUAL, sizes).flatten().tolist() == [100.5, 102.0, 103.5, 105.0, 106.0]
    assert plan.sizes(sizes).tolist() == [[2.0, 1.0, 2.0, 1.0, 1.0]]


def test_removal_count_formula():
    assert removal_count(10, 0.7) == 3  # ceil(0.7 * 10) is 7, not 8, despite binary floating point
    assert removal_count(10, 0.2) == 5  # capped at floor(P / 2)
    assert removal_count(10, 1.0) == 0
    assert removal_count(0, 0.5) == 0
    assert removal_count(1, 0.1) == 0
    assert prune_count(3, 0.5) == 2 and prune_count(5, 0.5) == 3 and prune_count(4, 0.3) == 1
    for P in range(0, 60):
        for keep in (0.05, 0.3, 0.55, 0.7, 0.905, 0.99, 1.0):
            exact = min(P // 2, P - math.ceil(round(keep * P, 9)))
            assert removal_count(P, keep) == max(0, exact)
            assert int(removal_counts(torch.tensor([P]), keep)) == removal_count(P, keep)


@pytest.mark.parametrize("method", ["utrc", "evit", "tome"])
def test_exact_counts_per_row_with_padding(method):
    torch.manual_seed(0)
    lengths = torch.tensor([37, 20, 9, 3])
    protect = torch.tensor([4, 1, 2, 3])
    N = int(lengths.max())
    scores, features = torch.randn(4, N), torch.randn(4, N, 8)
    keep, q = 0.62, 0.4
    if method == "utrc":
        plan = utrc_plan(scores, features, lengths, protect, keep, q)
    elif method == "evit":
        plan = evit_plan(scores, lengths, protect, keep)
    else:
        plan = tome_plan(features, lengths, protect, keep)
    for b in range(4):
        P, L, k = int(lengths[b] - protect[b]), int(lengths[b]), int(protect[b])
        r = removal_count(P, keep)
        assert int(plan.removed[b]) == r
        assert int(plan.new_lengths[b]) == L - r
        src = plan.src[b, :r].tolist()
        assert all(0 <= s < P for s in src) and len(set(src)) == r  # only prefix tokens, each once
        if method != "evit":
            dst = plan.dst[b, :r].tolist()
            assert all(0 <= d < P for d in dst) and not set(dst) & set(src)  # destinations survive
        if method == "utrc":
            assert int((~plan.merge_hidden[b, :r]).sum()) == prune_count(r, q)
        positions = plan.positions(torch.arange(N).expand(4, N))[b]
        assert positions[: L - r].tolist() == sorted(set(range(L)) - set(src))  # original order
        assert positions[L - r - k : L - r].tolist() == list(range(L - k, L))  # the protected suffix
        assert (positions[L - r :] == -1).all()
    sizes = (torch.arange(N)[None] < lengths[:, None]).float()
    new_sizes = plan.sizes(sizes)
    if method == "evit":
        assert torch.equal(new_sizes.sum(1), (lengths - plan.removed).float())
    else:  # merges conserve the residual-branch sizes
        assert torch.equal(new_sizes.sum(1), lengths.float())


def test_importance_metrics():
    y = torch.tensor([[[1.0, -3.0, 2.0, -4.0]]])
    assert importance_scores(y, "clip").item() == pytest.approx(0.75)
    assert importance_scores(y, "l1").item() == pytest.approx(2.5)
    assert importance_scores(y, "l2").item() == pytest.approx(math.sqrt(7.5))
    assert importance_scores(y, "signed").item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="metric"):
        importance_scores(y, "max")
