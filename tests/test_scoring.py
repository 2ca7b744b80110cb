"""Pure scoring functions against independent NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from alframe.errors import ConfigError, DataError
from alframe.scoring import (
    DEFAULT_ALPHA_GRID,
    CoverageState,
    calibrate_alpha,
    choose_alpha,
    combine_terms,
    coverage_cost,
    density,
    k_center_greedy,
    knn_mean_distance,
    min_max_normalize,
    min_squared_distances_to_set,
    novelty,
    point_nearest_mean,
    squared_distances_to_rows,
    squared_row_norms,
    xssr_greedy,
)


def naive_k_center(
    points: np.ndarray, labelled: np.ndarray, budget: int, first: int | None
) -> tuple[list[int], np.ndarray]:
    """Textbook farthest-first traversal in float64, one full distance pass per centre."""
    x = points.astype(np.float64)
    nearest = np.full(len(x), np.inf)
    for centre in np.flatnonzero(labelled):
        nearest = np.minimum(nearest, ((x - x[centre]) ** 2).sum(1))
    taken = labelled.copy()
    picks: list[int] = []
    for step in range(budget):
        if step == 0 and first is not None:
            pick = first
        else:
            pick = int(np.argmax(np.where(taken, -np.inf, nearest)))
        picks.append(pick)
        taken[pick] = True
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    return picks, np.sqrt(nearest)


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((800, 10)).astype(np.float32)


def test_min_max_normalize() -> None:
    values = np.array([2.0, 4.0, 6.0, 100.0])
    np.testing.assert_allclose(min_max_normalize(values), [0, 2 / 98, 4 / 98, 1])
    mask = np.array([True, True, True, False])
    np.testing.assert_allclose(min_max_normalize(values, mask), [0, 0.5, 1, 24.5])
    np.testing.assert_array_equal(min_max_normalize(np.full(3, 7.0)), np.ones(3))
    np.testing.assert_array_equal(min_max_normalize(values, np.zeros(4, bool)), np.ones(4))


def test_distance_helpers_match_numpy(points: np.ndarray) -> None:
    x = points.astype(np.float64)
    norms = squared_row_norms(points, chunk_rows=33)
    np.testing.assert_allclose(norms, (x**2).sum(1), rtol=1e-5)
    rows = np.array([3, 500, 42])
    expected = ((x[None, :, :] - x[rows][:, None, :]) ** 2).sum(-1)
    np.testing.assert_allclose(
        squared_distances_to_rows(points, norms, rows), expected, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        squared_distances_to_rows(points, norms, rows[:1]), expected[:1], rtol=1e-4, atol=1e-4
    )
    centres = np.arange(0, 800, 7)
    nearest = min_squared_distances_to_set(points, norms, centres, block_elements=5_000)
    full = ((x[:, None, :] - x[centres][None, :, :]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(nearest, full, rtol=1e-4, atol=1e-4)
    assert np.all(nearest[centres] == 0)
    assert np.isinf(min_squared_distances_to_set(points, norms, np.empty(0, int))).all()


def test_knn_terms_match_brute_force(points: np.ndarray) -> None:
    x = points.astype(np.float64)
    pairwise = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(pairwise, np.inf)
    expected_mean = np.sort(pairwise, axis=1)[:, :10].mean(1)
    np.testing.assert_allclose(knn_mean_distance(points, 10), expected_mean, rtol=1e-4)
    np.testing.assert_allclose(
        density(points, k=10, epsilon=1e-6), 1 / (1e-6 + expected_mean), rtol=1e-4
    )
    source = points[:40] + 1.0
    to_source = np.sqrt(((x[:, None] - source.astype(np.float64)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(
        novelty(points, source, k=5), np.sort(to_source, axis=1)[:, :5].mean(1), rtol=1e-4
    )
    np.testing.assert_allclose(
        novelty(points, source[:3], k=5), to_source[:, :3].mean(1), rtol=1e-4
    )
    assert density(points[:1]).tolist() == [1.0]
    with pytest.raises(ConfigError, match="epsilon"):
        density(points, epsilon=0.0)


@pytest.mark.parametrize("method", ["lazy", "eager"])
@pytest.mark.parametrize("first_pick", ["mean", "random"])
def test_k_center_cold_start_equals_naive(points: np.ndarray, first_pick: str, method: str) -> None:
    labelled = np.zeros(len(points), bool)
    result = k_center_greedy(points, labelled, 25, first_pick=first_pick, seed=3, method=method)  # type: ignore[arg-type]
    picks, nearest = naive_k_center(points, labelled, 25, first=int(result.indices[0]))
    assert result.indices.tolist() == picks
    np.testing.assert_allclose(result.min_distances, nearest, rtol=1e-4, atol=1e-4)
    assert np.isinf(result.pick_distances[0])
    assert result.first_pick == first_pick
    if first_pick == "mean":
        mean = points.astype(np.float64).mean(0)
        assert result.indices[0] == np.argmin(((points - mean) ** 2).sum(1))
    else:
        again = k_center_greedy(points, labelled, 25, first_pick="random", seed=3)
        np.testing.assert_array_equal(again.indices, result.indices)


@pytest.mark.parametrize("method", ["lazy", "eager"])
def test_k_center_with_labelled_equals_naive(points: np.ndarray, method: str) -> None:
    labelled = np.zeros(len(points), bool)
    labelled[[5, 17, 300, 301, 799]] = True
    result = k_center_greedy(points, labelled, 40, method=method)  # type: ignore[arg-type]
    picks, nearest = naive_k_center(points, labelled, 40, first=None)
    assert result.indices.tolist() == picks
    assert result.first_pick == "farthest"
    np.testing.assert_allclose(result.min_distances, nearest, rtol=1e-4, atol=1e-4)
    # the pick-time distances are non-increasing (farthest-first)
    assert np.all(np.diff(result.pick_distances) <= 1e-5)
    assert result.coverage_cost == pytest.approx(nearest.mean(), rel=1e-4)
    assert result.covering_radius == pytest.approx(nearest.max(), rel=1e-4)


def test_point_nearest_mean_is_chunk_independent(points: np.ndarray) -> None:
    norms = squared_row_norms(points)
    x = points.astype(np.float64)
    for rows in (np.arange(len(points)), np.arange(3, len(points), 3)):
        mean = x[rows].mean(0)
        expected = int(rows[np.argmin(((x[rows] - mean) ** 2).sum(1))])
        for chunk_rows in (7, 64, 10_000):
            assert point_nearest_mean(points, rows, norms, chunk_rows=chunk_rows) == expected


def test_triangle_pruning_is_exact_and_skips_work_on_clustered_data() -> None:
    rng = np.random.default_rng(11)
    centres = 3.0 * rng.standard_normal((20, 6))
    points = (centres[rng.integers(0, 20, 3000)] + 0.1 * rng.standard_normal((3000, 6))).astype(
        np.float32
    )
    labelled = np.zeros(3000, bool)
    labelled[[5, 500]] = True
    states = {prune: CoverageState(points, labelled, prune=prune) for prune in (True, False)}
    for _ in range(60):
        picks = {
            prune: int(np.argmax(np.where(s.candidate[0], s.min_squared[0], -np.inf)))
            for prune, s in states.items()
        }
        assert picks[True] == picks[False]
        for state in states.values():
            state.add_centres(np.array([picks[True]]))
    # equal up to float32 rounding of ‖x‖² + ‖c‖² − 2x·c (‖x‖² ≈ 50 here)
    np.testing.assert_allclose(
        states[True].min_squared, states[False].min_squared, rtol=1e-4, atol=1e-4
    )
    assert states[False].rows_updated == 60 * 3000
    assert states[True].rows_updated < 0.5 * states[False].rows_updated
    picks_naive, _ = naive_k_center(points, labelled, 60, first=None)
    assert k_center_greedy(points, labelled, 60).indices.tolist() == picks_naive


@pytest.mark.parametrize("kind", ["sphere", "blobs"])
def test_lazy_k_center_equals_eager_and_naive_and_skips_work(kind: str) -> None:
    rng = np.random.default_rng(5)
    if kind == "sphere":  # unstructured high-dimensional data: eager pruning cannot help
        points = rng.standard_normal((3000, 64))
    else:
        centres = 3.0 * rng.standard_normal((25, 64))
        points = centres[rng.integers(0, 25, 3000)] + 0.2 * rng.standard_normal((3000, 64))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    labelled = np.zeros(3000, bool)
    labelled[[1, 2, 3]] = True
    lazy = k_center_greedy(points, labelled, 150, method="lazy")
    eager = k_center_greedy(points, labelled, 150, method="eager")
    picks_naive, nearest = naive_k_center(points, labelled, 150, first=None)
    assert lazy.indices.tolist() == eager.indices.tolist() == picks_naive
    np.testing.assert_allclose(lazy.pick_distances, eager.pick_distances, rtol=1e-4)
    np.testing.assert_allclose(lazy.min_distances, nearest, rtol=1e-4, atol=1e-4)

    from alframe.scoring.lazy_kcenter import LazyFarthestFirst

    state = LazyFarthestFirst(points, squared_row_norms(points), labelled, 150)
    for _ in range(150):
        state.add_centre(state.exact_top())
    assert state.refreshed_rows < 0.6 * 3000 * 150  # fewer than one pass per pick


def test_k_center_input_errors(points: np.ndarray) -> None:
    labelled = np.zeros(len(points), bool)
    with pytest.raises(DataError, match="exceeds"):
        k_center_greedy(points, labelled, 801)
    with pytest.raises(ConfigError, match="first_pick"):
        k_center_greedy(points, labelled, 2, first_pick="median")  # type: ignore[arg-type]
    labelled[4] = True
    with pytest.raises(ConfigError, match="not an unlabelled"):
        k_center_greedy(points, labelled, 2, first_pick=4)
    assert k_center_greedy(points, labelled, 0).indices.size == 0


def test_xssr_greedy_without_density_and_alpha_zero_is_k_center(points: np.ndarray) -> None:
    labelled = np.zeros(len(points), bool)
    labelled[[1, 2, 3]] = True
    ones, zeros = np.ones(len(points)), np.zeros(len(points))
    greedy = xssr_greedy(points, labelled, 30, ones, zeros, [0.0])
    assert greedy.indices[0].tolist() == k_center_greedy(points, labelled, 30).indices.tolist()


def test_lock_step_alphas_equal_separate_runs(points: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    density_hat, novelty_hat = rng.random(len(points)), rng.random(len(points))
    labelled = np.zeros(len(points), bool)
    together = xssr_greedy(points, labelled, 15, density_hat, novelty_hat, DEFAULT_ALPHA_GRID)
    for row, alpha in enumerate(DEFAULT_ALPHA_GRID):
        alone = xssr_greedy(points, labelled, 15, density_hat, novelty_hat, [alpha])
        np.testing.assert_array_equal(together.indices[row], alone.indices[0])
        assert together.coverage_cost[row] == pytest.approx(alone.coverage_cost[0], rel=1e-6)


def test_xssr_coverage_includes_labelled_items(points: np.ndarray) -> None:
    labelled = np.zeros(len(points), bool)
    labelled[[10, 20]] = True
    ones = np.ones(len(points))
    greedy = xssr_greedy(points, labelled, 5, ones, ones, [0.3], combine="add")
    centres = np.concatenate([[10, 20], greedy.indices[0]])
    cost, radius = coverage_cost(points, centres)
    assert greedy.coverage_cost[0] == pytest.approx(cost, rel=1e-5)
    assert greedy.covering_radius[0] == pytest.approx(radius, rel=1e-5)


def test_combine_terms() -> None:
    density_hat, novelty_hat = np.array([1.0, 0.5]), np.array([0.0, 1.0])
    diversity_hat = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(
        combine_terms(density_hat, novelty_hat, diversity_hat, np.array([0.25]), "mul"),
        [[0.75, 0.125]],
    )
    np.testing.assert_allclose(
        combine_terms(density_hat, novelty_hat, diversity_hat, np.array([0.25]), "add"),
        [[1.75, 0.75]],
    )


def test_choose_alpha_prefers_smaller_alpha_on_ties() -> None:
    alphas = np.array([0.0, 0.1, 0.2, 0.3])
    assert choose_alpha(alphas, np.array([3.0, 2.0, 2.0, 2.5])) == 1
    assert choose_alpha(alphas, np.array([3.0, 2.0 + 1e-9, 2.0, 2.5])) == 1
    assert choose_alpha(alphas, np.array([1.0, 1.0, 1.0, 1.0])) == 0


def test_calibrated_alpha_is_the_argmin_of_its_curve(points: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    density_hat, novelty_hat = rng.random(len(points)), rng.random(len(points))
    labelled = np.zeros(len(points), bool)
    calibration = calibrate_alpha(points, labelled, 12, density_hat, novelty_hat)
    costs = calibration.coverage_cost
    best = costs.min()
    chosen = int(np.flatnonzero(calibration.alphas == calibration.alpha)[0])
    assert costs[chosen] <= best * (1 + 1e-6)
    assert np.all(costs[:chosen] > best * (1 + 1e-6))
    assert not calibration.subsampled and calibration.calibration_budget == 12


def test_calibration_subsample_is_seeded_and_scales_the_budget(points: np.ndarray) -> None:
    ones = np.ones(len(points))
    labelled = np.zeros(len(points), bool)
    first = calibrate_alpha(points, labelled, 40, ones, ones * 0.5, subsample=200, seed=4)
    second = calibrate_alpha(points, labelled, 40, ones, ones * 0.5, subsample=200, seed=4)
    assert first.subsampled and first.calibration_rows.size == 200
    assert first.calibration_budget == 10  # 40 × 200 / 800
    np.testing.assert_array_equal(first.calibration_rows, second.calibration_rows)
    np.testing.assert_array_equal(first.coverage_cost, second.coverage_cost)
