"""The search space: what a trial samples, and which budgets it can reach.

A trial samples, for every searchable block `l`, a removal weight `w_l` in [0, 1] (parameter
``w_<l>``), plus the global `prune_share` (``prune_share``; per block ``q_<l>`` when
`per_layer_prune_share`), the importance metric and source as one choice (``importance``, e.g.
``"clip/ssm_output"``), and the residual / hidden strategies. The weights only say *where* to
remove tokens, relative to each other; `utrc.budget.fit` says *how much*.

Feasibility by construction (recorded in the study as `FEASIBILITY`): `utrc.budget.fit` maps the
weights onto keep ratios along a monotone path and returns the first grid point whose nominal
FLOPs reduction reaches the budget, never below it (its docstring has the path). A budget above
what keep 0.5 at every searchable block reaches is refused by `check_reachable` before a trial runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from utrc import ModelShape, ModelSpec, Policy
from utrc.budget import Budget, BudgetError, max_reduction
from utrc.policy import IMPORTANCE_METRICS, IMPORTANCE_SOURCES, STRATEGIES, paper_layers

FEASIBILITY = (
    "by construction: sampled per-block removal weights are mapped onto keep ratios along a monotone path and the "
    "path is bisected until utrc.flops.estimate_flops(...)['reduction'] >= budget (never below; grid-rounded keeps)"
)

# The space and the budget it is fitted to fail alike: an invalid one stops the search before any trial.
SpaceError = BudgetError


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may choose. `importance` lists "metric/source" pairs."""

    layers: tuple[int, ...]
    importance: tuple[str, ...] = ("clip/ssm_output",)
    prune_share: tuple[float, float] = (0.0, 1.0)
    prune_share_step: float = 0.05
    per_layer_prune_share: bool = False
    residual_strategies: tuple[str, ...] = STRATEGIES
    hidden_strategies: tuple[str, ...] = ("hybrid",)
    keep_grid: float | None = 0.001
    weight_step: float | None = None  # None: continuous weights
    max_target: float | None = None  # multi-objective mode: targets sampled in [budget, max_target]
    notes: tuple[str, ...] = field(default=(), compare=False)  # how the space was derived (calibration)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def validate(self, shape: ModelShape) -> None:
        """Raise SpaceError naming the bad field unless the space fits a model of `shape`."""
        if not self.layers:
            raise SpaceError("searchable layers: empty; give at least one block index")
        bad = [layer for layer in self.layers if not 0 <= layer < shape.n_layer]
        if bad:
            raise SpaceError(
                f"searchable layers {bad} are outside the model: it has {shape.n_layer} blocks (0..{shape.n_layer - 1})"
            )
        if len(set(self.layers)) != len(self.layers) or list(self.layers) != sorted(self.layers):
            raise SpaceError(f"searchable layers must be sorted and distinct, got {list(self.layers)}")
        if not self.importance:
            raise SpaceError("importance: no metric/source pair left to search")
        for pair in self.importance:
            metric, _, source = pair.partition("/")
            if metric not in IMPORTANCE_METRICS or source not in IMPORTANCE_SOURCES:
                raise SpaceError(
                    f"importance: {pair!r} is not METRIC/SOURCE with METRIC in {list(IMPORTANCE_METRICS)} and "
                    f"SOURCE in {list(IMPORTANCE_SOURCES)}"
                )
            if source == "scan_output" and shape.architecture != "mamba2":
                raise SpaceError(f"importance: {pair!r}: scan_output exists only for Mamba-2 models")
        lo, hi = self.prune_share
        if not 0.0 <= lo <= hi <= 1.0:
            raise SpaceError(f"prune_share range: expected 0 <= low <= high <= 1, got {self.prune_share}")
        for name, values in (("residual strategies", self.residual_strategies),
                             ("hidden strategies", self.hidden_strategies)):
            if not values or any(v not in STRATEGIES for v in values):
                raise SpaceError(f"{name}: expected a non-empty subset of {list(STRATEGIES)}, got {list(values)}")
        if self.keep_grid is not None and not 0.0 < self.keep_grid <= 0.1:
            raise SpaceError(f"keep grid: expected a step in (0, 0.1] or None, got {self.keep_grid}")


