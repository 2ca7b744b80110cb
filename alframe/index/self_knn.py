"""k nearest neighbours of every pool item among the other pool items (density needs this).

Exact search costs O(N²·D): fine up to a few ten thousand items, hours at 1M on a laptop CPU.
For large pools the ``"cells"`` method partitions the pool with k-means (the IVF idea) and, cell
by cell, searches the cell's members exactly against the members of the ``n_probe`` cells whose
centroids are nearest to the cell's centroid. Unlike a FAISS IVF index, which scans the probed
lists once per query (memory-bound, ~10× fewer FLOP/s), all queries of a cell share one
matrix-matrix product, so the search runs at BLAS speed. It is approximate: a neighbour just
across a cell border whose cell is not probed is missed and replaced by the next best one, which
can only overestimate kNN distances.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import faiss
import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.index.vector_index import (
    DEFAULT_BATCH_SIZE,
    Device,
    VectorIndex,
    _check_k,
    as_float32_rows,
)

SelfKnnMethod = Literal["auto", "exact", "cells"]
DEFAULT_EXACT_MAX_ITEMS = 20_000
KMEANS_POINTS_PER_CELL = 64
"""Training points per k-means cell of the cells method (a seeded sample of the pool)."""
ROW_BLOCK = 65_536
"""Rows per block when assigning items to cells."""


def drop_self_matches(
    distances: np.ndarray, indices: np.ndarray, query_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Removes each query's own row from its (k + 1)-NN list, keeping k neighbours.

    Rows in which the query itself was not returned (possible with exact duplicates) lose their
    farthest neighbour instead, so every row keeps exactly k.

    Args:
        distances: (Q, k + 1) neighbour distances, nearest first.
        indices: (Q, k + 1) neighbour rows.
        query_rows: (Q,) the row number of each query in the same numbering as ``indices``.

    Returns:
        ``(distances, indices)``, both (Q, k).
    """
    is_self = indices == query_rows[:, None]
    # Keep only the first self-match per row (robust even if a row somehow lists itself twice).
    first_self = np.argmax(is_self, axis=1)
    has_self = is_self[np.arange(is_self.shape[0]), first_self]
    drop_column = np.where(has_self, first_self, indices.shape[1] - 1)
    keep = np.ones(indices.shape, dtype=bool)
    keep[np.arange(indices.shape[0]), drop_column] = False
    k = indices.shape[1] - 1
    return distances[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def self_knn(
    embeddings: np.ndarray,
    k: int,
    *,
    method: SelfKnnMethod = "auto",
    exact_max_items: int = DEFAULT_EXACT_MAX_ITEMS,
    n_cells: int | None = None,
    n_probe: int = 4,
    seed: int = 0,
    device: Device = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean k nearest neighbours of every row among the other rows (self excluded).

    Args:
        embeddings: (N, D) vectors.
        k: neighbours per item, 1 ≤ k ≤ N − 1.
        method: ``"exact"`` brute force; ``"cells"`` k-means partitioned search (approximate,
            see module docstring); ``"auto"`` exact when N ≤ ``exact_max_items`` else cells.
        exact_max_items: the ``"auto"`` threshold.
        n_cells: k-means cells for ``"cells"``; default ``round(sqrt(N))``.
        n_probe: cells searched per cell (its own and the nearest others) for ``"cells"``.
        seed: k-means seed for ``"cells"``.
        device: FAISS device of the exact search (``"cpu"``, ``"gpu"``, ``"auto"``).
        batch_size: queries per FAISS call in the exact search.
        reference_size: when smaller than N, the neighbours come from a seeded uniform
            subsample of this many rows (the *reference*; a row in it is not its own
            neighbour), which cuts the search cost by N / reference_size. The distances are
            then those to the k nearest reference rows (larger than to the k nearest rows; a
            density built on them is a smoothed estimate).

    Returns:
        ``(distances, indices)``: (N, k) float32 Euclidean distances, nearest first, and (N, k)
        int64 neighbour rows.
    """
    matrix = as_float32_rows(embeddings, "embeddings")
    n_items = matrix.shape[0]
    k = _check_k(k, n_items - 1) if n_items > 1 else _check_k(k, 0)
    if method not in ("auto", "exact", "cells"):
        raise ConfigError(f"self-kNN method must be 'auto', 'exact' or 'cells', got {method!r}")
    if n_probe < 1:
        raise ConfigError(f"n_probe must be a positive integer, got {n_probe}")
    reference: np.ndarray | None = None
    if reference_size is not None:
        if isinstance(reference_size, bool) or reference_size < k + 1:
            raise ConfigError(
                f"reference_size must be an integer ≥ k + 1 = {k + 1}, got {reference_size!r}"
            )
        if reference_size < n_items:
            reference = reference_rows(n_items, int(reference_size), seed)
    use_cells = method == "cells" or (method == "auto" and n_items > exact_max_items)
    if use_cells:
        return _cells_self_knn(
            matrix, k, n_cells=n_cells, n_probe=n_probe, seed=seed, reference=reference
        )
    index = VectorIndex(matrix.shape[1], kind="flat", metric="l2", device=device)
    if reference is None:
        index.add(matrix)
        distances, indices = index.knn(matrix, k + 1, batch_size=batch_size)
        return drop_self_matches(distances, indices, np.arange(n_items, dtype=np.int64))
    index.add(np.ascontiguousarray(matrix[reference]))
    distances, indices = index.knn(matrix, k + 1, batch_size=batch_size)
    return drop_self_matches(distances, reference[indices], np.arange(n_items, dtype=np.int64))


def reference_rows(n_items: int, size: int, seed: int) -> np.ndarray:
    """The seeded reference subsample of :func:`self_knn`: ``size`` ascending rows of N."""
    generator = np.random.default_rng([seed, 0x5E1F])  # a stream of its own, not the k-means one
    return np.sort(generator.choice(n_items, size=size, replace=False)).astype(np.int64)


def _cells_self_knn(
    matrix: np.ndarray,
    k: int,
    *,
    n_cells: int | None,
    n_probe: int,
    seed: int,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    n_items, dim = matrix.shape
    n_database = n_items if reference is None else reference.size
    if n_cells is None:
        n_cells = max(1, round(math.sqrt(n_items)))
    n_cells = int(min(n_cells, n_database))
    if n_cells < 1:
        raise DataError("cannot partition an empty pool")
    kmeans = faiss.Kmeans(dim, n_cells, niter=10, seed=seed, max_points_per_centroid=64)
    # FAISS would subsample n_cells·64 training points itself; drawing them here (seeded) makes
    # the same cells from an in-RAM matrix and from an on-disk store, which is never copied whole.
    n_train = min(n_database, n_cells * KMEANS_POINTS_PER_CELL)
    if n_train < n_database:
        sample = np.sort(np.random.default_rng(seed).choice(n_database, n_train, replace=False))
        kmeans.train(
            np.ascontiguousarray(matrix[sample if reference is None else reference[sample]])
        )
    else:
        kmeans.train(np.ascontiguousarray(matrix[:] if reference is None else matrix[reference]))
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    cell_of_item = np.empty(n_items, dtype=np.int64)
    for start in range(0, n_items, ROW_BLOCK):
        block = np.ascontiguousarray(matrix[start : start + ROW_BLOCK])
        cell_of_item[start : start + block.shape[0]] = kmeans.index.search(block, 1)[1][:, 0]

    items_by_cell = np.argsort(cell_of_item, kind="stable")
    cell_sizes = np.bincount(cell_of_item, minlength=n_cells)
    cell_starts = np.concatenate(([0], np.cumsum(cell_sizes)))
    if reference is None:
        database_by_cell, database_sizes, database_starts = items_by_cell, cell_sizes, cell_starts
    else:
        reference_cells = cell_of_item[reference]
        database_by_cell = reference[np.argsort(reference_cells, kind="stable")]
        database_sizes = np.bincount(reference_cells, minlength=n_cells)
        database_starts = np.concatenate(([0], np.cumsum(database_sizes)))
    n_neighbour_cells = min(n_cells, max(4 * n_probe, 32))
    _, nearest_cells = faiss.knn(centroids, centroids, n_neighbour_cells)

    distances = np.empty((n_items, k), dtype=np.float32)
    indices = np.empty((n_items, k), dtype=np.int64)

    def search_cell(cell: int) -> None:
        members = items_by_cell[cell_starts[cell] : cell_starts[cell + 1]]
        if members.size == 0:
            return
        probed = _probed_cells(cell, nearest_cells[cell], database_sizes, n_probe, k + 1)
        database_rows = np.concatenate(
            [database_by_cell[database_starts[p] : database_starts[p + 1]] for p in probed]
        )
        cell_distances, cell_neighbours = faiss.knn(
            matrix[members], matrix[database_rows], k + 1, metric=faiss.METRIC_L2
        )
        cell_distances, cell_neighbours = drop_self_matches(
            cell_distances, database_rows[cell_neighbours], members
        )
        distances[members] = cell_distances  # cells are disjoint: no two threads share a row
        indices[members] = cell_neighbours

    # Per-cell searches are small: FAISS's OpenMP threads inside each call cost more than they
    # bring (4× slower on a busy 2-core machine), so cells run in parallel instead, one
    # single-threaded FAISS call each (FAISS releases the GIL).
    n_threads = max(1, faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=n_threads) as executor:
            list(executor.map(search_cell, range(n_cells)))
    finally:
        faiss.omp_set_num_threads(n_threads)
    np.maximum(distances, 0.0, out=distances)
    np.sqrt(distances, out=distances)
    return distances, indices


def _probed_cells(
    cell: int,
    nearest_cells: np.ndarray,
    cell_sizes: np.ndarray,
    n_probe: int,
    min_items: int,
) -> list[int]:
    """The cell itself, then its nearest cells, until ≥ n_probe cells and ≥ min_items items."""
    probed = [cell]
    total = int(cell_sizes[cell])

    def enough() -> bool:
        return len(probed) >= n_probe and total >= min_items

    for other in (int(c) for c in nearest_cells):
        if enough():
            return probed
        if other >= 0 and other != cell and cell_sizes[other] > 0:
            probed.append(other)
            total += int(cell_sizes[other])
    if total < min_items:  # rare: the precomputed neighbour list was too short; take any cells
        already = set(probed)
        for other in range(cell_sizes.size):
            if total >= min_items:
                break
            if other not in already and cell_sizes[other] > 0:
                probed.append(other)
                total += int(cell_sizes[other])
    return probed
