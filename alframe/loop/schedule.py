"""Budget schedules: how many items are labelled after each active-learning round.

A schedule is stored as cumulative labelled-set sizes ``(n_0, n_1, ...)``; round ``r`` selects
``n_r - n_{r-1}`` items (``n_{-1} = 0``). It can be written as cumulative sizes, as per-round batch
sizes, or as cumulative fractions of the pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alframe.errors import ConfigError


def _as_int_list(values: Sequence[Any], what: str, name: str) -> list[int]:
    result = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"schedule {name!r}: {what} must be positive integers, got {list(values)}"
            )
        result.append(int(value))
    if not result:
        raise ConfigError(f"schedule {name!r}: {what} is empty; list at least one round")
    return result


@dataclass(frozen=True)
class BudgetSchedule:
    """Cumulative labelled-set sizes after each round.

    Attributes:
        cumulative: strictly increasing sizes ``(n_0, n_1, ...)``, one per round.
        name: the schedule's name (folders, runs, tables).
    """

    cumulative: tuple[int, ...]
    name: str = "schedule"

    def __post_init__(self) -> None:
        sizes = _as_int_list(list(self.cumulative), "cumulative sizes", self.name)
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ConfigError(
                f"schedule {self.name!r}: cumulative sizes must increase strictly (each round "
                f"adds items), got {sizes}; write per-round sizes as batches instead"
            )
        object.__setattr__(self, "cumulative", tuple(sizes))

    @classmethod
    def from_cumulative(cls, sizes: Sequence[int], name: str = "schedule") -> BudgetSchedule:
        """A schedule from labelled-set sizes after each round, e.g. ``[22, 44, 88]``."""
        return cls(tuple(_as_int_list(sizes, "cumulative sizes", name)), name)

    @classmethod
    def from_batches(cls, batches: Sequence[int], name: str = "schedule") -> BudgetSchedule:
        """A schedule from the number of items added per round, e.g. ``[22, 22, 44]``."""
        sizes = _as_int_list(batches, "batch sizes", name)
        total, cumulative = 0, []
        for size in sizes:
            total += size
            cumulative.append(total)
        return cls(tuple(cumulative), name)

    @classmethod
    def from_fractions(
        cls, fractions: Sequence[float], pool_size: int, name: str = "schedule"
    ) -> BudgetSchedule:
        """A schedule from cumulative fractions of the pool, e.g. ``[0.05, 0.1, 0.2]``.

        Sizes are ``round(f * pool_size)``, at least 1.

        Raises:
            ConfigError: a fraction outside (0, 1], or two fractions giving the same size.
        """
        if not fractions:
            raise ConfigError(f"schedule {name!r}: fractions is empty; list at least one round")
        if any(isinstance(f, bool) or not 0.0 < float(f) <= 1.0 for f in fractions):
            raise ConfigError(
                f"schedule {name!r}: fractions must lie in (0, 1], got {list(fractions)}"
            )
        sizes = [max(1, round(float(f) * pool_size)) for f in fractions]
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ConfigError(
                f"schedule {name!r}: fractions {list(fractions)} of a {pool_size}-item pool give "
                f"sizes {sizes}, which do not increase strictly; use larger steps"
            )
        return cls(tuple(sizes), name)

    @classmethod
    def from_config(cls, config: Any, pool_size: int) -> BudgetSchedule:
        """A schedule from a recipe's ``experiment.schedules`` entry (a ``ScheduleConfig``)."""
        if config.cumulative is not None:
            return cls.from_cumulative(config.cumulative, config.name)
        if config.batches is not None:
            return cls.from_batches(config.batches, config.name)
        if config.fractions is not None:
            return cls.from_fractions(config.fractions, pool_size, config.name)
        raise ConfigError(
            f"schedule {config.name!r}: give cumulative, batches or fractions"
        )  # pragma: no cover - the schema enforces one form

    @property
    def batches(self) -> tuple[int, ...]:
        """Items added in each round."""
        previous = (0, *self.cumulative[:-1])
        return tuple(n - p for n, p in zip(self.cumulative, previous))

    @property
    def n_rounds(self) -> int:
        """Number of rounds."""
        return len(self.cumulative)

    def check_pool(self, pool_size: int) -> None:
        """Refuse a schedule that needs more items than the pool holds.

        Raises:
            ConfigError: the last size exceeds ``pool_size``.
        """
        if self.cumulative[-1] > pool_size:
            raise ConfigError(
                f"schedule {self.name!r} ends at {self.cumulative[-1]} labelled items but the "
                f"pool holds only {pool_size}; shorten the schedule or enlarge the pool"
            )
