"""Random sampling: a seeded uniform sample of the unlabelled items (the baseline of every study)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from alframe.strategies.base import STRATEGIES, Strategy, pool_array, top_unlabelled
from alframe.types import QueryContext, Selection


@STRATEGIES.register("random")
@dataclass(frozen=True)
class RandomStrategy(Strategy):
    """Seeded uniform sampling without replacement.

    Every pool item gets a uniform random key from ``ctx.rng``; the ``budget`` unlabelled items
    with the largest keys are selected, so the score is the key.
    """

    name: ClassVar[str] = "random"
    requires: ClassVar[frozenset[str]] = frozenset()

    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        keys = ctx.rng.random(ctx.n_items)
        indices = top_unlabelled(keys, ctx.labelled, budget)
        return Selection(indices=indices, scores=pool_array(keys, ctx.labelled), info={})
