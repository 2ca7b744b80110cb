"""The query-strategy contract, its registry and helpers shared by the strategies."""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from alframe._rows import is_on_disk
from alframe.errors import AlframeError, AlframeNote, ConfigError
from alframe.registry import Registry
from alframe.types import QueryContext, Selection


class BudgetClippedWarning(AlframeNote):
    """The budget exceeded the number of unlabelled items; all of them are selected."""


class InMemoryFallbackNote(AlframeNote):
    """A strategy that needs its embeddings in RAM was given a memory-mapped store
    (``embed.memory_map``): the store's rows were read into memory for it."""


class Strategy(ABC):
    """A query strategy: ``select(ctx, budget) -> Selection``.

    Subclasses are (frozen) dataclasses whose fields are their parameters, declare what they need
    from the :class:`~alframe.types.QueryContext` in :attr:`requires`, and implement
    :meth:`_select`. :meth:`select` validates and clips the budget (warning) and checks the
    result: exactly ``budget`` unique unlabelled indices, scores over the pool, NaN for labelled.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    supports_on_disk: ClassVar[bool] = False
    """Whether :meth:`select` accepts embeddings kept on disk (:class:`alframe._rows.OnDiskRows`,
    pools larger than RAM) and reads them in chunks."""

    def select(self, ctx: QueryContext, budget: int) -> Selection:
        """Selects ``budget`` unlabelled items of ``ctx`` (fewer, with a warning, if the pool is
        smaller).

        Args:
            ctx: the pool and what is known about it.
            budget: number of items to select (≥ 0).

        Returns:
            The selection: indices in pick order, scores and per-term arrays over the pool.

        Raises:
            ConfigError: the budget is not a non-negative integer.
            DataError: ``ctx`` lacks something this strategy requires.
        """
        if not isinstance(ctx, QueryContext):
            raise ConfigError(f"select() needs a QueryContext, got {type(ctx).__name__}")
        if is_on_disk(ctx.embeddings) and not self.supports_on_disk:
            raise ConfigError(
                f"strategy {self.name!r} needs the embeddings in RAM but got a memory-mapped "
                f"store ({ctx.embeddings!r}); load it with np.load(path) if it fits, or use a "
                f"strategy that reads it in chunks ({', '.join(on_disk_strategy_names())})"
            )
        budget = clip_budget(budget, ctx)
        if budget == 0:
            return Selection(
                indices=np.empty(0, dtype=np.int64),
                scores=np.full(ctx.n_items, np.nan),
                info={"strategy": self.name, "budget": 0},
            )
        selection = self._select(ctx, budget)
        _check_selection(selection, ctx, budget, self.name)
        selection.info.setdefault("strategy", self.name)
        selection.info.setdefault("budget", budget)
        return selection

    @abstractmethod
    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        """Selects exactly ``budget`` (1 ≤ budget ≤ #unlabelled) unlabelled items."""

    @property
    def params(self) -> dict[str, Any]:
        """The strategy's parameters (its dataclass fields), e.g. for tracking."""
        if dataclasses.is_dataclass(self):
            return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {}


STRATEGIES: Registry[type[Strategy]] = Registry("strategies")
"""All query strategies by name; third-party ones come from entry points ``alframe.strategies``."""


def on_disk_strategy_names() -> list[str]:
    """Sorted names of the registered strategies that select from an on-disk store."""
    return [n for n in STRATEGIES.names() if getattr(STRATEGIES.get(n), "supports_on_disk", False)]


def embeddings_for(strategy: Any, embeddings: np.ndarray) -> np.ndarray:
    """The pool embeddings as ``strategy`` can read them.

    An :class:`alframe._rows.OnDiskRows` store (``embed.memory_map``) goes as it is to a
    strategy that declares ``supports_on_disk``; any other strategy gets its rows in RAM
    ((N, D) float32, the same values), with an :class:`InMemoryFallbackNote` saying so. A matrix
    in RAM is returned as it is.

    Args:
        strategy: the strategy that will read them (its ``name`` and ``supports_on_disk``).
        embeddings: (N, D) pool embeddings, in RAM or a store.

    Returns:
        (N, D) embeddings the strategy accepts.
    """
    if not is_on_disk(embeddings) or getattr(strategy, "supports_on_disk", False):
        return embeddings
    store: Any = embeddings
    name = getattr(strategy, "name", "") or type(strategy).__name__
    warnings.warn(
        f"strategy {name!r} needs the pool embeddings in RAM, so {store.path} "
        f"({store.nbytes_on_disk / 1024**2:.1f} MiB on disk) is read into memory instead of "
        f"selecting from the memory-mapped store (embed.memory_map); "
        f"{', '.join(on_disk_strategy_names())} select from the store",
        InMemoryFallbackNote,
        stacklevel=2,
    )
    rows: np.ndarray = store.to_array()
    return rows


def clip_budget(budget: int, ctx: QueryContext) -> int:
    """Validates ``budget`` and clips it (with a :class:`BudgetClippedWarning`) to the pool."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise ConfigError(f"budget must be a non-negative integer, got {budget!r}")
    if budget < 0:
        raise ConfigError(f"budget must be a non-negative integer, got {budget}")
    n_candidates = int(ctx.n_items - np.count_nonzero(ctx.labelled))
    if budget > n_candidates:
        warnings.warn(
            f"budget {budget} exceeds the {n_candidates} unlabelled items; selecting all "
            f"{n_candidates}",
            BudgetClippedWarning,
            stacklevel=3,
        )
        return n_candidates
    return int(budget)


def top_unlabelled(scores: np.ndarray, labelled: np.ndarray, budget: int) -> np.ndarray:
    """The ``budget`` unlabelled items with the highest scores, best first; ties → lowest index.

    Args:
        scores: (N,) finite scores (values of labelled items are ignored).
        labelled: (N,) bool.
        budget: number of items (≤ number of unlabelled items).

    Returns:
        (budget,) int64 indices.
    """
    candidates = np.flatnonzero(~labelled)
    order = np.argsort(-scores[candidates], kind="stable")  # stable: equal scores keep index order
    return candidates[order[:budget]].astype(np.int64)


def pool_array(values: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """(N,) float64 copy of ``values`` with NaN at labelled items."""
    result = np.asarray(values, dtype=np.float64).copy()
    result[labelled] = np.nan
    return result


def _check_selection(selection: Selection, ctx: QueryContext, budget: int, name: str) -> None:
    indices = selection.indices
    problems = []
    if indices.size != budget:
        problems.append(f"{indices.size} indices instead of {budget}")
    if np.unique(indices).size != indices.size:
        problems.append("duplicate indices")
    if indices.size and (indices.min() < 0 or indices.max() >= ctx.n_items):
        problems.append("indices outside the pool")
    elif indices.size and ctx.labelled[indices].any():
        problems.append("labelled items selected")
    if selection.scores.shape != (ctx.n_items,):
        problems.append(f"scores of shape {selection.scores.shape}, expected ({ctx.n_items},)")
    if problems:  # a bug in the strategy, not a user error: say which strategy
        raise AlframeError(
            f"strategy {name!r} returned an invalid selection: {'; '.join(problems)}"
        )
