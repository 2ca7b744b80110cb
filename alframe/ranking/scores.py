"""Per-image consistency scores and label-free baselines — pure NumPy.

Notation (docs/methods/cte.md): ``p_u`` and ``p_a`` are the clean and perturbed class
probabilities of one image, ``b = p > t`` the binary foreground, and ``M = b_u ∨ b_a`` the
evaluation mask (pixels that are background in both predictions are ignored). An image with
``|M| = 0`` gets no per-image score (NaN), never a perfect one.

**Dataset score (one rule for every model):** the mean of the per-image scores weighted by
``|M|`` (:func:`evaluation_mask_size`), over *all* target images. An image whose clean and
perturbed predictions are both empty has weight 0: it neither helps nor hurts, for every model
alike, so all models are scored on the same images and pixels carry equal weight (for binary NHD
and EI this is exactly the score of all masked pixels pooled over the data set; with several
classes an image's score is its mean over classes and its weight the |M| summed over classes). A model with no
foreground anywhere has no score (NaN) and is flagged by the degenerate-model guard
(:mod:`alframe.ranking.guard`) instead of dropping out of the ranking.

Multi-class probabilities are scored one-vs-rest for every foreground class ``c = 1..K-1`` and
averaged over the classes with a non-empty mask [default].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = [
    "adapted_rand_score",
    "ars_mask_size",
    "effective_invariance",
    "evaluation_mask_size",
    "hopkins_statistic",
    "information_maximisation",
    "mean_entropy",
    "mutual_information",
    "nhd_score",
    "one_vs_rest",
    "per_image_dice",
    "weighted_mean",
]

_EPS = 1e-12


def one_vs_rest(proba: np.ndarray) -> np.ndarray:
    """Foreground probability of every foreground class.

    Args:
        proba: (K, H, W) class probabilities (K = 2 for binary problems).

    Returns:
        (K − 1, H, W) — channel c − 1 holds the probability of class c.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"expected (K, H, W) probabilities with K >= 2, got {p.shape}")
    return p[1:]


