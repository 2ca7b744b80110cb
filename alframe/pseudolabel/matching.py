"""Label transfer by nearest reference pixel: the reference bank and the chunked matcher.

Pure tensor code (torch, optionally FAISS); no Lightning, no files. Works on the CPU and on CUDA
tensors (the ``"torch"`` backend stays on the tensors' device).

Similarity is the inner product of L2-normalised features (cosine). With a spatial prior of weight
``w`` the score of reference pixel j for query pixel u is::

    score(u, j) = <f_u, f_j> - w * ||p_u - p_j||^2        (p: (y, x) normalised to [0, 1])

which is still an inner product of augmented vectors, ``[f_u, 2w p_u, 1] . [f_j, p_j, -w|p_j|^2]``,
minus ``w |p_u|^2`` (the same for every j, so it does not change the ranking and is added back to
report the score). Exact search therefore works unchanged with FAISS or a matrix product.

Memory is bounded: queries are processed ``chunk_size`` rows at a time against bank blocks of at
most ``bank_block`` rows, and the running top-k is merged block by block, so the (queries ×
references) matrix is never materialised; the largest temporary is ``chunk_size × bank_block``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from alframe.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_BANK_BLOCK",
    "DEFAULT_CHUNK_SIZE",
    "IGNORE_LABEL",
    "Backend",
    "MatchResult",
    "ReferenceBank",
    "ReferenceBankBuilder",
    "filter_by_similarity",
    "grid_positions",
    "l2_normalize",
    "match_labels",
    "prototype_bank",
    "resize_labels",
    "resolve_backend",
]

IGNORE_LABEL = -1
"""Label of pixels without a pseudo-label (filtered out, or unlabelled reference pixels)."""

DEFAULT_CHUNK_SIZE = 4096
"""Fewest queries per block when ``chunk_size`` is automatic."""

SCORE_BLOCK_ELEMENTS = 1 << 25
"""Automatic ``chunk_size``: queries × bank rows per block stay within this (128 MiB float32)."""

SMALL_BANK = 4096
"""Banks up to this many rows are matched with one torch product per chunk (backend "auto")."""
"""Query pixels matched per block."""

DEFAULT_BANK_BLOCK = 8192
"""Reference pixels per block; the largest temporary is chunk_size × bank_block float32 (128 MiB)."""

Backend = Literal["auto", "torch", "faiss"]
_EPS = 1e-12


def l2_normalize(features: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Unit L2 norm along ``dim`` (float32; an all-zero vector stays zero).

    Args:
        features: any shape, e.g. (B, D, H, W) with ``dim=1`` or (N, D) with ``dim=1``.
        dim: the feature dimension.

    Returns:
        float32 tensor of the input's shape.
    """
    return F.normalize(features.float(), dim=dim, eps=_EPS)


