"""Strategies on geometry (and probability maps) where the right answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from alframe import strategies
from alframe.errors import ConfigError
from alframe.scoring import k_center_greedy
from alframe.types import QueryContext

DIM = 8


def blob(centre: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.05) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, centre.size))


def corners(n: int, scale: float = 2.0) -> np.ndarray:
    """n well separated centres (scaled basis vectors)."""
    return scale * np.eye(DIM)[:n]


def context(
    embeddings: np.ndarray, labelled: np.ndarray | None = None, **fields: object
) -> QueryContext:
    if labelled is None:
        labelled = np.zeros(len(embeddings), bool)
    return QueryContext(embeddings=embeddings, labelled=labelled, **fields)  # type: ignore[arg-type]


def naive_k_center(
    points: np.ndarray, labelled: np.ndarray, budget: int, first: int | None
) -> list[int]:
    x = points.astype(np.float64)
    nearest = np.full(len(x), np.inf)
    for centre in np.flatnonzero(labelled):
        nearest = np.minimum(nearest, ((x - x[centre]) ** 2).sum(1))
    taken, picks = labelled.copy(), []
    for step in range(budget):
        pick = (
            first
            if step == 0 and first is not None
            else int(np.argmax(np.where(taken, -np.inf, nearest)))
        )
        picks.append(pick)
        taken[pick] = True
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    return picks


@pytest.fixture(scope="module")
def random_pool() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((500, DIM)).astype(np.float32)


# --- CoreSet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("first_pick", ["mean", "random"])
def test_coreset_equals_naive_k_center_from_the_same_first_pick(random_pool, first_pick) -> None:
    selection = strategies.create("coreset", first_pick=first_pick).select(
        context(random_pool, seed=9), 30
    )
    first = int(selection.indices[0])
    assert selection.indices.tolist() == naive_k_center(random_pool, np.zeros(500, bool), 30, first)
    if first_pick == "mean":
        mean = random_pool.astype(np.float64).mean(0)
        assert first == int(np.argmin(((random_pool - mean) ** 2).sum(1)))
    assert selection.info["first_pick"] == first_pick


def test_coreset_with_labelled_items_starts_farthest_from_them(random_pool) -> None:
    labelled = np.zeros(500, bool)
    labelled[[0, 1, 2, 100]] = True
    selection = strategies.create("coreset").select(context(random_pool, labelled), 30)
    assert selection.indices.tolist() == naive_k_center(random_pool, labelled, 30, None)
    assert selection.info["first_pick"] == "farthest"


def test_coreset_rejects_unknown_first_pick_and_method() -> None:
    with pytest.raises(ConfigError, match="first_pick"):
        strategies.create("coreset", first_pick="median")
    with pytest.raises(ConfigError, match="method"):
        strategies.create("coreset", method="fast")


def test_coreset_lazy_and_eager_agree(random_pool) -> None:
    labelled = np.zeros(500, bool)
    labelled[[9, 99]] = True
    ctx = context(random_pool, labelled)
    lazy = strategies.create("coreset").select(ctx, 40)
    eager = strategies.create("coreset", method="eager").select(ctx, 40)
    np.testing.assert_array_equal(lazy.indices, eager.indices)
    np.testing.assert_allclose(lazy.scores, eager.scores, rtol=1e-4, atol=1e-5)


# --- XSSR --------------------------------------------------------------------------------------


def test_xssr_without_density_and_alpha_zero_equals_coreset(random_pool) -> None:
    source = random_pool[:20] + 1.0
    xssr = strategies.create("xssr", use_density=False, alpha=0.0)
    # cold start: every δ̂ = 1 → the first pick is the lowest index; the rest is k-center
    cold = xssr.select(context(random_pool, source_embeddings=source), 25)
    expected = k_center_greedy(
        random_pool, np.zeros(500, bool), 25, first_pick=int(cold.indices[0])
    )
    assert cold.indices.tolist() == expected.indices.tolist()
    # with labelled items there is no first-pick freedom: identical selections
    labelled = np.zeros(500, bool)
    labelled[[4, 8, 15, 16, 23, 42]] = True
    ctx = context(random_pool, labelled, source_embeddings=source)
    coreset = strategies.create("coreset").select(ctx, 25)
    assert xssr.select(ctx, 25).indices.tolist() == coreset.indices.tolist()


def outlier_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three tight clusters of 40 and 4 isolated outliers far from everything."""
    rng = np.random.default_rng(0)
    clusters = [blob(c, 40, rng) for c in corners(3)]
    outliers = 6.0 * np.eye(DIM)[3:7] - 3.0
    points = np.vstack([*clusters, outliers]).astype(np.float32)
    cluster_of = np.repeat([0, 1, 2], 40)
    outlier_rows = np.arange(120, 124)
    return points, cluster_of, outlier_rows


