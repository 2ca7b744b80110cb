"""TypiClust (Hacohen et al., 2022): cold-start selection of typical items of uncovered clusters.

The pool is clustered into ``budget + |L|`` clusters; the clusters without a labelled item are
visited from the largest to the smallest and the most typical item of each is picked, typicality
being the inverse mean distance to the item's ``typicality_k`` nearest neighbours inside its
cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import faiss
import numpy as np

from alframe.errors import ConfigError
from alframe.index import self_knn
from alframe.strategies.base import STRATEGIES, Strategy, pool_array
from alframe.types import QueryContext, Selection

SKLEARN_MAX_ITEMS = 50_000
"""``kmeans_backend="auto"`` uses scikit-learn up to this pool size, FAISS above."""


def cluster_labels(
    embeddings: np.ndarray, n_clusters: int, backend: str, seed: int, max_iterations: int
) -> np.ndarray:
    """Seeded k-means cluster of every row.

    Args:
        embeddings: (N, D) float32.
        n_clusters: K ≤ N.
        backend: ``"sklearn"`` (k-means++, exact Lloyd) or ``"faiss"`` (fast, for large pools).
        seed: k-means seed.
        max_iterations: Lloyd iterations.

    Returns:
        (N,) int64 cluster ids in [0, K).
    """
    if backend == "sklearn":
        from sklearn.cluster import KMeans  # local import: only this strategy needs sklearn

        kmeans = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed, max_iter=max_iterations)
        return kmeans.fit_predict(embeddings).astype(np.int64)
    faiss_kmeans = faiss.Kmeans(
        embeddings.shape[1], n_clusters, niter=max_iterations, seed=seed, verbose=False
    )
    faiss_kmeans.train(embeddings)
    _, labels = faiss_kmeans.index.search(embeddings, 1)
    return labels[:, 0].astype(np.int64)


def within_cluster_typicality(
    embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int = 0
) -> np.ndarray:
    """1 / mean distance to the k nearest neighbours within the same cluster.

    Args:
        embeddings: (N, D) float32.
        labels: (N,) cluster ids.
        k: neighbours (clipped to cluster size − 1).
        seed: seed of the approximate kNN used for very large clusters.

    Returns:
        (N,) float64 typicality; members of singleton clusters get 0.
    """
    typicality = np.zeros(embeddings.shape[0], dtype=np.float64)
    for members in members_by_cluster(labels):
        if members.size < 2:
            continue
        distances, _ = self_knn(embeddings[members], min(k, members.size - 1), seed=seed)
        typicality[members] = 1.0 / (1e-12 + distances.mean(axis=1, dtype=np.float64))
    return typicality


def members_by_cluster(labels: np.ndarray, n_clusters: int | None = None) -> list[np.ndarray]:
    """Ascending member rows of every cluster id 0 … K−1 (one sort, not one scan per cluster)."""
    if n_clusters is None:
        n_clusters = int(labels.max()) + 1 if labels.size else 0
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=n_clusters))))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]


@STRATEGIES.register("typiclust")
@dataclass(frozen=True)
class TypiClustStrategy(Strategy):
    """Typical items of the largest uncovered k-means clusters (cold start friendly).

    Args:
        typicality_k: neighbours of the typicality (20 in the paper).
        kmeans_backend: ``"sklearn"``, ``"faiss"`` or ``"auto"`` (sklearn up to 50 000 items).
        kmeans_iterations: Lloyd iterations.

    Scores: typicality. ``terms``: ``typicality`` and ``cluster`` (cluster id as float).
    Should k-means return fewer non-empty uncovered clusters than the budget (duplicates), the
    next most typical items of the same clusters, in the same order, fill the budget.
    """

    typicality_k: int = 20
    kmeans_backend: Literal["sklearn", "faiss", "auto"] = "auto"
    kmeans_iterations: int = 100

    name: ClassVar[str] = "typiclust"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})

    def __post_init__(self) -> None:
        if (
            isinstance(self.typicality_k, bool)
            or not isinstance(self.typicality_k, int)
            or (self.typicality_k < 1)
        ):
            raise ConfigError(f"typiclust typicality_k must be ≥ 1, got {self.typicality_k!r}")
        if self.kmeans_backend not in ("sklearn", "faiss", "auto"):
            raise ConfigError(
                "typiclust kmeans_backend must be 'sklearn', 'faiss' or 'auto', "
                f"got {self.kmeans_backend!r}"
            )
        if not isinstance(self.kmeans_iterations, int) or self.kmeans_iterations < 1:
            raise ConfigError(
                f"typiclust kmeans_iterations must be ≥ 1, got {self.kmeans_iterations!r}"
            )

    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        embeddings, labelled = ctx.embeddings, ctx.labelled
        n_clusters = min(budget + int(labelled.sum()), ctx.n_items)
        backend = self.kmeans_backend
        if backend == "auto":
            backend = "sklearn" if ctx.n_items <= SKLEARN_MAX_ITEMS else "faiss"
        labels = cluster_labels(embeddings, n_clusters, backend, ctx.seed, self.kmeans_iterations)
        typicality = within_cluster_typicality(embeddings, labels, self.typicality_k, ctx.seed)

        sizes = np.bincount(labels, minlength=n_clusters)
        covered = np.zeros(n_clusters, dtype=bool)
        covered[labels[labelled]] = True
        uncovered = np.flatnonzero(~covered & (sizes > 0))
        # Largest first; equal sizes keep the lower cluster id first (stable sort).
        visit_order = uncovered[np.argsort(-sizes[uncovered], kind="stable")]
        members_of = members_by_cluster(labels, n_clusters)
        ranked_members = []
        for cluster in visit_order:
            members = members_of[cluster]
            members = members[~labelled[members]]
            ranked_members.append(members[np.argsort(-typicality[members], kind="stable")])

        picks: list[int] = []
        depth = 0
        while len(picks) < budget:
            for members in ranked_members:
                if depth < members.size and len(picks) < budget:
                    picks.append(int(members[depth]))
            depth += 1
            if depth > ctx.n_items:  # cannot happen: uncovered clusters hold ≥ budget items
                break
        if len(picks) < budget:  # fall back on the most typical unlabelled items anywhere
            taken = np.zeros(ctx.n_items, dtype=bool)
            taken[picks] = True
            rest = np.flatnonzero(~labelled & ~taken)
            rest = rest[np.argsort(-typicality[rest], kind="stable")]
            picks.extend(int(i) for i in rest[: budget - len(picks)])

        return Selection(
            indices=np.asarray(picks, dtype=np.int64),
            scores=pool_array(typicality, labelled),
            terms={
                "typicality": pool_array(typicality, labelled),
                "cluster": pool_array(labels.astype(np.float64), labelled),
            },
            info={
                "n_clusters": n_clusters,
                "kmeans_backend": backend,
                "n_uncovered_clusters": int(uncovered.size),
            },
        )
