"""One contract, every registered strategy: the checks of DESIGN.md "Contracts"."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from alframe import strategies
from alframe.errors import ConfigError, DataError
from alframe.strategies import BudgetClippedWarning, MissingSourceWarning, Strategy
from alframe.types import QueryContext, Selection

N_ITEMS = 240
ALL_STRATEGIES = strategies.names()
KNOWN_REQUIREMENTS = {"embeddings", "source_embeddings", "probabilities"}


def pool(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, 16))
    embeddings = centres[rng.integers(0, 6, N_ITEMS)] + 0.3 * rng.standard_normal((N_ITEMS, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    source = rng.standard_normal((30, 16))
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    probabilities = rng.random((N_ITEMS, 8, 8))
    return {
        "embeddings": embeddings.astype(np.float32),
        "source_embeddings": source.astype(np.float32),
        "probabilities": probabilities.astype(np.float32),
    }


def context(labelled: np.ndarray, seed: int = 0, **overrides: object) -> QueryContext:
    fields: dict[str, object] = dict(pool())
    fields.update(overrides)
    return QueryContext(labelled=labelled, seed=seed, **fields)  # type: ignore[arg-type]


def some_labelled() -> np.ndarray:
    labelled = np.zeros(N_ITEMS, dtype=bool)
    labelled[np.random.default_rng(5).choice(N_ITEMS, 25, replace=False)] = True
    return labelled


def check_selection(selection: Selection, ctx: QueryContext, budget: int) -> None:
    assert isinstance(selection, Selection)
    assert selection.indices.dtype == np.int64
    assert selection.indices.size == budget
    assert np.unique(selection.indices).size == budget
    assert not ctx.labelled[selection.indices].any()
    assert selection.scores.shape == (ctx.n_items,)
    assert np.isnan(selection.scores[ctx.labelled]).all()
    assert not np.isnan(selection.scores[~ctx.labelled]).any()
    for name, values in selection.terms.items():
        assert values.shape == (ctx.n_items,), name
        assert np.isnan(values[ctx.labelled]).all(), name


def test_every_builtin_strategy_is_registered() -> None:
    assert {"coreset", "entropy", "margin", "random", "typiclust", "xssr"} <= set(ALL_STRATEGIES)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_declares_requirements(name: str) -> None:
    strategy = strategies.create(name)
    assert isinstance(strategy, Strategy)
    assert isinstance(strategy.requires, frozenset)
    assert strategy.requires <= KNOWN_REQUIREMENTS
    assert strategy.name == name
    assert isinstance(strategy.params, dict)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_exact_count_unique_unlabelled(name: str) -> None:
    ctx = context(some_labelled())
    selection = strategies.create(name).select(ctx, 17)
    check_selection(selection, ctx, 17)
    assert selection.info["strategy"] == name


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_empty_labelled_set(name: str) -> None:
    ctx = context(np.zeros(N_ITEMS, dtype=bool))
    check_selection(strategies.create(name).select(ctx, 12), ctx, 12)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_deterministic_under_a_seed(name: str) -> None:
    first = strategies.create(name).select(context(some_labelled(), seed=11), 10)
    second = strategies.create(name).select(context(some_labelled(), seed=11), 10)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.scores, second.scores)
    for term in first.terms:
        np.testing.assert_array_equal(first.terms[term], second.terms[term])


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_budget_larger_than_pool_warns_and_clips(name: str) -> None:
    labelled = np.ones(N_ITEMS, dtype=bool)
    labelled[[3, 50, 51, 200, 239]] = False
    ctx = context(labelled)
    with pytest.warns(BudgetClippedWarning, match="exceeds the 5 unlabelled"):
        selection = strategies.create(name).select(ctx, 9)
    check_selection(selection, ctx, 5)
    assert sorted(selection.indices.tolist()) == [3, 50, 51, 200, 239]


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_zero_budget_and_fully_labelled_pool(name: str) -> None:
    ctx = context(some_labelled())
    assert strategies.create(name).select(ctx, 0).indices.size == 0
    full = context(np.ones(N_ITEMS, dtype=bool))
    with pytest.warns(BudgetClippedWarning):
        assert strategies.create(name).select(full, 3).indices.size == 0


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@pytest.mark.parametrize("bad_budget", [-1, 2.5, True, "3"])
def test_invalid_budget_is_a_config_error(name: str, bad_budget: object) -> None:
    with pytest.raises(ConfigError, match="budget"):
        strategies.create(name).select(context(some_labelled()), bad_budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_refused_naming_the_rows(name: str, bad_value: float) -> None:
    embeddings = pool()["embeddings"].copy()
    embeddings[[7, 130], 2] = bad_value
    labelled = some_labelled()
    with pytest.raises(DataError, match=r"NaN or infinite values in 2 row\(s\) \[7, 130\]"):
        strategies.create(name).select(context(labelled, embeddings=embeddings), 5)
    assert np.isnan(embeddings[7, 2]) or np.isinf(embeddings[7, 2])  # caller's data untouched


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_unknown_parameter_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        strategies.create(name, no_such_parameter=1)


def test_strategies_without_their_inputs_fail_clearly() -> None:
    ctx = context(some_labelled(), probabilities=None)
    with pytest.raises(DataError, match="needs predictions"):
        strategies.create("entropy").select(ctx, 3)
    with pytest.warns(MissingSourceWarning):
        selection = strategies.create("xssr").select(
            context(some_labelled(), source_embeddings=None), 3
        )
    assert selection.info["alpha"] == 0.0


def test_non_finite_source_embeddings_are_refused() -> None:
    source = pool()["source_embeddings"].copy()
    source[4, 0] = np.nan
    with pytest.raises(DataError, match=r"source_embeddings contain NaN.*\[4\]"):
        context(some_labelled(), source_embeddings=source)


def test_context_validation_messages() -> None:
    embeddings = pool()["embeddings"]
    with pytest.raises(DataError, match="boolean mask"):
        QueryContext(embeddings=embeddings, labelled=np.zeros(N_ITEMS, dtype=int))
    with pytest.raises(DataError, match="one flag per pool item"):
        QueryContext(embeddings=embeddings, labelled=np.zeros(3, dtype=bool))
    with pytest.raises(DataError, match="2-D"):
        QueryContext(embeddings=embeddings[0], labelled=np.zeros(16, dtype=bool))
    with pytest.raises(DataError, match="dimension 5"):
        QueryContext(
            embeddings=embeddings,
            labelled=np.zeros(N_ITEMS, dtype=bool),
            source_embeddings=np.zeros((2, 5), np.float32),
        )
    with pytest.raises(DataError, match="ids must be unique"):
        QueryContext(embeddings=embeddings[:2], labelled=np.zeros(2, bool), ids=["a", "a"])
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        QueryContext(
            embeddings=embeddings[:2],
            labelled=np.zeros(2, bool),
            probabilities=np.full((2, 3, 3), 4.0),
        )
    bad = embeddings[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataError, match=r"\[1 \('b'\)\]"):
        QueryContext(embeddings=bad, labelled=np.zeros(3, bool), ids=["a", "b", "c"])


def test_context_coerces_without_copying_float32() -> None:
    embeddings = pool()["embeddings"]
    ctx = QueryContext(embeddings=embeddings, labelled=np.zeros(N_ITEMS, dtype=bool))
    assert ctx.embeddings is embeddings
    as64 = QueryContext(
        embeddings=embeddings.astype(np.float64), labelled=np.zeros(N_ITEMS, dtype=bool)
    )
    assert as64.embeddings.dtype == np.float32
    assert ctx.rng.random() == ctx.rng.random()  # a fresh, identically seeded generator


def test_no_global_random_state_is_used() -> None:
    # the legacy global generator is what must stay untouched, hence the legacy calls
    np.random.seed(0)  # noqa: NPY002
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ALL_STRATEGIES:
            strategies.create(name).select(context(some_labelled()), 4)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
