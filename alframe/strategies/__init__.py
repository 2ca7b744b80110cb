"""Query strategies: what to annotate next.

Each strategy lives in its own module and registers itself in :data:`STRATEGIES`; importing this
package imports all of them (one line each below). Third-party strategies are found through the
entry-point group ``alframe.strategies``.

Example:
    >>> from alframe import strategies
    >>> from alframe.types import QueryContext
    >>> selection = strategies.create("xssr", alpha="auto").select(ctx, budget=22)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from alframe.strategies.base import (
    STRATEGIES,
    BudgetClippedWarning,
    InMemoryFallbackNote,
    Strategy,
    clip_budget,
    embeddings_for,
    on_disk_strategy_names,
    pool_array,
    top_unlabelled,
)

# One line per built-in strategy: importing the module registers it.
from alframe.strategies.coreset import CoresetStrategy
from alframe.strategies.defaults import DEFAULT_STRATEGY, recommended_params
from alframe.strategies.entropy import EntropyStrategy
from alframe.strategies.margin import MarginStrategy
from alframe.strategies.random import RandomStrategy
from alframe.strategies.typiclust import TypiClustStrategy
from alframe.strategies.uncertain_coreset import UncertainCoresetStrategy
from alframe.strategies.xssr import MissingSourceWarning, XSSRStrategy


def create(name: str, **params: Any) -> Strategy:
    """Builds the strategy registered as ``name`` with its parameters.

    Raises:
        ConfigError: unknown name (close matches listed) or unknown / invalid parameter.
    """
    strategy: Strategy = STRATEGIES.create(name, **params)
    return strategy


def names(pattern: str = "*") -> list[str]:
    """Sorted names of the registered strategies matching a shell-style wildcard."""
    return STRATEGIES.names(pattern)


__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "BudgetClippedWarning",
    "CoresetStrategy",
    "EntropyStrategy",
    "InMemoryFallbackNote",
    "MarginStrategy",
    "MissingSourceWarning",
    "RandomStrategy",
    "Strategy",
    "TypiClustStrategy",
    "UncertainCoresetStrategy",
    "XSSRStrategy",
    "clip_budget",
    "create",
    "embeddings_for",
    "names",
    "on_disk_strategy_names",
    "pool_array",
    "recommended_params",
    "top_unlabelled",
]
