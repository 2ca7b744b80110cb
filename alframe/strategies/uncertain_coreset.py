"""Uncertainty-weighted CoreSet: cover the embedding space where the model is unsure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.scoring.uncertainty import (
    PIXEL_MEASURES,
    UNCERTAINTY_AGGREGATIONS,
    UncertaintyMeasure,
    item_uncertainty,
)
from alframe.scoring.weighted_kcenter import weighted_k_center_greedy
from alframe.strategies.base import STRATEGIES, Strategy, pool_array
from alframe.types import QueryContext, Selection


@STRATEGIES.register("uncertain-coreset")
@dataclass(frozen=True)
class UncertainCoresetStrategy(Strategy):
    """k-center greedy with each item's distance scaled by its uncertainty rank^γ (a hybrid of
    CoreSet and uncertainty sampling; see :mod:`alframe.scoring.weighted_kcenter`).

    Needs a model: in a loop its first round is the cold-start strategy's, like entropy.

    Args:
        weight_power: γ ≥ 0 (0 = CoreSet; larger = closer to top-k uncertainty).
        measure: per-pixel uncertainty, ``"entropy"`` or ``"margin"``.
        aggregation: per-image aggregation (a name in
            :data:`alframe.scoring.UNCERTAINTY_AGGREGATIONS`).
        top_fraction: fraction of pixels averaged by ``"top_fraction"``.

    Scores: ``d · w^γ`` at pick time for picked items (+inf for a cold-start first pick), the
    final ``d · w^γ`` for the others; terms ``diversity`` (distance to the nearest centre) and
    ``uncertainty`` (the aggregated value).
    """

    weight_power: float = 1.0
    measure: str = "entropy"
    aggregation: str = "mean"
    top_fraction: float = 0.1

    name: ClassVar[str] = "uncertain-coreset"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings", "probabilities"})

    def __post_init__(self) -> None:
        if isinstance(self.weight_power, bool) or not (
            isinstance(self.weight_power, int | float) and 0 <= self.weight_power < np.inf
        ):
            raise ConfigError(
                f"uncertain-coreset weight_power must be a number >= 0, got {self.weight_power!r}"
            )
        if self.measure not in PIXEL_MEASURES:
            raise ConfigError(
                f"uncertain-coreset measure must be one of {sorted(PIXEL_MEASURES)}, got "
                f"{self.measure!r}"
            )
        UNCERTAINTY_AGGREGATIONS.get(self.aggregation)  # unknown name → ConfigError with hints
        if isinstance(self.top_fraction, bool) or not 0 < self.top_fraction <= 1:
            raise ConfigError(
                f"uncertain-coreset top_fraction must lie in (0, 1], got {self.top_fraction!r}"
            )

    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        if ctx.probabilities is not None:
            measure: UncertaintyMeasure = "margin" if self.measure == "margin" else "entropy"
            uncertainty = item_uncertainty(
                ctx.probabilities, measure, self.aggregation, self.top_fraction
            )
        elif ctx.uncertainty is not None:
            uncertainty = np.asarray(ctx.uncertainty, dtype=np.float64)
        else:
            raise DataError(
                "strategy 'uncertain-coreset' needs predictions: pass QueryContext("
                "probabilities=...) with (N, K, H, W) or (N, H, W) probabilities, or a "
                "precomputed (N,) uncertainty"
            )
        result = weighted_k_center_greedy(
            ctx.embeddings, ctx.labelled, uncertainty, budget, float(self.weight_power)
        )
        scores = result.min_distances * result.weights**self.weight_power
        scores[result.indices] = result.pick_scores
        return Selection(
            indices=result.indices,
            scores=pool_array(scores, ctx.labelled),
            terms={
                "diversity": pool_array(result.min_distances, ctx.labelled),
                "uncertainty": pool_array(uncertainty, ctx.labelled),
            },
            info={
                "weight_power": float(self.weight_power),
                "measure": self.measure,
                "aggregation": self.aggregation,
                "coverage_cost": result.coverage_cost,
            },
        )