def _check_pair(p_clean: np.ndarray, p_pert: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = one_vs_rest(p_clean)
    a = one_vs_rest(p_pert)
    if u.shape != a.shape:
        raise ValueError(f"clean and perturbed shapes differ: {p_clean.shape} vs {p_pert.shape}")
    return u, a


def evaluation_mask_size(p_clean: np.ndarray, p_pert: np.ndarray, threshold: float = 0.5) -> int:
    """|M| summed over the foreground classes: the weight of an image in the dataset score.

    Args:
        p_clean: (K, H, W) clean probabilities.
        p_pert: (K, H, W) perturbed probabilities.
        threshold: foreground threshold t.

    Returns:
        The number of (class, pixel) pairs predicted foreground in either prediction.
    """
    u, a = _check_pair(p_clean, p_pert)
    return int(np.count_nonzero((u > threshold) | (a > threshold)))


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Mean of the finite ``values`` weighted by ``weights`` (NaN when the weights sum to 0).

    Args:
        values: (N,) per-image scores (NaN where not scorable).
        weights: (N,) non-negative weights (0 where not scorable).
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(v) & (w > 0)
    total = float(w[keep].sum())
    return float((v[keep] * w[keep]).sum() / total) if total > 0 else math.nan


def nhd_score(p_clean: np.ndarray, p_pert: np.ndarray, threshold: float = 0.5) -> float:
    """1 − normalised Hamming distance of the two binary foregrounds inside their union.

    NHD = |{i ∈ M : b_u ≠ b_a}| / |M| = 1 − IoU(b_u, b_a).

    Args:
        p_clean: (K, H, W) clean probabilities.
        p_pert: (K, H, W) perturbed probabilities.
        threshold: foreground threshold t.

    Returns:
        1 − NHD in [0, 1] (higher = more consistent); NaN when every class has ``|M| = 0``.
    """
    u, a = _check_pair(p_clean, p_pert)
    values = []
    for pu, pa in zip(u, a, strict=True):
        bu, ba = pu > threshold, pa > threshold
        union = int(np.count_nonzero(bu | ba))
        if union == 0:
            continue
        values.append(1.0 - np.count_nonzero(bu ^ ba) / union)
    return float(np.mean(values)) if values else math.nan


def effective_invariance(p_clean: np.ndarray, p_pert: np.ndarray, threshold: float = 0.5) -> float:
    """Effective invariance inside the union mask.

    c = p if b else 1 − p; EI_i = sqrt(c_u,i · c_a,i) where b_u,i = b_a,i, else 0; score = mean of
    EI_i over M.

    Args:
        p_clean: (K, H, W) clean probabilities.
        p_pert: (K, H, W) perturbed probabilities.
        threshold: foreground threshold t.

    Returns:
        EI in [0, 1] (higher = more consistent); NaN when every class has ``|M| = 0``.
    """
    u, a = _check_pair(p_clean, p_pert)
    values = []
    for pu, pa in zip(u, a, strict=True):
        bu, ba = pu > threshold, pa > threshold
        union = bu | ba
        if not union.any():
            continue
        cu = np.where(bu, pu, 1.0 - pu)
        ca = np.where(ba, pa, 1.0 - pa)
        ei = np.where(bu == ba, np.sqrt(cu * ca), 0.0)
        values.append(float(ei[union].mean()))
    return float(np.mean(values)) if values else math.nan


def _boundary_band(labels: np.ndarray) -> np.ndarray:
    """Pixels where the 3×3 grey dilation and erosion of a label map differ."""
    from scipy import ndimage

    footprint = np.ones((3, 3), dtype=bool)
    dilated = ndimage.grey_dilation(labels, footprint=footprint, mode="nearest")
    eroded = ndimage.grey_erosion(labels, footprint=footprint, mode="nearest")
    return np.asarray(dilated != eroded)


def adapted_rand_score(labels_clean: np.ndarray, labels_pert: np.ndarray) -> float:
    """1 − adapted Rand error between two instance label maps (CTE-ARS).

    M = (L_u > 0) ∨ (L_a > 0) minus a one-pixel band along the boundaries of L_u; inside M every
    remaining background pixel (of either map) gets its own id, so background is never one big
    "instance"; the score is 1 − :func:`skimage.metrics.adapted_rand_error` of L_u[M] vs L_a[M].

    Args:
        labels_clean: (H, W) integer instance labels of the clean prediction (0 = background).
        labels_pert: (H, W) integer instance labels of the perturbed prediction.

    Returns:
        The score in [0, 1]; NaN when M is empty.
    """
    from skimage.metrics import adapted_rand_error

    lu, la, mask = _ars_mask(labels_clean, labels_pert)
    count = int(mask.sum())
    if count == 0:
        return math.nan
    u, a = lu[mask], la[mask]
    offset = int(max(u.max(), a.max())) + 1
    unique_ids = offset + np.arange(count, dtype=np.int64)
    u = np.where(u == 0, unique_ids, u)
    a = np.where(a == 0, unique_ids, a)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # Only single-pixel segments in both maps: skimage divides 0 by 0 (NaN = not scorable).
        warnings.simplefilter("ignore", RuntimeWarning)
        error = adapted_rand_error(u[None, :], a[None, :], ignore_labels=())[0]
    return float(1.0 - error)


def _ars_mask(
    labels_clean: np.ndarray, labels_pert: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lu = np.asarray(labels_clean).astype(np.int64)
    la = np.asarray(labels_pert).astype(np.int64)
    if lu.shape != la.shape or lu.ndim != 2:
        raise ValueError(f"expected two (H, W) label maps of one shape, got {lu.shape}, {la.shape}")
    return lu, la, ((lu > 0) | (la > 0)) & ~_boundary_band(lu)


def ars_mask_size(labels_clean: np.ndarray, labels_pert: np.ndarray) -> int:
    """|M| of :func:`adapted_rand_score` (foreground of either map, boundary band removed)."""
    return int(_ars_mask(labels_clean, labels_pert)[2].sum())


def _entropy(proba: np.ndarray, axis: int) -> np.ndarray:
    p = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)
    return np.asarray(-(p * np.log(p)).sum(axis=axis))


def mean_entropy(proba: np.ndarray) -> float:
    """Mean pixel entropy (nats) of (K, H, W) probabilities — lower means more confident."""
    return float(_entropy(proba, axis=0).mean())


def information_maximisation(proba: np.ndarray) -> float:
    """IM = H(mean p) − mean H(p) over the pixels of (K, H, W) probabilities (nats).

    High when pixels are individually confident (low mean entropy) and classes are used in a
    balanced way (high entropy of the mean prediction).
    """
    p = np.asarray(proba, dtype=np.float64)
    marginal = p.reshape(p.shape[0], -1).mean(axis=1)
    return float(_entropy(marginal, axis=0) - _entropy(p, axis=0).mean())


def mutual_information(proba: np.ndarray) -> float:
    """IM normalised by ln K, the mutual-information term of the Transfer Score (in [0, 1])."""
    k = int(np.asarray(proba).shape[0])
    return information_maximisation(proba) / math.log(k)


def hopkins_statistic(features: np.ndarray, rng: np.random.Generator, n_probes: int = 64) -> float:
    """Hopkins statistic of a point cloud: ~0.5 for uniform data, → 1 for clustered data.

    m probes: u_j = distance from a uniform point in the bounding box to its nearest data point,
    w_j = distance from a sampled data point to its nearest *other* data point;
    H = Σ u / (Σ u + Σ w) (the original form without d-th powers, which saturate at 0 or 1 for
    the 16–64-dimensional decoder features of segmentation models).

    Args:
        features: (N, D) points (e.g. decoder features of the pixels of one image).
        rng: generator for the probes.
        n_probes: m (capped at N − 1).

    Returns:
        H in [0, 1]; NaN with fewer than 3 points or a degenerate (zero-extent) cloud.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        return math.nan
    low, high = x.min(axis=0), x.max(axis=0)
    if not np.any(high > low):
        return math.nan
    n, dim = x.shape
    m = min(n_probes, n - 1)
    uniform = rng.uniform(low, high, size=(m, dim))
    sampled = rng.choice(n, size=m, replace=False)

    def nearest(queries: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
        d2 = (
            (queries**2).sum(axis=1, keepdims=True)
            - 2.0 * queries @ x.T
            + (x**2).sum(axis=1)[None, :]
        )
        if exclude is not None:
            d2[np.arange(len(queries)), exclude] = np.inf
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    u = nearest(uniform, None)
    w = nearest(x[sampled], sampled)
    u_sum, w_sum = float(u.sum()), float(w.sum())
    if u_sum + w_sum == 0.0:
        return math.nan
    return u_sum / (u_sum + w_sum)


def per_image_dice(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Foreground-mean Dice of one image (a class absent from both scores 1).

    Args:
        pred: (H, W) predicted class indices.
        target: (H, W) true class indices (−1 = unlabelled, ignored).
        num_classes: K.

    Returns:
        Mean Dice over the classes 1..K−1.
    """
    valid = target >= 0
    values = []
    for c in range(1, num_classes):
        p = (pred == c) & valid
        g = (target == c) & valid
        total = int(p.sum()) + int(g.sum())
        values.append(1.0 if total == 0 else 2.0 * int((p & g).sum()) / total)
    return float(np.mean(values))


MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds of mAP@0.5:0.95."""


def instance_average_precision(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    thresholds: Sequence[float] = MAP_THRESHOLDS,
) -> float:
    """mAP@0.5:0.95 of an instance label map: mean over IoU thresholds t of TP / (TP + FP + FN).

    A predicted and a true instance match at t when their IoU exceeds t; for t >= 0.5 an instance
    can match at most one other, so counting pairs gives the matching (the cell-segmentation
    convention of the Data Science Bowl 2018 and StarDist).

    Args:
        pred_labels: (H, W) predicted instance ids (0 = background).
        true_labels: (H, W) true instance ids (0 = background).
        thresholds: IoU thresholds, each >= 0.5.

    Returns:
        The mean over thresholds; 1.0 when neither map has an instance.
    """
    if pred_labels.shape != true_labels.shape:
        raise ValueError(f"label maps differ in shape: {pred_labels.shape} vs {true_labels.shape}")
    if min(thresholds) < 0.5:
        raise ValueError("thresholds below 0.5 would need an explicit matching; use >= 0.5")
    pred_ids, pred_index = np.unique(pred_labels.ravel(), return_inverse=True)
    true_ids, true_index = np.unique(true_labels.ravel(), return_inverse=True)
    # (P, T) pixel counts of every (predicted id, true id) pair, background rows/columns dropped.
    overlap = np.zeros((pred_ids.size, true_ids.size), dtype=np.int64)
    np.add.at(overlap, (pred_index, true_index), 1)
    pred_area = overlap.sum(axis=1)
    true_area = overlap.sum(axis=0)
    keep_p, keep_t = pred_ids != 0, true_ids != 0
    inter = overlap[np.ix_(keep_p, keep_t)].astype(np.float64)
    union = pred_area[keep_p][:, None] + true_area[keep_t][None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    n_pred, n_true = int(keep_p.sum()), int(keep_t.sum())
    if n_pred == 0 and n_true == 0:
        return 1.0
    values = []
    for t in thresholds:
        tp = int((iou > t).sum())
        values.append(tp / (n_pred + n_true - tp))
    return float(np.mean(values))
