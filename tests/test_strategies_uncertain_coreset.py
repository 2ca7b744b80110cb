"""Uncertainty-weighted CoreSet against a brute-force NumPy reference and known geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from alframe import strategies
from alframe.errors import ConfigError, DataError
from alframe.scoring.greedy import k_center_greedy
from alframe.scoring.weighted_kcenter import rank_weights, weighted_k_center_greedy
from alframe.types import QueryContext


def _naive(
    x: np.ndarray, labelled: np.ndarray, u: np.ndarray, budget: int, power: float
) -> list[int]:
    """Every step recomputes every distance from scratch (float64)."""
    candidates = np.flatnonzero(~labelled)
    weights = np.zeros(len(x))
    weights[candidates] = rankdata(u[candidates]) / candidates.size
    centres = list(np.flatnonzero(labelled))
    picks: list[int] = []
    for _ in range(budget):
        best, best_score = -1, -np.inf
        for i in range(len(x)):
            if labelled[i] or i in picks:
                continue
            if centres:
                d = min(float(np.linalg.norm(x[i] - x[c])) for c in centres)
                score = d * weights[i] ** power
            else:
                score = weights[i] ** power
            if score > best_score:
                best, best_score = i, score
        picks.append(best)
        centres.append(best)
    return picks


def _pool(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    u = rng.random(n)
    labelled = np.zeros(n, dtype=bool)
    labelled[rng.choice(n, 6, replace=False)] = True
    return x, labelled, u


@pytest.mark.parametrize("power", [0.5, 1.0, 3.0])
def test_picks_match_a_brute_force_reference(power: float) -> None:
    x, labelled, u = _pool(power.__hash__() % 7)
    result = weighted_k_center_greedy(x, labelled, u, 12, power)
    assert result.indices.tolist() == _naive(x, labelled, u, 12, power)


def test_power_zero_is_coreset() -> None:
    x, labelled, u = _pool(3)
    plain = k_center_greedy(x, labelled, 15, method="eager")
    weighted = weighted_k_center_greedy(x, labelled, u, 15, 0.0)
    assert weighted.indices.tolist() == plain.indices.tolist()


def test_cold_start_takes_the_most_uncertain_item_then_spreads_out() -> None:
    # Two groups on a line; the model doubts the left group. Top-k uncertainty takes three
    # neighbours at the left group's right end; the hybrid takes that end (cold start: most
    # uncertain), then the far group's most doubted item, then the left group's other end.
    left = np.stack([np.linspace(0.0, 1.0, 10), np.zeros(10)], axis=1)
    right = np.stack([np.linspace(10.0, 11.0, 10), np.zeros(10)], axis=1)
    x = np.concatenate([left, right]).astype(np.float32)
    u = np.concatenate([np.linspace(0.9, 1.0, 10), np.linspace(0.0, 0.1, 10)])
    labelled = np.zeros(20, dtype=bool)
    result = weighted_k_center_greedy(x, labelled, u, 3, 1.0)
    assert result.indices[0] == int(np.argmax(u))
    assert np.isinf(result.pick_scores[0])
    assert result.indices.tolist() == [9, 19, 0] == _naive(x, labelled, u, 3, 1.0)
    assert sorted(np.argsort(-u)[:3].tolist()) == [7, 8, 9]


def test_rank_weights_are_scale_free_and_ignore_labelled_items() -> None:
    u = np.array([0.3, 5.0, 0.3, 0.1, 9.0])
    candidate = np.array([True, True, True, True, False])
    weights = rank_weights(u, candidate)
    np.testing.assert_allclose(weights, [2.5 / 4, 4 / 4, 2.5 / 4, 1 / 4, 0.0])
    np.testing.assert_allclose(rank_weights(100 * u + 7, candidate), weights)


def test_strategy_reads_probabilities_and_reports_its_terms() -> None:
    x, labelled, _ = _pool(5)
    rng = np.random.default_rng(1)
    probabilities = rng.random((len(x), 4, 4)).astype(np.float32)
    ctx = QueryContext(embeddings=x, labelled=labelled, probabilities=probabilities, seed=0)
    selection = strategies.create("uncertain-coreset", weight_power=2.0).select(ctx, 7)
    assert selection.info["weight_power"] == 2.0
    assert set(selection.terms) == {"diversity", "uncertainty"}
    entropy = strategies.create("entropy").select(ctx, 7)
    np.testing.assert_allclose(selection.terms["uncertainty"], entropy.terms["uncertainty"])
    expected = weighted_k_center_greedy(
        x, labelled, np.nan_to_num(entropy.terms["uncertainty"]), 7, 2.0
    )
    assert selection.indices.tolist() == expected.indices.tolist()


@pytest.mark.parametrize(
    "params",
    [{"weight_power": -1.0}, {"weight_power": True}, {"measure": "variance"}, {"top_fraction": 0}],
)
def test_bad_parameters_are_config_errors(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        strategies.create("uncertain-coreset", **params)


def test_missing_predictions_and_bad_inputs_are_refused() -> None:
    x, labelled, u = _pool(2)
    ctx = QueryContext(embeddings=x, labelled=labelled, seed=0)
    with pytest.raises(DataError, match="probabilities"):
        strategies.create("uncertain-coreset").select(ctx, 3)
    broken = u.copy()
    broken[np.flatnonzero(~labelled)[0]] = np.nan
    with pytest.raises(DataError, match="finite"):
        weighted_k_center_greedy(x, labelled, broken, 3)
    with pytest.raises(ConfigError, match="budget"):
        weighted_k_center_greedy(x, labelled, u, len(x))
