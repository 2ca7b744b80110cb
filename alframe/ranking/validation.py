"""Validating a ranking against true target performance (when target labels exist).

For every ranker: x = the model's score oriented so that higher is better, y = the model's true
target Dice; Pearson r, Spearman ρ and Kendall τ-b with two-sided permutation p-values (y is
permuted against x; exact enumeration when n! ≤ the number of resamples). A positive correlation
means the ranker orders the models the right way round, whatever its ``higher_is_better``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alframe.errors import DataError
from alframe.ranking import scores
from alframe.ranking.images import TargetImages
from alframe.ranking.predictors import Predictor

__all__ = [
    "CORRELATIONS",
    "Correlation",
    "correlate",
    "kendall_tau_b",
    "pearson",
    "plot_scores",
    "spearman",
    "true_dice",
]

CORRELATIONS = ("pearson", "spearman", "kendall")


@dataclass(frozen=True)
class Correlation:
    """One correlation coefficient with its permutation p-value.

    Attributes:
        method: ``pearson``, ``spearman`` or ``kendall`` (τ-b).
        statistic: the coefficient (NaN when undefined, e.g. constant scores).
        p_value: two-sided permutation p-value.
        n: number of (x, y) pairs.
        n_resamples: permutations used (n! when exact).
    """

    method: str
    statistic: float
    p_value: float
    n: int
    n_resamples: int


def _pearson_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson r of x (n,) with every row of ys (R, n)."""
    xc = x - x.mean()
    yc = ys - ys.mean(axis=1, keepdims=True)
    denominator = math.sqrt(float((xc**2).sum())) * np.sqrt((yc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((yc @ xc) / denominator)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), like scipy.stats.rankdata."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(values), dtype=np.float64)


def _pair_signs(values: np.ndarray) -> np.ndarray:
    """sign(v_i − v_j) for i < j of (..., n) → (..., n(n−1)/2)."""
    i, j = np.triu_indices(values.shape[-1], k=1)
    return np.sign(values[..., i] - values[..., j])


def _kendall_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Kendall τ-b of x (n,) with every row of ys (R, n)."""
    sx = _pair_signs(x)
    sy = _pair_signs(ys)
    denominator = math.sqrt(float((sx**2).sum())) * np.sqrt((sy**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((sy @ sx) / denominator)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation coefficient."""
    return float(_pearson_rows(np.asarray(x, float), np.asarray(y, float)[None])[0])


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman ρ (Pearson of average ranks)."""
    return pearson(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))


def kendall_tau_b(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall τ-b (tie-corrected)."""
    return float(_kendall_rows(np.asarray(x, float), np.asarray(y, float)[None])[0])


def correlate(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Correlation]:
    """Pearson, Spearman and Kendall τ-b with permutation p-values.

    The p-value is two-sided: p = min(1, 2·min(P(T* ≥ t), P(T* ≤ t))), where T* runs over the
    permutations of y (all n! of them when n! ≤ ``n_resamples``; otherwise ``n_resamples``
    seeded draws, with the observed ordering counted once, (k + 1) / (R + 1)). This is the
    convention of :func:`scipy.stats.permutation_test`.

    Args:
        x: (n,) scores.
        y: (n,) true performance.
        n_resamples: random permutations (1000 in the CTE protocol).
        seed: seed of the permutations.

    Returns:
        ``{"pearson": ..., "spearman": ..., "kendall": ...}``.

    Raises:
        DataError: x and y differ in length or contain non-finite values.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise DataError(f"correlate: x and y must be two (n,) arrays, got {xs.shape}, {ys.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise DataError("correlate: scores and performance must be finite (drop NaN models first)")
    n = xs.size
    exact = n <= 12 and math.factorial(n) <= n_resamples
    if exact:
        order = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        order = (
            np.stack([rng.permutation(n) for _ in range(n_resamples)])
            if n
            else np.zeros((0, 0), dtype=np.int64)
        )
    functions = {
        "pearson": (lambda a, b: _pearson_rows(a, b), xs, ys),
        "spearman": (lambda a, b: _pearson_rows(a, b), _ranks(xs), _ranks(ys)),
        "kendall": (lambda a, b: _kendall_rows(a, b), xs, ys),
    }
    results: dict[str, Correlation] = {}
    for method, (function, a, b) in functions.items():
        observed = float(function(a, b[None])[0]) if n >= 2 else math.nan
        if not math.isfinite(observed):
            results[method] = Correlation(method, math.nan, math.nan, n, len(order))
            continue
        null = function(a, b[order])
        # Float noise must not turn the observed permutation itself into a strict inequality.
        tolerance = 1e-12 * max(1.0, abs(observed))
        greater = int((null >= observed - tolerance).sum())
        less = int((null <= observed + tolerance).sum())
        adjust = 0 if exact else 1
        total = len(order) + adjust
        p_value = min(1.0, 2.0 * min((greater + adjust) / total, (less + adjust) / total))
        results[method] = Correlation(method, observed, p_value, n, len(order))
    return results


def true_dice(predictor: Predictor, images: TargetImages, batch_size: int = 16) -> np.ndarray:
    """Per-image foreground Dice (argmax prediction) of a model on labelled target images.

    Args:
        predictor: the model.
        images: target images with labels.
        batch_size: images per forward pass.

    Returns:
        (N,) float64 Dice per image.

    Raises:
        DataError: the images have no labels.
    """
    return _per_image(
        predictor,
        images,
        batch_size,
        lambda proba, label: scores.per_image_dice(proba.argmax(axis=0), label, proba.shape[0]),
    )


def _per_image(
    predictor: Predictor,
    images: TargetImages,
    batch_size: int,
    score: Callable[[np.ndarray, np.ndarray], float],
) -> np.ndarray:
    """``score(proba (K, H, W), label)`` for every image, in one streamed inference pass."""
    labels = images.label_array()
    out = np.empty(len(images), dtype=np.float64)
    for positions, batch in images.batches(batch_size):
        proba = predictor.predict_proba(batch)
        for offset, index in enumerate(range(positions.start, positions.stop)):
            out[index] = score(proba[offset], labels[index])
    return out


def true_instance_map(
    predictor: Predictor,
    images: TargetImages,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Per-image mAP@0.5:0.95 of a model's instances against instance label maps.

    Args:
        predictor: the model.
        images: target images whose labels are instance label maps (0 = background).
        postprocess: (K, H, W) probabilities → (H, W) instance ids; default connected components
            of the foreground (the same default as CTE-ARS).
        batch_size: images per forward pass.

    Returns:
        (N,) float64 mAP per image.

    Raises:
        DataError: the images have no labels.
    """
    from alframe.ranking.rankers import connected_components

    to_instances = postprocess or connected_components
    return _per_image(
        predictor,
        images,
        batch_size,
        lambda proba, label: scores.instance_average_precision(to_instances(proba), label),
    )


def plot_scores(
    scores_by_ranker: Mapping[str, Mapping[str, float]],
    performance: Mapping[str, float],
    path: str | os.PathLike[str],
    correlations: Mapping[str, Mapping[str, Correlation]] | None = None,
    performance_label: str = "true Dice",
) -> Path:
    """Scatter plots of score vs true performance, one panel per ranker (matplotlib, Agg).

    Args:
        scores_by_ranker: ranker → model → dataset score.
        performance: model → true performance.
        path: the PNG to write.
        correlations: ranker → correlations, shown in the panel titles.
        performance_label: y-axis label.

    Returns:
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(scores_by_ranker)
    if not names:
        raise DataError("plot_scores: no ranker scores to plot")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for axis, name in zip(axes.ravel(), names, strict=False):
        models = [m for m in scores_by_ranker[name] if m in performance]
        xs = [scores_by_ranker[name][m] for m in models]
        ys = [performance[m] for m in models]
        axis.scatter(xs, ys, s=18)
        title = name
        if correlations and name in correlations:
            c = correlations[name]
            title += f"\nρ={c['spearman'].statistic:.2f} τ={c['kendall'].statistic:.2f}"
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("score", fontsize=8)
        axis.set_ylabel(performance_label, fontsize=8)
    for axis in axes.ravel()[len(names) :]:
        axis.axis("off")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
