"""Does an embedding separate the pool at all? A label-free neighbour-contrast diagnostic.

Every embedding-based strategy (XSSR, CoreSet, TypiClust) assumes that nearby embeddings are
similar images. When an encoder barely separates the pool, each item's nearest neighbour is
hardly closer than a random item and those strategies pick little better than random.

``ratio = mean nearest-neighbour distance / mean distance between random pairs`` measures this,
but even structureless data has a ratio below 1 that depends on N and D. So the ratio is compared
with the same statistic after shuffling every dimension independently across items (same values,
no joint structure): ``contrast = 1 − ratio / ratio_shuffled``. About 0 means neighbours are no
closer than in a structureless cloud of the same values; the masked autoencoder of the
multi-site chest X-ray benchmark reads 0.73 (docs/benchmarks/multisite_cxr.md). Pure NumPy; at
most ``max_items`` items are used (a seeded subsample), so the cost is bounded on any pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alframe._rows import is_on_disk
from alframe.errors import DataError

__all__ = ["LOW_CONTRAST", "NeighbourContrast", "neighbour_contrast"]

LOW_CONTRAST = 0.2
"""Below this contrast ``alframe select`` says that the embedding barely separates the pool."""


@dataclass(frozen=True)
class NeighbourContrast:
    """Outcome of :func:`neighbour_contrast`.

    Attributes:
        contrast: ``1 − ratio / shuffled_ratio`` (≈ 0: no neighbour structure; → 1: strong).
        ratio: mean nearest-neighbour distance / mean pairwise distance of the embedding.
        shuffled_ratio: the same for the dimension-wise shuffled embedding.
        n_items: items used (after subsampling).
    """

    contrast: float
    ratio: float
    shuffled_ratio: float
    n_items: int

    @property
    def low(self) -> bool:
        """Whether the contrast is below :data:`LOW_CONTRAST`."""
        return self.contrast < LOW_CONTRAST


def _nn_to_mean_ratio(x: np.ndarray) -> float:
    squared = (x**2).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] - 2.0 * x @ x.T + squared[None, :], 0.0))
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1).mean()
    off_diagonal = distances[np.isfinite(distances)]
    mean = off_diagonal.mean()
    return float(nearest / mean) if mean > 0 else 1.0


def neighbour_contrast(
    embeddings: np.ndarray, max_items: int = 2000, seed: int | np.random.Generator = 0
) -> NeighbourContrast:
    """How much closer nearest neighbours are than in a structureless cloud of the same values.

    Args:
        embeddings: (N, D) pool embeddings, N ≥ 3, in RAM or an
            :class:`alframe._rows.OnDiskRows` store (then only the subsample's rows are read:
            the same rows, hence the same contrast, as from RAM).
        max_items: items used at most (seeded subsample; the cost is O(max_items²·D)).
        seed: seed or Generator of the subsample and the shuffle.

    Returns:
        The contrast and its parts.

    Raises:
        DataError: fewer than three items, or non-finite values.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if is_on_disk(embeddings):
        # Larger than RAM: gather only the subsample (drawn exactly as below).
        store: Any = embeddings
        n_items = store.shape[0]
        if n_items < 3:
            raise DataError(
                f"neighbour contrast needs (N >= 3, D) embeddings, got shape {store.shape}"
            )
        rows = (
            np.sort(rng.choice(n_items, size=max_items, replace=False))
            if n_items > max_items
            else np.arange(n_items)
        )
        x = np.asarray(store[rows], dtype=np.float64)
        if not np.isfinite(x).all():
            raise DataError(f"embeddings in {store.path} contain NaN or infinite values")
    else:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 3:
            raise DataError(f"neighbour contrast needs (N >= 3, D) embeddings, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError("embeddings contain NaN or infinite values")
        if x.shape[0] > max_items:
            x = x[np.sort(rng.choice(x.shape[0], size=max_items, replace=False))]
    shuffled = np.stack([rng.permutation(column) for column in x.T], axis=1)
    ratio = _nn_to_mean_ratio(x)
    shuffled_ratio = _nn_to_mean_ratio(shuffled)
    contrast = 1.0 - ratio / shuffled_ratio if shuffled_ratio > 0 else 0.0
    return NeighbourContrast(float(contrast), ratio, shuffled_ratio, int(x.shape[0]))
