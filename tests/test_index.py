"""FAISS wrapper and self-kNN against a brute-force NumPy kNN."""

from __future__ import annotations

import numpy as np
import pytest

from alframe.errors import ConfigError, DataError
from alframe.index import VectorIndex, drop_self_matches, exact_knn, gpu_count, self_knn


def brute_force_knn(
    queries: np.ndarray, database: np.ndarray, k: int, metric: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    q = queries.astype(np.float64)
    b = database.astype(np.float64)
    if metric == "l2":
        values = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        order = np.argsort(values, axis=1, kind="stable")[:, :k]
    else:
        values = q @ b.T
        order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(values, order, axis=1), order


def blobs(n: int, dim: int, n_blobs: int, seed: int, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim))
    points = centres[rng.integers(0, n_blobs, n)] + spread * rng.standard_normal((n, dim))
    return points.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((600, 12)).astype(np.float32),
        rng.standard_normal((50, 12)).astype(np.float32),
    )


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("batch_size", [7, 10_000])
def test_flat_index_matches_brute_force(data, metric: str, batch_size: int) -> None:
    database, queries = data
    index = VectorIndex(database.shape[1], kind="flat", metric=metric)  # type: ignore[arg-type]
    index.add(database[:300])
    index.add(database[300:])
    assert index.ntotal == 600
    distances, indices = index.knn(queries, 8, batch_size=batch_size)
    expected_distances, expected_indices = brute_force_knn(queries, database, 8, metric)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4, atol=1e-4)
    assert distances.dtype == np.float32 and indices.dtype == np.int64


def test_l2_distances_are_euclidean_not_squared(data) -> None:
    database, _ = data
    index = VectorIndex(12)
    index.add(database)
    distances, _ = index.knn(database[:1] + 3.0 / np.sqrt(12), 1)
    # the query is shifted by a vector of norm 3 from row 0 → its nearest distance is ≤ 3
    assert distances[0, 0] <= 3.0 + 1e-5


def test_ivf_with_all_lists_probed_is_exact(data) -> None:
    database, queries = data
    index = VectorIndex(12, kind="ivf", n_lists=8, n_probe=8, seed=1)
    index.add(database)
    distances, indices = index.knn(queries, 5)
    expected_distances, expected_indices = brute_force_knn(queries, database, 5)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4, atol=1e-4)


def test_hnsw_has_high_recall(data) -> None:
    database, queries = data
    index = VectorIndex(12, kind="hnsw", hnsw_neighbors=16, ef_search=128)
    index.add(database)
    _, indices = index.knn(queries, 5)
    _, expected = brute_force_knn(queries, database, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(indices, expected, strict=True)])
    assert recall >= 0.95


def test_exact_knn_function_matches_brute_force(data) -> None:
    database, queries = data
    for metric in ("l2", "ip"):
        distances, indices = exact_knn(queries, database, 4, metric=metric, batch_size=9)  # type: ignore[arg-type]
        expected_distances, expected_indices = brute_force_knn(queries, database, 4, metric)
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(distances, expected_distances, rtol=1e-4, atol=1e-4)


def test_self_knn_exact_excludes_self(data) -> None:
    database, _ = data
    distances, indices = self_knn(database, 6, method="exact")
    full_distances, full_indices = brute_force_knn(database, database, 7)
    np.testing.assert_array_equal(indices, full_indices[:, 1:])
    np.testing.assert_allclose(distances, full_distances[:, 1:], rtol=1e-4, atol=1e-4)
    assert not (indices == np.arange(600)[:, None]).any()


def test_self_knn_cells_is_close_to_exact_on_clustered_data() -> None:
    points = blobs(3000, 16, n_blobs=12, seed=3)
    exact_distances, exact_indices = self_knn(points, 10, method="exact")
    distances, indices = self_knn(points, 10, method="cells", n_probe=6, seed=0)
    recall = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(indices, exact_indices, strict=True)]
    )
    assert recall >= 0.95
    # the density term only needs the mean distance: within 1 % on average
    assert np.mean(distances.mean(1) / exact_distances.mean(1)) < 1.01
    # a missed neighbour is replaced by a farther one: never closer than exact
    assert np.all(distances.mean(1) >= exact_distances.mean(1) - 1e-4)
    assert not (indices == np.arange(3000)[:, None]).any()
    again, _ = self_knn(points, 10, method="cells", n_probe=6, seed=0)
    np.testing.assert_array_equal(distances, again)


def test_self_knn_with_duplicates_keeps_k_neighbours() -> None:
    points = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 points × 4 copies
    distances, indices = self_knn(points, 3, method="exact")
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)
    assert indices.shape == (12, 3)
    assert not (indices == np.arange(12)[:, None]).any()


def test_drop_self_matches_drops_farthest_when_self_absent() -> None:
    distances = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    indices = np.array([[5, 2, 3], [7, 9, 4]])
    kept_distances, kept_indices = drop_self_matches(distances, indices, np.array([5, 1]))
    np.testing.assert_array_equal(kept_indices, [[2, 3], [7, 9]])
    np.testing.assert_array_equal(kept_distances, [[1.0, 2.0], [0.0, 0.0]])


def test_errors_are_clear(data) -> None:
    database, _ = data
    index = VectorIndex(12)
    index.add(database[:3])
    with pytest.raises(DataError, match="k=4 neighbours but only 3"):
        index.knn(database[:1], 4)
    with pytest.raises(DataError, match="dimension 5"):
        index.knn(np.zeros((1, 5), np.float32), 1)
    with pytest.raises(ConfigError, match="kind"):
        VectorIndex(12, kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="metric"):
        VectorIndex(12, metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="k=3 neighbours but only 2"):
        self_knn(database[:3], 3)


@pytest.mark.skipif(gpu_count() > 0, reason="this check is for machines without a GPU")
def test_gpu_request_without_gpu_is_refused_and_auto_falls_back() -> None:
    with pytest.raises(ConfigError, match="no GPU"):
        VectorIndex(4, device="gpu")
    assert VectorIndex(4, device="auto").device == "cpu"
