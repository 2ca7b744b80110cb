"""Per-pixel uncertainty from segmentation probabilities and its aggregation to one value per image.

Probabilities are either (N, K, H, W) class probabilities (class axis 1, class 0 = background) or
(N, H, W) foreground probabilities of a binary problem. Aggregations are pluggable through
:data:`UNCERTAINTY_AGGREGATIONS` (entry-point group ``alframe.uncertainty_aggregations``): an
aggregation maps (n, P) pixel uncertainties and (n, P) foreground weights to (n,) values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.registry import Registry

UncertaintyMeasure = Literal["entropy", "margin"]
_LOG_FLOOR = 1e-12


class Aggregation(Protocol):
    """Pixel uncertainties → one value per image."""

    def __call__(
        self, pixel_uncertainty: np.ndarray, foreground_weight: np.ndarray, *, top_fraction: float
    ) -> np.ndarray:
        """Aggregates (n, P) pixel values (with (n, P) foreground weights) to (n,) values."""
        ...


UNCERTAINTY_AGGREGATIONS: Registry[Aggregation] = Registry("uncertainty_aggregations")


def _as_probabilities(probabilities: np.ndarray) -> np.ndarray:
    array = np.asarray(probabilities)
    if array.ndim not in (3, 4):
        raise DataError(f"probabilities must be (N, K, H, W) or (N, H, W), got shape {array.shape}")
    return array.astype(np.float32, copy=False)


def pixel_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of every pixel's predictive distribution.

    Args:
        probabilities: (N, K, H, W) class probabilities or (N, H, W) foreground probabilities.

    Returns:
        (N, H, W) float32 entropies (0 = certain; log K or log 2 = uniform).
    """
    p = _as_probabilities(probabilities)
    if p.ndim == 3:
        q = np.clip(p, 0.0, 1.0)
        return -(
            q * np.log(np.maximum(q, _LOG_FLOOR)) + (1 - q) * np.log(np.maximum(1 - q, _LOG_FLOOR))
        )
    q = np.clip(p, 0.0, 1.0)
    return -(q * np.log(np.maximum(q, _LOG_FLOOR))).sum(axis=1)


def pixel_margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """1 − (p_top1 − p_top2) of every pixel (1 = the two best classes tie, 0 = certain).

    Args:
        probabilities: (N, K, H, W) class probabilities or (N, H, W) foreground probabilities
            (binary: 1 − |2p − 1|).

    Returns:
        (N, H, W) float32 margin uncertainties.
    """
    p = _as_probabilities(probabilities)
    if p.ndim == 3:
        return 1.0 - np.abs(2.0 * p - 1.0)
    if p.shape[1] < 2:
        raise DataError("margin needs at least two classes (K ≥ 2) on axis 1")
    top_two = -np.partition(-p, 1, axis=1)[:, :2]
    return 1.0 - (top_two[:, 0] - top_two[:, 1])


def foreground_weight(probabilities: np.ndarray) -> np.ndarray:
    """Probability that a pixel is foreground: p (binary) or 1 − p_background (class 0).

    Returns:
        (N, H, W) float32 weights in [0, 1].
    """
    p = _as_probabilities(probabilities)
    return np.clip(p if p.ndim == 3 else 1.0 - p[:, 0], 0.0, 1.0)


PIXEL_MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "entropy": pixel_entropy,
    "margin": pixel_margin_uncertainty,
}


@UNCERTAINTY_AGGREGATIONS.register("mean")
def mean_aggregation(
    pixel_uncertainty: np.ndarray, foreground_weight: np.ndarray, *, top_fraction: float = 0.1
) -> np.ndarray:
    """Mean pixel uncertainty of each image."""
    return pixel_uncertainty.mean(axis=1, dtype=np.float64)


@UNCERTAINTY_AGGREGATIONS.register("top_fraction")
def top_fraction_aggregation(
    pixel_uncertainty: np.ndarray, foreground_weight: np.ndarray, *, top_fraction: float = 0.1
) -> np.ndarray:
    """Mean of the ``top_fraction`` most uncertain pixels of each image (at least one pixel)."""
    n_pixels = pixel_uncertainty.shape[1]
    n_top = max(1, int(np.ceil(top_fraction * n_pixels)))
    top = np.partition(pixel_uncertainty, n_pixels - n_top, axis=1)[:, n_pixels - n_top :]
    return top.mean(axis=1, dtype=np.float64)


@UNCERTAINTY_AGGREGATIONS.register("foreground_weighted")
def foreground_weighted_aggregation(
    pixel_uncertainty: np.ndarray, foreground_weight: np.ndarray, *, top_fraction: float = 0.1
) -> np.ndarray:
    """Foreground-probability-weighted mean uncertainty (0 for an image with no foreground)."""
    weights = foreground_weight.astype(np.float64)
    total = weights.sum(axis=1)
    weighted = (weights * pixel_uncertainty).sum(axis=1)
    return np.divide(weighted, total, out=np.zeros_like(weighted), where=total > 0)


def item_uncertainty(
    probabilities: np.ndarray,
    measure: UncertaintyMeasure = "entropy",
    aggregation: str = "mean",
    top_fraction: float = 0.1,
    chunk_items: int = 32,
) -> np.ndarray:
    """One uncertainty value per image (higher = more uncertain).

    Args:
        probabilities: (N, K, H, W) or (N, H, W) probabilities.
        measure: per-pixel measure, ``"entropy"`` or ``"margin"``.
        aggregation: a name in :data:`UNCERTAINTY_AGGREGATIONS` (``"mean"``, ``"top_fraction"``,
            ``"foreground_weighted"``, or a plugin).
        top_fraction: fraction of pixels for ``"top_fraction"``, in (0, 1].
        chunk_items: images processed at once (bounds temporary memory).

    Returns:
        (N,) float64 uncertainties.
    """
    if measure not in PIXEL_MEASURES:
        raise ConfigError(
            f"uncertainty measure must be one of {sorted(PIXEL_MEASURES)}, got {measure!r}"
        )
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    aggregate = UNCERTAINTY_AGGREGATIONS.get(aggregation)
    pixel_measure = PIXEL_MEASURES[measure]
    n_items = np.shape(probabilities)[0]
    result = np.empty(n_items, dtype=np.float64)
    for start in range(0, n_items, chunk_items):
        chunk = _as_probabilities(probabilities[start : start + chunk_items])
        n_chunk = chunk.shape[0]
        pixels = pixel_measure(chunk).reshape(n_chunk, -1)
        weights = foreground_weight(chunk).reshape(n_chunk, -1)
        result[start : start + n_chunk] = aggregate(pixels, weights, top_fraction=top_fraction)
    return result
