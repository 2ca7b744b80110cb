"""Pure scoring functions on NumPy arrays: kNN density and novelty, min-max normalisation,
k-center and XSSR greedy selections, coverage, and uncertainty aggregation.

Nothing here imports torch, Lightning or MLflow.
"""

from __future__ import annotations

from alframe.scoring.distances import (
    min_squared_distances_to_set,
    squared_distances_to_rows,
    squared_row_norms,
)
from alframe.scoring.greedy import (
    DEFAULT_ALPHA_GRID,
    AlphaCalibration,
    CoverageState,
    KCenterResult,
    XssrGreedyResult,
    calibrate_alpha,
    choose_alpha,
    combine_terms,
    coverage_cost,
    k_center_greedy,
    normalized_diversity,
    point_nearest_mean,
    xssr_greedy,
)
from alframe.scoring.knn_terms import density, knn_mean_distance, novelty
from alframe.scoring.normalize import min_max_normalize
from alframe.scoring.uncertainty import (
    PIXEL_MEASURES,
    UNCERTAINTY_AGGREGATIONS,
    foreground_weight,
    item_uncertainty,
    pixel_entropy,
    pixel_margin_uncertainty,
)

__all__ = [
    "DEFAULT_ALPHA_GRID",
    "PIXEL_MEASURES",
    "UNCERTAINTY_AGGREGATIONS",
    "AlphaCalibration",
    "CoverageState",
    "KCenterResult",
    "XssrGreedyResult",
    "calibrate_alpha",
    "choose_alpha",
    "combine_terms",
    "coverage_cost",
    "density",
    "foreground_weight",
    "item_uncertainty",
    "k_center_greedy",
    "knn_mean_distance",
    "min_max_normalize",
    "min_squared_distances_to_set",
    "normalized_diversity",
    "novelty",
    "pixel_entropy",
    "pixel_margin_uncertainty",
    "point_nearest_mean",
    "squared_distances_to_rows",
    "squared_row_norms",
    "xssr_greedy",
]
