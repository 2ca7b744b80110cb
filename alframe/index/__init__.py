"""Nearest-neighbour search (FAISS): exact flat by default, IVF / HNSW for large pools.

Pure NumPy/FAISS; GPU is used only when asked for (``device="gpu"`` or ``"auto"``).
"""

from __future__ import annotations

from alframe.index.self_knn import DEFAULT_EXACT_MAX_ITEMS, drop_self_matches, self_knn
from alframe.index.vector_index import (
    DEFAULT_BATCH_SIZE,
    Device,
    IndexKind,
    Metric,
    VectorIndex,
    exact_knn,
    gpu_count,
    resolve_device,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EXACT_MAX_ITEMS",
    "Device",
    "IndexKind",
    "Metric",
    "VectorIndex",
    "drop_self_matches",
    "exact_knn",
    "gpu_count",
    "resolve_device",
    "self_knn",
]