def grid_positions(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised (y, x) pixel-centre coordinates of an H×W grid.

    Args:
        height: H.
        width: W.
        device: where to create them.

    Returns:
        (H*W, 2) float32 in [0, 1], row-major (the order of ``features.flatten(2)``).
    """
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_y.reshape(-1), grid_x.reshape(-1)], dim=1)


@dataclass(frozen=True)
class ReferenceBank:
    """Reference pixels: unit-norm features, class labels and normalised positions.

    Attributes:
        features: (M, D) float32, unit L2 norm per row.
        labels: (M,) int64 class indices in ``0 .. num_classes - 1``.
        positions: (M, 2) float32 normalised (y, x) in [0, 1] (used by the spatial prior).
        num_classes: K.
    """

    features: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        m = self.features.shape[0]
        if self.features.ndim != 2 or self.labels.shape != (m,) or self.positions.shape != (m, 2):
            raise DataError(
                f"reference bank shapes do not agree: features {tuple(self.features.shape)}, "
                f"labels {tuple(self.labels.shape)}, positions {tuple(self.positions.shape)}"
            )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """D, the feature dimension."""
        return int(self.features.shape[1])

    def class_counts(self) -> np.ndarray:
        """(K,) int64 number of reference pixels per class."""
        return np.bincount(self.labels.cpu().numpy(), minlength=self.num_classes)

    def to(self, device: torch.device | str) -> ReferenceBank:
        """The same bank on ``device``."""
        return ReferenceBank(
            self.features.to(device),
            self.labels.to(device),
            self.positions.to(device),
            self.num_classes,
        )


class ReferenceBankBuilder:
    """Streams labelled feature maps into a class-balanced bank of at most M pixels per class.

    Every labelled pixel gets a random key from a seeded generator, and per class the M pixels with
    the smallest keys are kept: a uniform sample without replacement, independent of how the
    pixels are split into :meth:`add` calls (for the same order of pixels), with memory bounded by
    about ``K × M`` rows plus one batch.

    Args:
        num_classes: K; mask values must be in ``0 .. K-1`` or :data:`IGNORE_LABEL`.
        max_per_class: M, the cap per class (the spec's default is 5000).
        seed: seed of the sampling keys.
    """

    def __init__(self, num_classes: int, max_per_class: int = 5000, seed: int = 0) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if (
            isinstance(max_per_class, bool)
            or not isinstance(max_per_class, int)
            or max_per_class < 1
        ):
            raise ConfigError(f"max_per_class must be a positive integer, got {max_per_class!r}")
        self.num_classes = int(num_classes)
        self.max_per_class = int(max_per_class)
        self._generator = torch.Generator().manual_seed(int(seed))
        self._features: list[torch.Tensor | None] = [None] * self.num_classes
        self._positions: list[torch.Tensor | None] = [None] * self.num_classes
        self._keys: list[torch.Tensor | None] = [None] * self.num_classes

    def add(self, features: torch.Tensor, masks: torch.Tensor) -> None:
        """Adds the labelled pixels of a batch of feature maps.

        Args:
            features: (B, D, h, w) features (normalised here).
            masks: (B, H, W) integer class indices, :data:`IGNORE_LABEL` for unlabelled pixels;
                resized to (h, w) by nearest neighbour when the sizes differ.

        Raises:
            DataError: shapes do not fit or mask values are not class indices.
        """
        if features.ndim != 4 or masks.ndim != 3 or features.shape[0] != masks.shape[0]:
            raise DataError(
                f"reference features must be (B, D, h, w) and masks (B, H, W) with the same B, "
                f"got {tuple(features.shape)} and {tuple(masks.shape)}"
            )
        if masks.dtype.is_floating_point or masks.dtype == torch.bool:
            raise DataError(f"reference masks must hold integer class indices, got {masks.dtype}")
        batch, dim, height, width = features.shape
        labels = resize_labels(masks, (height, width)).reshape(-1)
        if labels.numel() and (int(labels.max()) >= self.num_classes or int(labels.min()) < -1):
            raise DataError(
                f"reference mask values must be class indices 0..{self.num_classes - 1} or "
                f"{IGNORE_LABEL}, got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        flat = l2_normalize(features).permute(0, 2, 3, 1).reshape(-1, dim)
        positions = grid_positions(height, width, flat.device).repeat(batch, 1)
        keys = torch.rand(labels.shape[0], generator=self._generator).to(flat.device)
        for label in range(self.num_classes):
            selected = labels == label
            if not bool(selected.any()):
                continue
            self._merge(label, flat[selected], positions[selected], keys[selected])

    def _merge(
        self, label: int, features: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor
    ) -> None:
        old = self._features[label]
        if old is not None:
            old_positions, old_keys = self._positions[label], self._keys[label]
            assert old_positions is not None and old_keys is not None  # set together
            features = torch.cat([old, features])
            positions = torch.cat([old_positions, positions])
            keys = torch.cat([old_keys, keys])
        if keys.shape[0] > self.max_per_class:
            keep = torch.topk(keys, self.max_per_class, largest=False).indices
            # Stable order (by key) so the bank does not depend on topk's tie handling.
            keep = keep[torch.argsort(keys[keep])]
            features, positions, keys = features[keep], positions[keep], keys[keep]
        self._features[label] = features.detach()
        self._positions[label] = positions
        self._keys[label] = keys

    def build(self) -> ReferenceBank:
        """The bank (classes in index order; within a class, in key order).

        Raises:
            DataError: no labelled pixel was added.
        """
        parts = [
            (label, f, p)
            for label, (f, p) in enumerate(zip(self._features, self._positions))
            if f is not None and p is not None
        ]
        if not parts:
            raise DataError(
                "the reference set has no labelled pixel; give reference images with masks"
            )
        features = torch.cat([f for _, f, _ in parts])
        positions = torch.cat([p for _, _, p in parts])
        labels = torch.cat(
            [
                torch.full((f.shape[0],), label, dtype=torch.long, device=f.device)
                for label, f, _ in parts
            ]
        )
        return ReferenceBank(features, labels, positions, self.num_classes)


def prototype_bank(
    bank: ReferenceBank, per_class: int, seed: int = 0, iterations: int = 20
) -> ReferenceBank:
    """Compress a bank to at most ``per_class`` prototypes per class (spherical k-means).

    An approximation for speed: matching then costs ``K·per_class`` instead of ``M`` inner
    products per pixel, and a pixel takes the class of its most similar prototype — the nearest
    reference *mode* of a class rather than the nearest reference pixel. Classes with no more
    than ``per_class`` pixels keep them all. Prototype positions are their members' mean.

    Args:
        bank: the full reference bank.
        per_class: prototypes per class.
        seed: k-means initialisation seed.
        iterations: k-means iterations.

    Returns:
        The compressed bank (unit-norm prototype features), on the input bank's device.
    """
    import faiss

    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise DataError(f"per_class must be a positive integer, got {per_class!r}")
    device = bank.features.device
    features = bank.features.detach().cpu().numpy().astype(np.float32)
    labels = bank.labels.cpu().numpy()
    positions = bank.positions.cpu().numpy()
    out_f, out_l, out_p = [], [], []
    for label in range(bank.num_classes):
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        if members.size <= per_class:
            out_f.append(features[members])
            out_p.append(positions[members])
            out_l.append(np.full(members.size, label))
            continue
        data = np.ascontiguousarray(features[members])
        kmeans = faiss.Kmeans(
            data.shape[1],
            per_class,
            niter=iterations,
            seed=seed + label,
            spherical=True,
            min_points_per_centroid=1,
            max_points_per_centroid=1 << 30,
        )
        kmeans.train(data)
        _, assigned = kmeans.index.search(data, 1)
        assigned = assigned[:, 0]
        trained = np.asarray(kmeans.centroids, dtype=np.float32)
        centroids = trained / np.maximum(np.linalg.norm(trained, axis=1, keepdims=True), 1e-12)
        counts = np.bincount(assigned, minlength=per_class)
        used = counts > 0  # an empty cluster would be a prototype of nothing
        centre = np.zeros((per_class, 2), dtype=np.float32)
        np.add.at(centre, assigned, positions[members])
        centre[used] /= counts[used, None]
        out_f.append(centroids[used])
        out_p.append(centre[used])
        out_l.append(np.full(int(used.sum()), label))
    return ReferenceBank(
        torch.from_numpy(np.concatenate(out_f).astype(np.float32)).to(device),
        torch.from_numpy(np.concatenate(out_l).astype(np.int64)).to(device),
        torch.from_numpy(np.concatenate(out_p).astype(np.float32)).to(device),
        bank.num_classes,
    )


def resize_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer label maps.

    Args:
        masks: (B, H, W) integer labels.
        size: (h, w).

    Returns:
        (B, h, w) int64.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.long()
    resized = F.interpolate(masks[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].round().long()


@dataclass(frozen=True)
class MatchResult:
    """Pseudo-labels of a set of query pixels.

    Attributes:
        labels: (Q,) int64 transferred class indices (:data:`IGNORE_LABEL` where filtered).
        confidence: (Q,) float32: the best score for top-1; the vote margin (winning class weight
            minus the runner-up's, in [0, 1]) for top-k.
        similarity: (Q,) float32 score of the best reference pixel (cosine, minus the spatial
            penalty when one is used).
    """

    labels: torch.Tensor
    confidence: torch.Tensor
    similarity: torch.Tensor


def resolve_backend(
    backend: str, device: torch.device, bank_size: int | None = None
) -> Literal["torch", "faiss"]:
    """``"auto"`` → ``"faiss"`` (IndexFlatIP) for CPU tensors and large banks, else ``"torch"``.

    The throughput benchmark (docs/benchmarks/rpg_throughput.md) measured FAISS's flat
    inner-product search about 1.3-1.5x faster than a blocked torch matrix product + arg-max on 2
    CPU cores (64-d features, 20k-pixel bank), so it is the CPU default; for small banks (up to
    :data:`SMALL_BANK` rows, e.g. prototype banks) one torch product per chunk wins, and on a GPU
    the torch product runs on the tensors where they are, without a copy. Both give the same
    results (up to floating-point ties).

    Raises:
        ConfigError: unknown backend, or ``"faiss"`` with CUDA tensors.
    """
    if backend not in ("auto", "torch", "faiss"):
        raise ConfigError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if backend == "faiss" and device.type != "cpu":
        raise ConfigError("backend 'faiss' works on CPU tensors; use backend 'torch' on a GPU")
    if backend == "auto":
        small = bank_size is not None and bank_size <= SMALL_BANK
        return "faiss" if device.type == "cpu" and not small else "torch"
    return "faiss" if backend == "faiss" else "torch"


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _augment(
    queries: torch.Tensor,
    query_positions: torch.Tensor | None,
    bank: ReferenceBank,
    spatial_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(queries', keys', per-query offset) such that score = queries' . keys' + offset."""
    if spatial_weight == 0.0:
        return queries, bank.features, torch.zeros(queries.shape[0], device=queries.device)
    if query_positions is None:
        raise ConfigError("a spatial prior needs the query pixels' positions")
    w = float(spatial_weight)
    ones = torch.ones(queries.shape[0], 1, device=queries.device)
    q = torch.cat([queries, 2.0 * w * query_positions, ones], dim=1)
    bank_pos = bank.positions.to(queries.device)
    k = torch.cat([bank.features, bank_pos, -w * (bank_pos**2).sum(1, keepdim=True)], dim=1)
    return q, k, -w * (query_positions**2).sum(1)


def _topk_torch(
    queries: torch.Tensor, keys: torch.Tensor, k: int, bank_block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores / indices of each query row over all key rows, block by block."""
    best_scores: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    for start in range(0, keys.shape[0], bank_block):
        block = keys[start : start + bank_block]
        scores = queries @ block.T
        if k == 1:
            # argmax returns the first maximum, like NumPy: ties resolve to the lowest index.
            index = scores.argmax(dim=1, keepdim=True)
            values = scores.gather(1, index)
        else:
            values, index = torch.topk(scores, min(k, block.shape[0]), dim=1)
        index = index + start
        if best_scores is None or best_index is None:
            best_scores, best_index = values, index
            continue
        if k == 1:
            # Strictly greater: an earlier block keeps ties (lowest index wins).
            better = values > best_scores
            best_scores = torch.where(better, values, best_scores)
            best_index = torch.where(better, index, best_index)
        else:
            merged_scores = torch.cat([best_scores, values], dim=1)
            merged_index = torch.cat([best_index, index], dim=1)
            top = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
            best_scores, best_index = top.values, merged_index.gather(1, top.indices)
    assert best_scores is not None and best_index is not None  # the bank is never empty
    return best_scores, best_index


def _topk_faiss(
    queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys.cpu().numpy(), dtype=np.float32))
    query_array = np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32)
    scores = np.empty((query_array.shape[0], k), dtype=np.float32)
    indices = np.empty((query_array.shape[0], k), dtype=np.int64)
    for start in range(0, query_array.shape[0], chunk_size):
        stop = start + chunk_size
        scores[start:stop], indices[start:stop] = index.search(query_array[start:stop], k)
    return torch.from_numpy(scores), torch.from_numpy(indices)


def match_labels(
    queries: torch.Tensor,
    bank: ReferenceBank,
    top_k: int = 1,
    temperature: float = 0.1,
    query_positions: torch.Tensor | None = None,
    spatial_weight: float = 0.0,
    chunk_size: int | None = None,
    bank_block: int = DEFAULT_BANK_BLOCK,
    backend: Backend = "auto",
) -> MatchResult:
    """Labels of the best-matching reference pixels (top-1) or a top-k similarity vote.

    Args:
        queries: (Q, D) query features (normalised here).
        bank: the references (moved to the queries' device).
        top_k: 1 for nearest-neighbour transfer; k > 1 for a vote of the k best matches with
            weights ``softmax(score / temperature)``.
        temperature: τ of the top-k vote (> 0).
        query_positions: (Q, 2) normalised (y, x) of the queries; needed when ``spatial_weight``
            is not 0.
        spatial_weight: w of the spatial penalty ``w * ||p_u - p_j||^2`` (0: off).
        chunk_size: queries per block; None: as many as keep a block of scores within
            :data:`SCORE_BLOCK_ELEMENTS` (at least :data:`DEFAULT_CHUNK_SIZE`).
        bank_block: reference pixels per block (``"torch"`` backend).
        backend: ``"auto"`` (see :func:`resolve_backend`), ``"torch"`` or ``"faiss"``.

    Returns:
        Labels, confidence and best score per query, on the queries' device.

    Raises:
        ConfigError: invalid parameters.
        DataError: the query dimension does not match the bank's.
    """
    top_k = _check_positive("top_k", top_k)
    bank_block = _check_positive("bank_block", bank_block)
    if chunk_size is None:
        rows = max(min(len(bank), bank_block), 1)
        chunk_size = max(DEFAULT_CHUNK_SIZE, SCORE_BLOCK_ELEMENTS // rows)
    chunk_size = _check_positive("chunk_size", chunk_size)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if not spatial_weight >= 0:
        raise ConfigError(f"spatial_weight must be >= 0, got {spatial_weight!r}")
    if queries.ndim != 2 or queries.shape[1] != bank.dim:
        raise DataError(
            f"query features must be (Q, {bank.dim}) like the reference bank, got "
            f"{tuple(queries.shape)}; use the same feature source for references and queries"
        )
    device = queries.device
    chosen = resolve_backend(backend, device, len(bank))
    bank = bank.to(device)
    k = min(top_k, len(bank))
    n = queries.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=device)
    confidence = torch.empty(n, dtype=torch.float32, device=device)
    similarity = torch.empty(n, dtype=torch.float32, device=device)
    with torch.no_grad():
        normalised = l2_normalize(queries)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            positions = None if query_positions is None else query_positions[start:stop]
            q, keys, offset = _augment(normalised[start:stop], positions, bank, spatial_weight)
            if chosen == "faiss":
                scores, index = _topk_faiss(q, keys, k, chunk_size)
                scores, index = scores.to(device), index.to(device)
            else:
                scores, index = _topk_torch(q, keys, k, bank_block)
            scores = scores + offset[:, None]
            neighbour_labels = bank.labels[index]
            similarity[start:stop] = scores[:, 0]
            if k == 1:
                labels[start:stop] = neighbour_labels[:, 0]
                confidence[start:stop] = scores[:, 0]
                continue
            weights = torch.softmax(scores / temperature, dim=1)
            votes = torch.zeros(stop - start, bank.num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels, weights)
            top2 = torch.topk(votes, 2, dim=1)
            labels[start:stop] = top2.indices[:, 0]
            confidence[start:stop] = top2.values[:, 0] - top2.values[:, 1]
    return MatchResult(labels, confidence, similarity)


def filter_by_similarity(
    labels: torch.Tensor, similarity: torch.Tensor, percentile: float | None
) -> torch.Tensor:
    """Labels with the pixels below the ``percentile``-th similarity percentile set to -1.

    The threshold is taken over the given pixels (e.g. one image or one batch). Never filters on
    the network's own predictions (the confirmation bias RPG avoids), only on the match quality.

    Args:
        labels: (...) int64 labels.
        similarity: (...) best-match scores, same shape.
        percentile: in [0, 100); None or 0 keeps every pixel.

    Returns:
        A new (...) int64 tensor.

    Raises:
        ConfigError: percentile outside [0, 100).
    """
    if percentile is None or percentile == 0:
        return labels.clone()
    if not 0 <= percentile < 100:
        raise ConfigError(f"filter_percentile must be in [0, 100), got {percentile!r}")
    if similarity.numel() == 0:
        return labels.clone()
    # NumPy: torch.quantile refuses inputs above 2**24 elements (one large volume).
    threshold = float(np.percentile(similarity.detach().float().cpu().numpy(), percentile))
    out = labels.clone()
    out[similarity < threshold] = IGNORE_LABEL
    return out
