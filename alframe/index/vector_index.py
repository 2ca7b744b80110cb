"""A thin FAISS wrapper: exact flat search by default, IVF / HNSW for large pools, CPU or GPU.

Distances returned for the ``"l2"`` metric are true Euclidean distances (FAISS itself returns
squared distances); for ``"ip"`` they are inner products (larger = closer).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, cast

import faiss
import numpy as np

from alframe._rows import OnDiskRows, is_on_disk
from alframe.errors import ConfigError, DataError

IndexKind = Literal["flat", "ivf", "hnsw"]
Metric = Literal["l2", "ip"]
Device = Literal["cpu", "gpu", "auto"]

_METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}
DEFAULT_BATCH_SIZE = 16_384


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 for faiss-cpu builds)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def resolve_device(device: str) -> Literal["cpu", "gpu"]:
    """Maps ``"auto"`` to ``"gpu"`` when FAISS sees a GPU, else ``"cpu"``.

    Raises:
        ConfigError: unknown device, or ``"gpu"`` without a GPU-enabled FAISS.
    """
    if device not in ("cpu", "gpu", "auto"):
        raise ConfigError(f"index device must be 'cpu', 'gpu' or 'auto', got {device!r}")
    available = gpu_count() > 0 and hasattr(faiss, "StandardGpuResources")
    if device == "gpu" and not available:
        raise ConfigError(
            "index device 'gpu' requested but FAISS sees no GPU (faiss-cpu build or no CUDA "
            "device); install faiss-gpu on a CUDA machine or use device='cpu'"
        )
    if device == "auto":
        return "gpu" if available else "cpu"
    return "gpu" if device == "gpu" else "cpu"


def as_float32_rows(vectors: Any, name: str, dim: int | None = None) -> np.ndarray:
    """(N, D) C-contiguous float32 view/copy of ``vectors``; checks rank and dimension.

    An :class:`alframe._rows.OnDiskRows` store is returned as it is (it reads as float32 rows,
    batch by batch); only its dimension is checked.
    """
    if is_on_disk(vectors):
        if dim is not None and vectors.shape[1] != dim:
            raise DataError(f"{name} have dimension {vectors.shape[1]}, the index expects {dim}")
        return cast(np.ndarray, vectors)
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (items × features), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise DataError(f"{name} have dimension {array.shape[1]}, the index expects {dim}")
    return array


def _check_k(k: int, available: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise DataError(f"asked for k={k} neighbours but only {available} vectors are indexed")
    return int(k)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    return int(batch_size)


def _postprocess(distances: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        np.maximum(distances, 0.0, out=distances)  # rounding can make squared distances < 0
        np.sqrt(distances, out=distances)
    return distances


class VectorIndex:
    """Nearest-neighbour index over (N, D) float32 vectors.

    Memory is O(N·D) (the vectors themselves plus a small structure for IVF/HNSW).

    Args:
        dim: D, the vector dimension.
        kind: ``"flat"`` exact brute force (default); ``"ivf"`` inverted file with ``n_lists``
            k-means cells, ``n_probe`` searched per query (trained on the first :meth:`add`);
            ``"hnsw"`` graph index (CPU only; multithreaded construction may vary slightly
            between runs).
        metric: ``"l2"`` (Euclidean) or ``"ip"`` (inner product, cosine for normalised vectors).
        device: ``"cpu"`` (default), ``"gpu"`` (error when none) or ``"auto"`` (GPU when
            ``faiss.get_num_gpus() > 0``).
        n_lists: IVF cells; default ``clip(round(4·sqrt(N)), 1, N // 39)`` at the first add.
        n_probe: IVF cells visited per query.
        hnsw_neighbors: HNSW graph degree M.
        ef_construction: HNSW construction beam width.
        ef_search: HNSW search beam width.
        seed: seed of the IVF training subsample.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: IndexKind = "flat",
        metric: Metric = "l2",
        device: Device = "cpu",
        n_lists: int | None = None,
        n_probe: int = 8,
        hnsw_neighbors: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        seed: int = 0,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ConfigError(f"index dim must be a positive integer, got {dim!r}")
        if kind not in ("flat", "ivf", "hnsw"):
            raise ConfigError(f"index kind must be 'flat', 'ivf' or 'hnsw', got {kind!r}")
        if metric not in _METRICS:
            raise ConfigError(f"index metric must be 'l2' or 'ip', got {metric!r}")
        for name, value in (
            ("n_probe", n_probe),
            ("hnsw_neighbors", hnsw_neighbors),
            ("ef_construction", ef_construction),
            ("ef_search", ef_search),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if n_lists is not None and (not isinstance(n_lists, int) or n_lists < 1):
            raise ConfigError(f"n_lists must be a positive integer or None, got {n_lists!r}")
        self.dim = int(dim)
        self.kind: IndexKind = kind
        self.metric: Metric = metric
        self.device = resolve_device(device)
        if self.device == "gpu" and kind == "hnsw":
            if device == "gpu":
                raise ConfigError("HNSW indexes run on the CPU only; use kind='ivf' or 'flat'")
            self.device = "cpu"
        self.n_lists = n_lists
        self.n_probe = n_probe
        self.hnsw_neighbors = hnsw_neighbors
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.seed = seed
        self._index: Any = None
        self._gpu_resources: Any = None
        self._quantizer: Any = None

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return 0 if self._index is None else int(self._index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Adds (N, D) vectors; the first call builds (and for IVF trains) the index.

        Args:
            vectors: (N, D) array-like, converted to float32 (no copy when already float32).
        """
        matrix = as_float32_rows(vectors, "vectors", self.dim)
        if is_on_disk(matrix):  # larger than RAM: add chunk by chunk
            for _, block in cast(OnDiskRows, matrix).chunks():
                self.add(block)
            return
        if matrix.shape[0] == 0:
            return
        if self._index is None:
            self._index = self._build(matrix)
        self._index.add(matrix)

    def knn(
        self, queries: np.ndarray, k: int, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed vectors of each query, nearest first.

        Args:
            queries: (Q, D) query vectors.
            k: neighbours per query (1 ≤ k ≤ ntotal).
            batch_size: queries searched per FAISS call (bounds temporary memory).

        Returns:
            ``(distances, indices)``: (Q, k) float32 Euclidean distances (``"l2"``) or inner
            products (``"ip"``), and (Q, k) int64 row numbers in insertion order (-1 where an
            approximate index found fewer than k neighbours).
        """
        query_matrix = as_float32_rows(queries, "queries", self.dim)
        k = _check_k(k, self.ntotal)
        batch_size = _check_batch_size(batch_size)
        distances, indices = _search_in_batches(
            query_matrix, k, batch_size, lambda rows: self._index.search(rows, k)
        )
        return _postprocess(distances, self.metric), indices

    def _build(self, first_vectors: np.ndarray) -> Any:
        metric = _METRICS[self.metric]
        if self.kind == "flat":
            index: Any = faiss.IndexFlat(self.dim, metric)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_neighbors, metric)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            index = self._build_ivf(first_vectors, metric)
        if self.device == "gpu":  # pragma: no cover - needs faiss-gpu and a CUDA device
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        return index

    def _build_ivf(self, vectors: np.ndarray, metric: int) -> Any:
        n_vectors = vectors.shape[0]
        n_lists = self.n_lists
        if n_lists is None:
            n_lists = int(min(max(1, round(4 * math.sqrt(n_vectors))), max(1, n_vectors // 39)))
        if n_lists > n_vectors:
            raise DataError(
                f"IVF index with {n_lists} lists needs at least {n_lists} training vectors, "
                f"got {n_vectors}; lower n_lists or use kind='flat'"
            )
        self.n_lists = n_lists
        quantizer = faiss.IndexFlat(self.dim, metric)
        index = faiss.IndexIVFFlat(quantizer, self.dim, n_lists, metric)
        n_train = min(n_vectors, 256 * n_lists)
        if n_train < n_vectors:
            rows = np.sort(
                np.random.default_rng(self.seed).choice(n_vectors, n_train, replace=False)
            )
            training = vectors[rows]
        else:
            training = vectors
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index.train(training)
        index.nprobe = min(self.n_probe, n_lists)
        # Keep the quantizer alive as long as the index (the index does not own it).
        self._quantizer = quantizer
        return index


def exact_knn(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    metric: Metric = "l2",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database rows of every query, without building an index.

    Args:
        queries: (Q, D) vectors.
        database: (M, D) vectors.
        k: neighbours per query (1 ≤ k ≤ M).
        metric: ``"l2"`` (Euclidean distances returned) or ``"ip"`` (inner products returned).
        batch_size: queries per FAISS call.

    Returns:
        ``(distances, indices)``, both (Q, k): float32 distances nearest first and int64 rows of
        ``database``.
    """
    if metric not in _METRICS:
        raise ConfigError(f"metric must be 'l2' or 'ip', got {metric!r}")
    database_matrix = as_float32_rows(database, "database")
    query_matrix = as_float32_rows(queries, "queries", database_matrix.shape[1])
    k = _check_k(k, database_matrix.shape[0])
    batch_size = _check_batch_size(batch_size)
    distances, indices = _search_in_batches(
        query_matrix,
        k,
        batch_size,
        lambda rows: faiss.knn(rows, database_matrix, k, metric=_METRICS[metric]),
    )
    return _postprocess(distances, metric), indices


def _search_in_batches(
    queries: np.ndarray,
    k: int,
    batch_size: int,
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``search`` on query blocks of ``batch_size`` rows (bounded temporary memory).

    Returns:
        ``(distances (Q, k) float32, indices (Q, k) int64)`` as FAISS gives them.
    """
    n_queries = queries.shape[0]
    distances = np.empty((n_queries, k), dtype=np.float32)
    indices = np.empty((n_queries, k), dtype=np.int64)
    for start in range(0, n_queries, batch_size):
        stop = min(start + batch_size, n_queries)
        distances[start:stop], indices[start:stop] = search(queries[start:stop])
    return distances, indices