def default_layers(n_layer: int, first: int | None = None, include_last: bool = False) -> tuple[int, ...]:
    """Every block from `first` on (default: the first block of the paper's schedule).

    The last block is left out unless `include_last`: reducing after it only drops rows before the
    lm_head, which no scored (protected) position reads, so the nominal FLOPs model would count it
    as a free saving and the search would spend its budget there instead of on the method.
    """
    first = min(paper_layers(n_layer)) if first is None else first
    last = n_layer if include_last else n_layer - 1
    return tuple(range(first, last))


def parse_layers(text: str, n_layer: int) -> tuple[int, ...]:
    """"4-10,12" -> (4, ..., 10, 12); "4-" means 4 to the last block but one. Checked against n_layer."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), (int(b) if b else n_layer - 2) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise SpaceError(f"searchable layers: cannot read {part!r} (expected e.g. '4-10,12' or '4-')") from None
    bad = sorted(layer for layer in out if not 0 <= layer < n_layer)
    if bad:
        raise SpaceError(f"searchable layers {bad} are outside the model: it has {n_layer} blocks (0..{n_layer - 1})")
    return tuple(sorted(out))


def reachable(shape: ModelShape, spec: ModelSpec, space: SearchSpace, budget: Budget) -> dict[str, float]:
    """{importance source of the space: the largest nominal reduction a policy with it reaches}.
    The source matters: its width sets the cost of matching (docs/method.md §5)."""
    reach = {}
    for pair in space.importance:
        source = pair.partition("/")[2]
        if source not in reach:
            reach[source] = max_reduction(shape, Policy(method="utrc", model=spec, importance_source=source),
                                          space.layers, budget)
    return reach


def _target(space: SearchSpace, budget: Budget) -> float:
    return max(budget.reduction, space.max_target or 0.0)


def fit_to_budget(shape: ModelShape, spec: ModelSpec, space: SearchSpace, budget: Budget) -> SearchSpace:
    """The space without the importance pairs whose source cannot reach the budget (noted in
    `notes`); SpaceError if no pair can."""
    reach = reachable(shape, spec, space, budget)
    want = _target(space, budget)
    short = sorted(s for s, r in reach.items() if r < want)
    if not short:
        return space
    if len(short) == len(reach):
        check_reachable(shape, spec, space, budget)  # raises, naming the largest reachable reductions
    kept = tuple(p for p in space.importance if p.partition("/")[2] not in short)
    note = (f"budget {want:.4f}: dropped importance sources {short} (most they reach: "
            + ", ".join(f"{s} {reach[s]:.4f}" for s in short) + ")")
    return replace(space, importance=kept, notes=space.notes + (note,))


def check_reachable(shape: ModelShape, spec: ModelSpec, space: SearchSpace, budget: Budget) -> dict[str, float]:
    """Raise SpaceError unless every importance source of the space reaches the budget (and
    `max_target`), so that every trial can be projected onto it; -> `reachable(...)`."""
    reach = reachable(shape, spec, space, budget)
    want = _target(space, budget)
    short = {s: r for s, r in reach.items() if r < want}
    if len(short) == len(reach):
        best = ", ".join(f"{s}: {r:.4f}" for s, r in reach.items())
        raise SpaceError(
            f"budget {want:.4f} unreachable: no policy of the space reaches it (keep 0.5 at every searchable block "
            f"{list(space.layers)} gives at most {best} at seq_len {budget.seq_len}); lower the budget or "
            "search more layers"
        )
    if short:
        worst = ", ".join(f"{s}: {r:.4f}" for s, r in short.items())
        raise SpaceError(
            f"budget {want:.4f} is out of reach for importance source(s) {worst} at seq_len {budget.seq_len}; "
            "drop their pairs from the space (search.space.fit_to_budget does; search.run does it for you)"
        )
    return reach


def paper_weights(space: SearchSpace, n_layer: int) -> dict[int, float] | None:
    """Weights that make the path produce the paper's schedule (one keep at its layers), or None
    if a paper layer is not searchable."""
    layers = set(paper_layers(n_layer))
    if not layers <= set(space.layers):
        return None
    return {layer: (1.0 if layer in layers else 0.0) for layer in space.layers}
