"""The product's default strategy and recommended parameters (alframe.strategies.defaults)."""

from __future__ import annotations

import pytest

from alframe import strategies
from alframe.config.schema import SelectConfig
from alframe.strategies.defaults import DEFAULT_STRATEGY, RECOMMENDED_PARAMS, recommended_params


def test_select_config_defaults_to_the_recommended_xssr() -> None:
    config = SelectConfig()
    assert config.strategy == DEFAULT_STRATEGY
    assert config.params == {"alpha": "auto", "combine": "add"}
    built = strategies.create(config.strategy, **config.params)
    assert built.params["combine"] == "add"


def test_a_named_strategy_without_params_gets_its_own_recommendation() -> None:
    assert SelectConfig(strategy="coreset").params == {}
    assert SelectConfig.model_validate({"strategy": "xssr"}).params["combine"] == "add"


def test_explicit_params_are_kept_as_written() -> None:
    assert SelectConfig(strategy="xssr", params={}).params == {}
    paper = SelectConfig(strategy="xssr", params={"combine": "mul"})
    assert strategies.create(paper.strategy, **paper.params).params["combine"] == "mul"


def test_recommended_params_is_a_fresh_copy() -> None:
    first = recommended_params("xssr")
    first["combine"] = "mul"
    assert recommended_params("xssr")["combine"] == "add"
    assert recommended_params("random") == {}


@pytest.mark.parametrize("name", sorted(RECOMMENDED_PARAMS))
def test_every_recommendation_builds_its_registered_strategy(name: str) -> None:
    assert name in strategies.names()
    strategies.create(name, **recommended_params(name))


def test_the_class_keeps_the_papers_default() -> None:
    # The product default lives in the config, not in the method: XSSR() is the paper's form.
    assert strategies.create("xssr").params["combine"] == "mul"
