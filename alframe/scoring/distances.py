"""Chunked Euclidean distance helpers that never build an N×N (or N×|L|) matrix.

Squared distances use ``‖x‖² + ‖c‖² − 2·x·c``, so one pick costs one matrix-vector product over the
pool (a single streaming pass over the embedding matrix) instead of materialising ``X − c``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

ROW_CHUNK = 65_536
"""Rows per chunk for streaming passes."""

BLOCK_ELEMENTS = 16_777_216
"""Elements (float32) of the largest temporary distance block: 64 MiB."""


GREEDY_BLAS_THREADS = 1
"""BLAS threads used inside the greedy loops (see :func:`blas_thread_limit`)."""


@contextlib.contextmanager
def blas_thread_limit(n_threads: int | None) -> Iterator[None]:
    """Limits BLAS threads within the block (no-op for ``None`` or without threadpoolctl).

    The greedy loops alternate one memory-bound matrix-vector product with a few cheap NumPy
    operations, a thousand times. Extra BLAS threads barely speed up a memory-bound product but
    must be woken up for every call: on a busy 2-core machine this made a 10 000 × 256 pick
    9× slower with two threads than with one (1 ms vs 9 ms), and never faster at 1M items.
    """
    if n_threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        yield
        return
    with threadpool_limits(limits=n_threads, user_api="blas"):
        yield


def squared_row_norms(embeddings: np.ndarray, chunk_rows: int = ROW_CHUNK) -> np.ndarray:
    """‖x_i‖² of every row, computed chunk by chunk.

    Args:
        embeddings: (N, D) float32 matrix.
        chunk_rows: rows per chunk (bounds the temporary memory).

    Returns:
        (N,) float32 squared norms.
    """
    n_items = embeddings.shape[0]
    norms = np.empty(n_items, dtype=np.float32)
    for start in range(0, n_items, chunk_rows):
        block = embeddings[start : start + chunk_rows]
        norms[start : start + chunk_rows] = np.einsum("ij,ij->i", block, block)
    return norms


def squared_distances_to_rows(
    embeddings: np.ndarray, norms: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Squared Euclidean distances from every row of ``embeddings`` to a few of its rows.

    One streaming pass over ``embeddings`` (a matrix-vector product for one row, a thin
    matrix-matrix product for several).

    Args:
        embeddings: (N, D) float32 matrix.
        norms: (N,) float32 squared row norms of ``embeddings``.
        rows: (A,) int row indices (the centres).

    Returns:
        (A, N) float32 squared distances, clipped at 0 (rounding can make them slightly negative).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 1:
        dots = (embeddings @ embeddings[rows[0]])[None, :]
    else:
        centres_t = np.ascontiguousarray(embeddings[rows].T)  # (D, A): BLAS-friendly layout
        dots = np.ascontiguousarray((embeddings @ centres_t).T)
    dots *= -2.0
    dots += norms[None, :]
    dots += norms[rows][:, None]
    np.maximum(dots, 0.0, out=dots)
    return dots


def min_squared_distances_to_set(
    embeddings: np.ndarray,
    norms: np.ndarray,
    centre_rows: np.ndarray,
    block_elements: int = BLOCK_ELEMENTS,
) -> np.ndarray:
    """Squared distance from every row to its nearest row among ``centre_rows``.

    Computed in (row chunk × centre chunk) blocks of at most ``block_elements`` values, so the
    memory stays O(N + block) whatever the number of centres.

    Args:
        embeddings: (N, D) float32 matrix.
        norms: (N,) float32 squared row norms.
        centre_rows: (M,) int rows of the centres (e.g. the labelled items); M may be 0.
        block_elements: size of the largest temporary block.

    Returns:
        (N,) float32 squared distances (+inf everywhere when M = 0; exactly 0 at the centres).
    """
    squared, _ = nearest_centres(embeddings, norms, centre_rows, block_elements)
    return squared


def nearest_centres(
    embeddings: np.ndarray,
    norms: np.ndarray,
    centre_rows: np.ndarray,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`min_squared_distances_to_set`, also returning which centre is nearest.

    Returns:
        ``(squared, nearest)``: (N,) float32 squared distances and (N,) int64 positions in
        ``centre_rows`` of the nearest centre (-1 when M = 0). Centres are their own nearest.
    """
    n_items = embeddings.shape[0]
    centre_rows = np.asarray(centre_rows, dtype=np.int64)
    result = np.full(n_items, np.inf, dtype=np.float32)
    nearest = np.full(n_items, -1, dtype=np.int64)
    if centre_rows.size == 0 or n_items == 0:
        return result, nearest
    centre_chunk = int(min(centre_rows.size, max(1, block_elements // 1024)))
    row_chunk = int(max(1, block_elements // centre_chunk))
    for centre_start in range(0, centre_rows.size, centre_chunk):
        chunk_rows = centre_rows[centre_start : centre_start + centre_chunk]
        centres_t = np.ascontiguousarray(embeddings[chunk_rows].T)
        centre_norms = norms[chunk_rows]
        for start in range(0, n_items, row_chunk):
            stop = min(start + row_chunk, n_items)
            block = embeddings[start:stop] @ centres_t
            block *= -2.0
            block += norms[start:stop, None]
            block += centre_norms[None, :]
            block_nearest = block.argmin(axis=1)
            block_min = block[np.arange(stop - start), block_nearest]
            closer = block_min < result[start:stop]
            result[start:stop][closer] = block_min[closer]
            nearest[start:stop][closer] = block_nearest[closer] + centre_start
    np.maximum(result, 0.0, out=result)
    result[centre_rows] = 0.0
    nearest[centre_rows] = np.arange(centre_rows.size)
    return result, nearest
