"""Shared machinery of the uncertainty strategies (entropy, margin): top-B most uncertain items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.scoring.uncertainty import (
    UNCERTAINTY_AGGREGATIONS,
    UncertaintyMeasure,
    item_uncertainty,
)
from alframe.strategies.base import Strategy, pool_array, top_unlabelled
from alframe.types import QueryContext, Selection


@dataclass(frozen=True)
class UncertaintyStrategy(Strategy):
    """Selects the ``budget`` unlabelled items with the highest aggregated pixel uncertainty.

    Uses ``ctx.probabilities`` when present (this strategy's own pixel measure), otherwise the
    precomputed per-item ``ctx.uncertainty``. Ties → lowest index.

    Args:
        aggregation: per-image aggregation, a name in
            :data:`alframe.scoring.UNCERTAINTY_AGGREGATIONS` (``"mean"``, ``"top_fraction"``,
            ``"foreground_weighted"`` or a plugin).
        top_fraction: fraction of the most uncertain pixels averaged by ``"top_fraction"``.
    """

    aggregation: str = "mean"
    top_fraction: float = 0.1

    measure: ClassVar[UncertaintyMeasure] = "entropy"
    requires: ClassVar[frozenset[str]] = frozenset({"probabilities"})

    def __post_init__(self) -> None:
        UNCERTAINTY_AGGREGATIONS.get(self.aggregation)  # unknown name → ConfigError with hints
        if isinstance(self.top_fraction, bool) or not 0 < self.top_fraction <= 1:
            raise ConfigError(
                f"{self.name} top_fraction must lie in (0, 1], got {self.top_fraction!r}"
            )

    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        if ctx.probabilities is not None:
            uncertainty = item_uncertainty(
                ctx.probabilities, self.measure, self.aggregation, self.top_fraction
            )
            source = "probabilities"
        elif ctx.uncertainty is not None:
            uncertainty = np.asarray(ctx.uncertainty, dtype=np.float64)
            source = "precomputed"
        else:
            raise DataError(
                f"strategy {self.name!r} needs predictions: pass QueryContext(probabilities=...) "
                "with (N, K, H, W) or (N, H, W) probabilities, or a precomputed (N,) uncertainty"
            )
        indices = top_unlabelled(uncertainty, ctx.labelled, budget)
        scores = pool_array(uncertainty, ctx.labelled)
        return Selection(
            indices=indices,
            scores=scores,
            terms={"uncertainty": scores.copy()},
            info={"measure": self.measure, "aggregation": self.aggregation, "source": source},
        )
