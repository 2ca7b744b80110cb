"""Static kNN terms of XSSR: density over the target pool and novelty with respect to the source."""

from __future__ import annotations

import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.index import DEFAULT_EXACT_MAX_ITEMS, Device, exact_knn, self_knn
from alframe.index.self_knn import SelfKnnMethod

DEFAULT_DENSITY_K = 10
DEFAULT_NOVELTY_K = 5
DEFAULT_DENSITY_EPSILON = 1e-6


def knn_mean_distance(
    embeddings: np.ndarray,
    k: int,
    reference: np.ndarray | None = None,
    *,
    method: SelfKnnMethod = "auto",
    exact_max_items: int = DEFAULT_EXACT_MAX_ITEMS,
    n_probe: int = 4,
    seed: int = 0,
    device: Device = "cpu",
    reference_size: int | None = None,
) -> np.ndarray:
    """Mean Euclidean distance of every item to its k nearest neighbours.

    Args:
        embeddings: (N, D) float32 items.
        k: number of neighbours (≥ 1).
        reference: (M, D) float32 set the neighbours come from; ``None`` = the items themselves,
            each item's own row excluded (needs k ≤ N − 1).
        method: self-kNN method when ``reference`` is None (see :func:`alframe.index.self_knn`);
            a separate reference set is always searched exactly (it is usually small: cost
            O(N·M·D)).
        exact_max_items: ``"auto"`` switches to the cells method above this many items.
        n_probe: cells probed by the cells method.
        seed: seed of the cells method's k-means.
        device: FAISS device.
        reference_size: self-kNN only: neighbours from a seeded subsample of this many items
            (see :func:`alframe.index.self_knn`); ``None`` = all items.

    Returns:
        (N,) float64 mean distances.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if reference is None:
        distances, _ = self_knn(
            embeddings,
            k,
            method=method,
            exact_max_items=exact_max_items,
            n_probe=n_probe,
            seed=seed,
            device=device,
            reference_size=reference_size,
        )
    else:
        distances, _ = exact_knn(embeddings, reference, k, metric="l2")
    return distances.mean(axis=1, dtype=np.float64)


def density(
    embeddings: np.ndarray,
    k: int = DEFAULT_DENSITY_K,
    epsilon: float = DEFAULT_DENSITY_EPSILON,
    *,
    method: SelfKnnMethod = "auto",
    exact_max_items: int = DEFAULT_EXACT_MAX_ITEMS,
    n_probe: int = 4,
    seed: int = 0,
    device: Device = "cpu",
    reference_size: int | None = None,
) -> np.ndarray:
    """XSSR density ρ(x) = 1 / (ε + mean distance to the k nearest other pool items).

    Args:
        embeddings: (N, D) float32 target pool (labelled and unlabelled).
        k: neighbours (clipped to N − 1; a single-item pool has density 1).
        epsilon: ε > 0, keeps exact duplicates finite.
        method: self-kNN method (see :func:`knn_mean_distance`).
        exact_max_items: ``"auto"`` threshold of the self-kNN method.
        n_probe: cells probed by the cells method.
        seed: seed of the cells method's k-means.
        device: FAISS device.
        reference_size: neighbours from a seeded subsample of this many pool items instead of
            the whole pool (cost ÷ N / reference_size; a smoothed estimate, see
            :data:`alframe.strategies.xssr` for where it is accurate); ``None`` = exact
            neighbourhoods.

    Returns:
        (N,) float64 densities (larger = denser neighbourhood).
    """
    if not epsilon > 0:
        raise ConfigError(f"density epsilon must be > 0, got {epsilon}")
    n_items = embeddings.shape[0]
    if n_items <= 1:
        return np.ones(n_items, dtype=np.float64)
    mean_distance = knn_mean_distance(
        embeddings,
        min(k, n_items - 1),
        method=method,
        exact_max_items=exact_max_items,
        n_probe=n_probe,
        seed=seed,
        device=device,
        reference_size=None
        if reference_size is None or reference_size >= n_items
        else max(int(reference_size), min(k, n_items - 1) + 1),
    )
    return 1.0 / (epsilon + mean_distance)


def novelty(
    embeddings: np.ndarray,
    source_embeddings: np.ndarray,
    k: int = DEFAULT_NOVELTY_K,
) -> np.ndarray:
    """XSSR novelty ν(x) = mean distance to the k nearest source items (k clipped to |S|).

    Args:
        embeddings: (N, D) float32 target pool.
        source_embeddings: (S, D) float32 source set, S ≥ 1.
        k: neighbours.

    Returns:
        (N,) float64 novelties (larger = farther from the source domain).
    """
    if source_embeddings.shape[0] == 0:
        raise DataError("source_embeddings is empty; pass None to run XSSR without novelty")
    return knn_mean_distance(
        embeddings, min(k, source_embeddings.shape[0]), reference=source_embeddings
    )
