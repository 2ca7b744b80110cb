"""Uncertainty-weighted k-center: farthest-first traversal whose distances are scaled by how
unsure the current model is about each item.

Plain k-center (CoreSet) covers the embedding space and ignores the model; top-k uncertainty
follows the model and piles its picks into one confusing corner. The hybrid picks, one at a
time, the unlabelled item maximising ``d(x) · w(x)^γ`` — ``d`` its distance to the nearest
labelled or already picked item, ``w`` its uncertainty rank scaled to (0, 1] — so a pick must be
both far from what is known and doubtful to the model, and each pick shrinks the distances of
its neighbours, spreading the picks out. ``γ = 0`` is CoreSet; a large ``γ`` approaches top-k
uncertainty. Ranks (not raw values) make the weight free of the uncertainty's scale, so one
``γ`` serves entropy and margin alike. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.scoring.greedy import CoverageState

__all__ = ["WeightedKCenterResult", "rank_weights", "weighted_k_center_greedy"]


def rank_weights(uncertainty: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Uncertainty ranks among the candidates scaled to (0, 1] (1 = most uncertain).

    Ties share their average rank; non-candidates get 0.

    Args:
        uncertainty: (N,) per-item uncertainty (higher = less sure).
        candidate: (N,) bool, the items that may be picked.

    Returns:
        (N,) float64 weights.
    """
    from scipy.stats import rankdata

    weights = np.zeros(uncertainty.shape[0], dtype=np.float64)
    rows = np.flatnonzero(candidate)
    if rows.size:
        weights[rows] = rankdata(uncertainty[rows]) / rows.size
    return weights


@dataclass(frozen=True, eq=False)
class WeightedKCenterResult:
    """Outcome of :func:`weighted_k_center_greedy`.

    Attributes:
        indices: (B,) int64 picks in order.
        pick_scores: (B,) float64 ``d · w^γ`` of each pick when it was picked (+inf for a
            cold-start first pick, which has no centre to be far from).
        min_distances: (N,) float64 distance of every item to its nearest centre after the last
            pick (0 for labelled and picked items).
        weights: (N,) float64 uncertainty weights ``w`` (0 for labelled items).
    """

    indices: np.ndarray
    pick_scores: np.ndarray
    min_distances: np.ndarray
    weights: np.ndarray

    @property
    def coverage_cost(self) -> float:
        """Mean distance of the pool items to their nearest centre after the selection."""
        return float(self.min_distances.mean()) if self.min_distances.size else 0.0


def weighted_k_center_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    uncertainty: np.ndarray,
    budget: int,
    weight_power: float = 1.0,
) -> WeightedKCenterResult:
    """Greedy picks maximising distance-to-nearest-centre × uncertainty weight^γ.

    Args:
        embeddings: (N, D) float32 pool embeddings.
        labelled: (N,) bool, the labelled items (the initial centres).
        uncertainty: (N,) per-item uncertainty (finite on unlabelled items).
        budget: number of picks, ≤ the number of unlabelled items.
        weight_power: γ ≥ 0; 0 gives plain k-center greedy.

    Returns:
        The picks and their scores. With no labelled item the first pick is the most uncertain
        item (every distance is infinite). Ties → lowest index. Cost: ``budget`` passes over
        ``embeddings``; memory O(N).

    Raises:
        ConfigError: negative ``weight_power`` or a budget beyond the unlabelled items.
        DataError: shapes disagree or an unlabelled item's uncertainty is not finite.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    mask = np.asarray(labelled, dtype=bool)
    u = np.asarray(uncertainty, dtype=np.float64)
    if x.ndim != 2 or mask.shape != (x.shape[0],) or u.shape != (x.shape[0],):
        raise DataError(
            f"weighted k-center: need (N, D) embeddings with (N,) labelled and uncertainty, got "
            f"{x.shape}, {mask.shape}, {u.shape}"
        )
    if not np.isfinite(weight_power) or weight_power < 0:
        raise ConfigError(f"weight_power must be a finite number >= 0, got {weight_power}")
    if not 0 <= budget <= int((~mask).sum()):
        raise ConfigError(f"budget {budget} exceeds the {int((~mask).sum())} unlabelled items")
    if not np.isfinite(u[~mask]).all():
        raise DataError("uncertainty must be finite for every unlabelled item")
    weights = rank_weights(u, ~mask)
    scaled = weights**weight_power
    state = CoverageState(x, mask)
    picks = np.empty(budget, dtype=np.int64)
    pick_scores = np.empty(budget, dtype=np.float64)
    for step in range(budget):
        distances = np.sqrt(state.min_squared[0].astype(np.float64))
        candidate = state.candidate[0]
        if np.isinf(distances[candidate]).all():  # cold start: nothing to be far from yet
            score = np.where(candidate, scaled, -np.inf)
            row = int(np.argmax(score))
            pick_scores[step] = np.inf
        else:
            score = np.where(candidate, distances * scaled, -np.inf)
            row = int(np.argmax(score))
            pick_scores[step] = score[row]
        picks[step] = row
        state.add_centres(np.array([row]))
    final = np.sqrt(state.min_squared[0].astype(np.float64))
    return WeightedKCenterResult(
        indices=picks,
        pick_scores=pick_scores,
        min_distances=np.where(np.isinf(final), 0.0, final),
        weights=weights,
    )
