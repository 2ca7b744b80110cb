"""Frozen value types shared across packages: what a query strategy gets and what it returns.

Only NumPy here: these types travel between the loop, the strategies, the tracking and the CLI.
Arrays inside the frozen dataclasses are not copied when they already have the right dtype and
layout (a 1M × 256 pool must not be duplicated); treat them as read-only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alframe._rows import is_on_disk
from alframe.errors import DataError

_MAX_ROWS_LISTED = 10


def _listed(rows: np.ndarray, ids: Sequence[str] | None) -> str:
    shown = rows[:_MAX_ROWS_LISTED].tolist()
    names = [f"{row} ({ids[row]!r})" for row in shown] if ids is not None else map(str, shown)
    suffix = f" (first {_MAX_ROWS_LISTED} of {rows.size})" if rows.size > _MAX_ROWS_LISTED else ""
    return f"[{', '.join(names)}]{suffix}"


def non_finite_rows(matrix: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``matrix`` holding a NaN or an infinity.

    Uses one streaming pass and O(N) extra memory: a float64 row sum of float32 values is finite
    exactly when every value of the row is finite (no float64 overflow is possible for D < 1e200).

    Args:
        matrix: (N, D) floating array.

    Returns:
        (M,) int64 sorted row indices.
    """
    if matrix.size == 0:
        return np.empty(0, dtype=np.int64)
    row_sums = matrix.sum(axis=1, dtype=np.float64)
    return np.flatnonzero(~np.isfinite(row_sums)).astype(np.int64)


def as_embedding_matrix(
    values: Any, name: str, ids: Sequence[str] | None = None, dim: int | None = None
) -> np.ndarray:
    """Validates and coerces an embedding matrix to C-contiguous float32 (no copy if already so).

    Args:
        values: (N, D) array-like of real numbers.
        name: what the matrix is, for error messages (``"embeddings"``).
        ids: optional item ids, named in the error for non-finite rows.
        dim: required D, if known.

    Returns:
        (N, D) float32 C-contiguous array.

    Raises:
        DataError: wrong rank or dimension, non-numeric values, or NaN/inf rows (listed).
    """
    array = np.asarray(values)
    if array.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D array (items × features), got shape {array.shape}; "
            "flatten or pool each item's features to one vector"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise DataError(
            f"{name} have dimension {array.shape[1]} but the target embeddings have {dim}; "
            "embed source and target with the same encoder"
        )
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    bad_rows = non_finite_rows(matrix)
    if bad_rows.size:
        raise DataError(
            f"{name} contain NaN or infinite values in {bad_rows.size} row(s) {_listed(bad_rows, ids)}; "
            "recompute these embeddings (e.g. check the images for empty or corrupt files) "
            "or drop these items from the pool"
        )
    return matrix