def test_xssr_avoids_outliers_thanks_to_density() -> None:
    points, cluster_of, outlier_rows = outlier_geometry()
    source = points[:5] + 0.01  # near cluster 0; alpha = 0 ignores it anyway
    ctx = context(points, source_embeddings=source)
    picks = strategies.create("xssr", alpha=0.0).select(ctx, 3).indices
    assert not np.isin(picks, outlier_rows).any()
    assert sorted(cluster_of[picks].tolist()) == [0, 1, 2]  # and covers every cluster
    # the same geometry without density: farthest-first goes straight for the outliers
    no_density = strategies.create("xssr", alpha=0.0, use_density=False).select(ctx, 3).indices
    assert np.isin(no_density, outlier_rows).sum() >= 2
    assert np.isin(strategies.create("coreset").select(ctx, 3).indices, outlier_rows).sum() >= 2


def test_xssr_alpha_one_prefers_items_far_from_the_source() -> None:
    rng = np.random.default_rng(1)
    near, far = blob(corners(2)[0], 60, rng, 0.1), blob(corners(2)[1], 60, rng, 0.1)
    points = np.vstack([near, far]).astype(np.float32)
    source = blob(corners(2)[0], 30, rng, 0.1).astype(np.float32)
    ctx = context(points, source_embeddings=source)
    selection = strategies.create("xssr", alpha=1.0).select(ctx, 6)
    assert np.all(selection.indices >= 60)
    assert np.all(selection.terms["novelty"][60:] > selection.terms["novelty"][:60].max())
    # alpha = 0 ignores the source and covers both clusters
    balanced = strategies.create("xssr", alpha=0.0).select(ctx, 2).indices
    assert sorted((balanced >= 60).tolist()) == [False, True]


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_xssr_alpha_zero_covers_every_cluster(combine: str) -> None:
    rng = np.random.default_rng(2)
    points = np.vstack([blob(c, 30, rng) for c in corners(5)]).astype(np.float32)
    source = rng.standard_normal((10, DIM)).astype(np.float32)
    picks = (
        strategies.create("xssr", alpha=0.0, combine=combine)
        .select(context(points, source_embeddings=source), 5)
        .indices
    )
    assert sorted((picks // 30).tolist()) == [0, 1, 2, 3, 4]


def test_xssr_calibrated_alpha_is_the_argmin_of_its_curve(random_pool) -> None:
    source = random_pool[:40] * 0.5 + 0.7
    ctx = context(random_pool, source_embeddings=source, seed=3)
    selection = strategies.create("xssr").select(ctx, 15)
    curve = selection.info["coverage_curve"]
    assert sorted(curve) == [pytest.approx(0.1 * i) for i in range(11)]
    alpha = selection.info["alpha"]
    best = min(curve.values())
    assert curve[alpha] <= best * (1 + 1e-6)
    assert all(cost > best * (1 + 1e-6) for a, cost in curve.items() if a < alpha)
    assert selection.info["coverage_cost"] == pytest.approx(curve[alpha])
    assert set(selection.info["covering_radius_curve"]) == set(curve)
    # the lock-step calibration run and a fixed-alpha run agree
    fixed = strategies.create("xssr", alpha=alpha).select(ctx, 15)
    np.testing.assert_array_equal(selection.indices, fixed.indices)


def test_xssr_subsampled_calibration_then_full_run(random_pool) -> None:
    source = random_pool[:40] * 0.5 + 0.7
    ctx = context(random_pool, source_embeddings=source, seed=3)
    selection = strategies.create("xssr", calibration_subsample=200).select(ctx, 20)
    calibration = selection.info["calibration"]
    assert calibration == {"subsampled": True, "items": 200, "budget": 8}
    fixed = strategies.create("xssr", alpha=selection.info["alpha"]).select(ctx, 20)
    np.testing.assert_array_equal(selection.indices, fixed.indices)


def test_xssr_terms_explain_each_pick(random_pool) -> None:
    labelled = np.zeros(500, bool)
    labelled[[7, 70]] = True
    source = random_pool[:30] + 0.5
    ctx = context(random_pool, labelled, source_embeddings=source)
    selection = strategies.create("xssr", alpha=0.3).select(ctx, 10)
    x = random_pool.astype(np.float64)
    centres = [7, 70]
    for pick in selection.indices:
        at_pick = np.sqrt(((x[centres] - x[pick]) ** 2).sum(1)).min()
        assert selection.terms["diversity_raw"][pick] == pytest.approx(at_pick, rel=1e-4)
        centres.append(int(pick))
        score = selection.terms["density"][pick] * (
            0.3 * selection.terms["novelty"][pick] + 0.7 * selection.terms["diversity"][pick]
        )
        assert selection.scores[pick] == pytest.approx(score, rel=1e-4)
    for name in ("density", "novelty", "diversity"):
        values = selection.terms[name][~labelled]
        assert values.min() >= -1e-6 and values.max() <= 1 + 1e-6
    # diversity is the main driver: pick-time δ is non-increasing only in tendency, but always > 0
    assert np.all(selection.terms["diversity_raw"][selection.indices] > 0)


def test_xssr_without_source_warns_and_forces_alpha_zero(random_pool) -> None:
    from alframe.strategies import MissingSourceWarning

    with pytest.warns(MissingSourceWarning, match="alpha is forced to 0"):
        selection = strategies.create("xssr", alpha=0.7).select(context(random_pool), 5)
    assert selection.info["alpha"] == 0.0
    assert np.all(selection.terms["novelty"][~np.isnan(selection.terms["novelty"])] == 0)


@pytest.mark.parametrize(
    "params",
    [
        {"alpha": 1.5},
        {"alpha": "best"},
        {"combine": "max"},
        {"density_k": 0},
        {"calibration_subsample": 1},
        {"alpha_grid": ()},
        {"knn_method": "lsh"},
    ],
)
def test_xssr_invalid_parameters(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="xssr"):
        strategies.create("xssr", **params)


# --- uncertainty ----------------------------------------------------------------------------


def constant_maps(values: list[float]) -> np.ndarray:
    return np.stack([np.full((6, 6), v) for v in values]).astype(np.float32)


@pytest.mark.parametrize("name", ["entropy", "margin"])
def test_uncertainty_strategies_pick_the_most_uncertain(name: str) -> None:
    maps = constant_maps([0.99, 0.5, 0.9, 0.7, 0.01, 0.6])
    embeddings = np.zeros((6, 2), np.float32)
    selection = strategies.create(name).select(context(embeddings, probabilities=maps), 3)
    assert selection.indices.tolist() == [1, 5, 3]
    labelled = np.zeros(6, bool)
    labelled[1] = True
    selection = strategies.create(name).select(context(embeddings, labelled, probabilities=maps), 3)
    assert selection.indices.tolist() == [5, 3, 2]
    assert np.isnan(selection.scores[1])


def test_entropy_and_margin_disagree_where_they_should() -> None:
    two_way_tie = np.array([0.5, 0.5, 0.0])  # margin: maximal; entropy: log 2
    spread_out = np.array([0.4, 0.3, 0.3])  # margin 0.9; entropy 1.09 > log 2
    maps = np.stack(
        [np.broadcast_to(p[:, None, None], (3, 4, 4)) for p in (two_way_tie, spread_out)]
    )
    ctx = context(np.zeros((2, 2), np.float32), probabilities=maps.astype(np.float32))
    assert strategies.create("entropy").select(ctx, 1).indices.tolist() == [1]
    assert strategies.create("margin").select(ctx, 1).indices.tolist() == [0]


def test_uncertainty_ties_go_to_the_lowest_index_and_precomputed_values_work() -> None:
    ctx = context(np.zeros((5, 2), np.float32), uncertainty=np.array([0.2, 0.9, 0.9, 0.1, 0.9]))
    selection = strategies.create("entropy").select(ctx, 2)
    assert selection.indices.tolist() == [1, 2]
    assert selection.info["source"] == "precomputed"


def test_uncertainty_aggregation_is_pluggable() -> None:
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0] = 0.8  # mildly uncertain everywhere
    maps[1, :2, :2] = 0.5  # certain except a small, maximally uncertain patch
    ctx = context(np.zeros((2, 2), np.float32), probabilities=maps)
    assert strategies.create("margin").select(ctx, 1).indices.tolist() == [0]
    top = strategies.create("margin", aggregation="top_fraction", top_fraction=0.04)
    assert top.select(ctx, 1).indices.tolist() == [1]
    with pytest.raises(ConfigError, match="Did you mean"):
        strategies.create("entropy", aggregation="top_fractoin")


# --- TypiClust ------------------------------------------------------------------------------


def typiclust_pool() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    sizes = [30, 45, 60, 25, 50, 40]
    points = np.vstack([blob(c, n, rng, 0.1) for c, n in zip(corners(6, 4.0), sizes, strict=True)])
    return points.astype(np.float32), np.repeat(np.arange(6), sizes)


def test_typiclust_picks_one_typical_item_per_cluster() -> None:
    points, blob_of = typiclust_pool()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selection = strategies.create("typiclust").select(context(points, seed=1), 6)
    assert sorted(blob_of[selection.indices].tolist()) == [0, 1, 2, 3, 4, 5]
    # largest blob first, and each pick is the most typical item of its blob
    assert blob_of[selection.indices[0]] == 2
    for pick in selection.indices:
        members = blob_of == blob_of[pick]
        assert selection.scores[pick] == np.max(selection.scores[members])


def test_typiclust_skips_covered_clusters() -> None:
    points, blob_of = typiclust_pool()
    labelled = np.zeros(len(points), bool)
    labelled[[np.flatnonzero(blob_of == 2)[0], np.flatnonzero(blob_of == 4)[3]]] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selection = strategies.create("typiclust", kmeans_backend="faiss").select(
            context(points, labelled, seed=2), 4
        )
    assert sorted(blob_of[selection.indices].tolist()) == [0, 1, 3, 5]
