"""CoreSet: greedy k-center (farthest-first) selection in the embedding space (Sener & Savarese)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from alframe.errors import ConfigError
from alframe.scoring.greedy import k_center_greedy
from alframe.strategies.base import STRATEGIES, Strategy, pool_array
from alframe.types import QueryContext, Selection


@STRATEGIES.register("coreset")
@dataclass(frozen=True)
class CoresetStrategy(Strategy):
    """k-center greedy: each pick is the unlabelled item farthest from every labelled or already
    picked item.

    Args:
        first_pick: cold start only (no labelled item): ``"mean"`` = the item nearest the pool
            mean, ``"random"`` = seeded uniform. With labelled items the first pick is the item
            farthest from the labelled set.
        method: ``"lazy"`` (default, fastest) or ``"eager"`` k-center greedy; same picks (see
            :func:`alframe.scoring.k_center_greedy`).

    Scores: distance to the nearest centre at pick time for picked items (+inf for a cold-start
    first pick), the final nearest-centre distance for the others. ``info`` has the coverage
    cost (mean nearest-centre distance) and covering radius after the selection.
    """

    first_pick: Literal["mean", "random"] = "mean"
    method: Literal["lazy", "eager"] = "lazy"

    name: ClassVar[str] = "coreset"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    supports_on_disk: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.first_pick not in ("mean", "random"):
            raise ConfigError(
                f"coreset first_pick must be 'mean' or 'random', got {self.first_pick!r}"
            )
        if self.method not in ("lazy", "eager"):
            raise ConfigError(f"coreset method must be 'lazy' or 'eager', got {self.method!r}")

    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        result = k_center_greedy(
            ctx.embeddings,
            ctx.labelled,
            budget,
            first_pick=self.first_pick,
            seed=ctx.rng,
            method=self.method,
        )
        scores = result.min_distances.copy()
        scores[result.indices] = result.pick_distances
        return Selection(
            indices=result.indices,
            scores=pool_array(scores, ctx.labelled),
            terms={"diversity": pool_array(scores, ctx.labelled)},
            info={
                "first_pick": result.first_pick,
                "coverage_cost": result.coverage_cost,
                "covering_radius": result.covering_radius,
            },
        )