@dataclass(frozen=True, eq=False)
class QueryContext:
    """Everything a query strategy may look at for one selection round.

    Attributes:
        embeddings: (N, D) float32 target-pool embeddings (coerced; L2-normalised upstream), or
            an :class:`alframe._rows.OnDiskRows` memory-mapped store (pools larger than RAM;
            only strategies with ``supports_on_disk`` accept it).
        labelled: (N,) bool mask, True for items already labelled (L); the candidates are ~L.
        source_embeddings: optional (S, D) float32 embeddings of the unlabelled source set.
        seed: seed of every random choice a strategy makes.
        ids: optional (N,) unique global item ids, used in messages and by the loop.
        probabilities: optional per-pixel predictions for uncertainty strategies, either
            (N, K, H, W) class probabilities or (N, H, W) foreground probabilities, in [0, 1].
        uncertainty: optional (N,) precomputed per-item uncertainty (higher = more uncertain);
            NaN is allowed only for labelled items.

    Raises:
        DataError: inconsistent shapes, non-boolean mask, duplicate ids, NaN/inf embeddings
            (the message names the rows), probabilities outside [0, 1].
    """

    # Typed as an array: an OnDiskRows reads like a float32 one (slices, row gathers, ``@``).
    embeddings: np.ndarray
    labelled: np.ndarray
    source_embeddings: np.ndarray | None = None
    seed: int = 0
    ids: Sequence[str] | None = None
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = self.ids
        if ids is not None:
            ids = list(ids)
            if len(set(ids)) != len(ids):
                duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
                raise DataError(f"ids must be unique; duplicated: {duplicates[:10]}")
        embeddings: Any
        if is_on_disk(self.embeddings):
            # Larger than RAM: kept on disk, checked in one streaming pass, read in chunks by
            # the strategies that support it (coreset, xssr).
            embeddings = self.embeddings
            bad_rows = embeddings.non_finite_rows()
            if bad_rows.size:
                raise DataError(
                    f"embeddings in {embeddings.path} contain NaN or infinite values in "
                    f"{bad_rows.size} row(s) {_listed(bad_rows, ids)}; recompute these embeddings"
                )
        else:
            embeddings = as_embedding_matrix(self.embeddings, "embeddings", ids)
        n_items = embeddings.shape[0]
        if ids is not None and len(ids) != n_items:
            raise DataError(f"got {len(ids)} ids for {n_items} embeddings; give one id per item")

        labelled = np.asarray(self.labelled)
        if labelled.dtype != np.bool_:
            raise DataError(
                f"labelled must be a boolean mask, got dtype {labelled.dtype}; "
                "to convert a list of indices use mask = np.zeros(N, bool); mask[indices] = True"
            )
        if labelled.shape != (n_items,):
            raise DataError(
                f"labelled mask has shape {labelled.shape} but there are {n_items} embeddings; "
                "give one flag per pool item"
            )

        source = self.source_embeddings
        if source is not None:
            source = as_embedding_matrix(source, "source_embeddings", dim=embeddings.shape[1])

        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise DataError(f"seed must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise DataError(f"seed must be non-negative, got {self.seed}")

        probabilities = self.probabilities
        if probabilities is not None:
            probabilities = _check_probabilities(probabilities, n_items)

        uncertainty = self.uncertainty
        if uncertainty is not None:
            uncertainty = np.asarray(uncertainty, dtype=np.float64)
            if uncertainty.shape != (n_items,):
                raise DataError(
                    f"uncertainty must have shape ({n_items},), one value per item, "
                    f"got {uncertainty.shape}"
                )
            bad = np.flatnonzero(~np.isfinite(uncertainty) & ~labelled)
            if bad.size:
                raise DataError(
                    f"uncertainty is NaN or infinite for unlabelled item(s) {_listed(bad, ids)}; "
                    "recompute it or mark these items as labelled"
                )

        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "labelled", labelled)
        object.__setattr__(self, "source_embeddings", source)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "probabilities", probabilities)
        object.__setattr__(self, "uncertainty", uncertainty)

    @property
    def n_items(self) -> int:
        """N, the number of pool items (labelled and unlabelled)."""
        return int(self.embeddings.shape[0])

    @property
    def candidates(self) -> np.ndarray:
        """(M,) int64 indices of the unlabelled items, ascending."""
        return np.flatnonzero(~self.labelled).astype(np.int64)

    @property
    def rng(self) -> np.random.Generator:
        """A fresh ``numpy.random.Generator`` seeded with :attr:`seed` (same stream every access)."""
        return np.random.default_rng(self.seed)


def _check_probabilities(values: Any, n_items: int) -> np.ndarray:
    probabilities = np.asarray(values)
    if probabilities.ndim not in (3, 4) or probabilities.shape[0] != n_items:
        raise DataError(
            f"probabilities must be (N, K, H, W) class probabilities or (N, H, W) foreground "
            f"probabilities with N = {n_items}, got shape {probabilities.shape}"
        )
    if not np.issubdtype(probabilities.dtype, np.floating):
        probabilities = probabilities.astype(np.float32)
    # One item at a time keeps the temporaries small for large prediction stacks.
    for item in range(n_items):
        item_probabilities = probabilities[item]
        if not np.isfinite(item_probabilities).all():
            raise DataError(f"probabilities of item {item} contain NaN or infinite values")
        low, high = float(item_probabilities.min()), float(item_probabilities.max())
        if low < -1e-4 or high > 1 + 1e-4:
            raise DataError(
                f"probabilities of item {item} lie in [{low:.4g}, {high:.4g}], outside [0, 1]; "
                "pass softmax / sigmoid outputs, not logits"
            )
    return probabilities


@dataclass(frozen=True, eq=False)
class Selection:
    """What a query strategy returns.

    Attributes:
        indices: (B,) int64 pool indices of the selected items, in pick order.
        scores: (N,) float64 strategy score of every pool item (NaN for labelled items).
        terms: per-term (N,) arrays over the pool (e.g. ``density``, ``novelty``, ``diversity``),
            NaN for labelled items.
        info: JSON-friendly extras (e.g. the chosen alpha and the coverage curve).
    """

    indices: np.ndarray
    scores: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise DataError(f"selection indices must be a 1-D integer array, got {indices.dtype}")
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 1:
            raise DataError(f"selection scores must be 1-D (one per pool item), got {scores.shape}")
        terms = {name: np.asarray(values) for name, values in self.terms.items()}
        for name, values in terms.items():
            if values.shape != scores.shape:
                raise DataError(
                    f"selection term {name!r} has shape {values.shape}, expected {scores.shape}"
                )
        object.__setattr__(self, "indices", indices.astype(np.int64, copy=False))
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "info", dict(self.info))

    def __len__(self) -> int:
        return int(self.indices.size)

    def selected_ids(self, ids: Sequence[str]) -> list[str]:
        """The ids of the selected items, in pick order."""
        return [ids[int(i)] for i in self.indices]
