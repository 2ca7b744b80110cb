"""The one-alpha XSSR greedy with speculative blocks (alframe.scoring.lazy_xssr) against the eager
greedy (itself checked against a naive float64 reference in test_scoring.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alframe._rows import NpyRowWriter, OnDiskRows
from alframe.errors import ConfigError
from alframe.scoring.greedy import xssr_greedy
from alframe.scoring.lazy_xssr import lazy_xssr_greedy


def _problem(seed: int) -> dict:
    """A random pool (unstructured or clustered), labelled set (or cold start) and terms."""
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(40, 400))
    dim = int(rng.choice([2, 8, 32]))
    if seed % 2:
        points = rng.normal(size=(n_items, dim))
    else:
        centres = rng.normal(size=(5, dim)) * 4
        points = centres[rng.integers(0, 5, n_items)] + rng.normal(size=(n_items, dim)) * 0.3
    labelled = np.zeros(n_items, dtype=bool)
    if seed % 3:
        labelled[rng.choice(n_items, int(rng.integers(1, 10)), replace=False)] = True
    density = np.ones(n_items) if seed % 5 == 0 else rng.random(n_items)
    return {
        "embeddings": points.astype(np.float32),
        "labelled": labelled,
        "budget": int(min(rng.integers(1, 80), (~labelled).sum())),
        "density_hat": density,
        "novelty_hat": rng.random(n_items),
        "alphas": [float(rng.choice([0.0, 0.3, 0.5, 1.0]))],
        "combine": "add" if seed % 4 in (1, 3) else "mul",
    }


def _lazy_with_counters(problem: dict) -> tuple:
    return lazy_xssr_greedy(
        problem["embeddings"],
        problem["labelled"],
        problem["budget"],
        problem["density_hat"],
        problem["novelty_hat"],
        float(problem["alphas"][0]),
        problem["combine"],
    )


def _assert_same_selection(lazy, eager, embeddings) -> None:
    np.testing.assert_array_equal(lazy.indices, eager.indices)
    # δ² of a pick comes from a thin matrix product (block pass) or a few dot products (refresh)
    # instead of the eager matrix-vector products: float32 rounding of ‖x‖² + ‖c‖² − 2x·c,
    # i.e. ~1e-6 of the largest squared norm, not of δ² itself.
    scale = float((np.asarray(embeddings, dtype=np.float64) ** 2).sum(axis=1).max())
    for got, expected in (
        (lazy.pick_diversity, eager.pick_diversity),
        (lazy.min_distances, eager.min_distances),
    ):
        np.testing.assert_allclose(
            got.astype(np.float64) ** 2, expected.astype(np.float64) ** 2, atol=1e-5 * scale
        )
    # ... which on δ near 0 is ~1e-3 of δ itself (a square root of a rounding error).
    np.testing.assert_allclose(lazy.pick_scores, eager.pick_scores, atol=3e-3)
    np.testing.assert_allclose(lazy.pick_diversity_hat, eager.pick_diversity_hat, atol=3e-3)
    np.testing.assert_allclose(lazy.coverage_cost, eager.coverage_cost, rtol=1e-4)


@pytest.mark.parametrize("seed", range(60))
def test_picks_equal_the_eager_greedy(seed: int) -> None:
    problem = _problem(seed)
    eager = xssr_greedy(**problem, method="eager")
    lazy = xssr_greedy(**problem, method="lazy")
    _assert_same_selection(lazy, eager, problem["embeddings"])
    auto = xssr_greedy(**problem)  # one alpha: lazy by default
    np.testing.assert_array_equal(auto.indices, lazy.indices)


def test_wrong_speculation_is_rolled_back_and_blocks_grow_when_it_holds() -> None:
    # Clustered pools roll blocks back (a dense pick's neighbour undercuts `low`); every one of
    # these problems still gives the eager picks (checked above), so the rollbacks happened and
    # were repaired.
    rollbacks = sum(_lazy_with_counters(_problem(seed))[1]["rollbacks"] for seed in range(0, 40))
    assert rollbacks > 0
    # An unstructured, higher-dimensional pool: the speculation holds, so far fewer passes over
    # the pool than picks (the eager greedy makes one per pick).
    rng = np.random.default_rng(7)
    points = rng.normal(size=(3000, 64)).astype(np.float32)
    labelled = np.zeros(3000, dtype=bool)
    labelled[:5] = True
    problem = {
        "embeddings": points,
        "labelled": labelled,
        "budget": 120,
        "density_hat": rng.random(3000),
        "novelty_hat": rng.random(3000),
        "alphas": [0.5],
        "combine": "mul",
    }
    result, counters = _lazy_with_counters(problem)
    assert counters["passes"] <= 120 // 4, counters
    assert counters["refreshed_rows"] < 3000 * 120 / 4, counters  # far below one pass per pick
    _assert_same_selection(result, xssr_greedy(**problem, method="eager"), points)


def test_selects_from_the_on_disk_store_like_from_ram(tmp_path: Path) -> None:
    problem = _problem(11)
    path = tmp_path / "rows.npy"
    with NpyRowWriter(path, *problem["embeddings"].shape, dtype="float32") as writer:
        writer.write(problem["embeddings"])
    in_ram = xssr_greedy(**problem, method="lazy")
    with OnDiskRows(path) as store:
        on_disk = xssr_greedy(**{**problem, "embeddings": store}, method="lazy")
    np.testing.assert_array_equal(on_disk.indices, in_ram.indices)
    np.testing.assert_array_equal(on_disk.min_distances, in_ram.min_distances)


def test_method_is_checked() -> None:
    problem = _problem(3)
    with pytest.raises(ConfigError, match="one alpha"):
        xssr_greedy(**{**problem, "alphas": [0.0, 0.5]}, method="lazy")
    with pytest.raises(ConfigError, match="auto, eager or lazy"):
        xssr_greedy(**problem, method="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_candidates_that_duplicate_centres_have_no_diversity_range(seed: int) -> None:
    # 10 distinct points, each 3 times, shuffled. Once all 10 are centres, every candidate left
    # is a duplicate: δ is 0 up to float32 rounding of ‖x‖² + ‖c‖² − 2x·c (which differs between
    # the eager and the block products), and that is no range to normalise: δ̂ ≡ 1, so the picks
    # follow the static part alone, the same in both greedies.
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.repeat(np.arange(10), 3))
    points = rng.normal(size=(10, 64))[group].astype(np.float32)
    problem = {
        "embeddings": points,
        "labelled": np.zeros(30, dtype=bool),
        "budget": 30,
        "density_hat": rng.random(30),
        "novelty_hat": rng.random(30),
        "alphas": [0.1],
    }
    eager = xssr_greedy(**problem, method="eager")
    lazy = xssr_greedy(**problem, method="lazy")
    np.testing.assert_array_equal(lazy.indices, eager.indices)
    for result in (eager, lazy):
        assert len(set(group[result.indices[0, :10]])) == 10  # one of each first
        np.testing.assert_array_equal(result.pick_diversity_hat[0, 10:], 1.0)
        assert np.all(np.diff(result.pick_scores[0, 10:]) <= 0)  # static part alone
