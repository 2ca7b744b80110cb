"""Oracles: who turns a selection into labels.

:class:`SimulatedOracle` is for budget experiments: every pool item already has its ground-truth
mask on disk, and "labelling" just reveals it, i.e. moves the id into the labelled set. A human
oracle (export a round, import annotations) plugs in through the same :class:`Oracle` protocol.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from alframe.errors import DataError


@runtime_checkable
class Oracle(Protocol):
    """Anything that can label pool items."""

    def label(self, ids: Sequence[str]) -> list[str]:
        """Label ``ids`` and return the ids that are now labelled, in the order given."""
        ...

    @property
    def labelled_ids(self) -> list[str]:
        """All labelled ids, in the order they were labelled."""
        ...


class SimulatedOracle:
    """Reveals the ground-truth masks of pool items that already have them.

    Args:
        pool_ids: the pool's global ids (N,), in pool order.
        has_mask: optional (N,) flags saying which items have a ground-truth mask; items
            without one cannot be labelled by simulation.
        labelled: ids labelled before the first round (e.g. when resuming).

    Raises:
        DataError: duplicate pool ids, or ``labelled`` names ids outside the pool.
    """

    def __init__(
        self,
        pool_ids: Sequence[str],
        has_mask: Sequence[bool] | np.ndarray | None = None,
        labelled: Iterable[str] = (),
    ) -> None:
        self._pool_ids = [str(i) for i in pool_ids]
        self._position = {item: i for i, item in enumerate(self._pool_ids)}
        if len(self._position) != len(self._pool_ids):
            raise DataError("pool ids must be unique; the same item is listed twice")
        if has_mask is None:
            self._has_mask = np.ones(len(self._pool_ids), dtype=bool)
        else:
            self._has_mask = np.asarray(has_mask, dtype=bool)
            if self._has_mask.shape != (len(self._pool_ids),):
                raise DataError(
                    f"has_mask has shape {self._has_mask.shape}; give one flag per pool item "
                    f"({len(self._pool_ids)})"
                )
        self._labelled: list[str] = []
        self._mask = np.zeros(len(self._pool_ids), dtype=bool)
        initial = list(labelled)
        if initial:
            self.label(initial)

    @classmethod
    def from_samples(cls, samples: Sequence[Any], labelled: Iterable[str] = ()) -> SimulatedOracle:
        """An oracle over ``alframe.data.Sample`` items (their ``id`` and ``labelled`` flag)."""
        return cls(
            [s.id for s in samples], [bool(getattr(s, "labelled", True)) for s in samples], labelled
        )

    @property
    def pool_ids(self) -> list[str]:
        """The pool's ids, in pool order."""
        return list(self._pool_ids)

    @property
    def labelled_ids(self) -> list[str]:
        """All labelled ids, in labelling order."""
        return list(self._labelled)

    @property
    def labelled_mask(self) -> np.ndarray:
        """(N,) bool, True for labelled pool items (a copy)."""
        return self._mask.copy()

    def __len__(self) -> int:
        return len(self._labelled)

    def label(self, ids: Sequence[str]) -> list[str]:
        """Reveal the masks of ``ids``: they join the labelled set.

        All ids are checked before anything changes, so a refused request labels nothing.

        Args:
            ids: global ids of pool items.

        Returns:
            The ids, in the order given.

        Raises:
            DataError: an id is not in the pool, is already labelled, is repeated, or has no
                ground-truth mask to reveal.
        """
        wanted = [str(i) for i in ids]
        unknown = [i for i in wanted if i not in self._position]
        if unknown:
            close = difflib.get_close_matches(unknown[0], self._pool_ids, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DataError(
                f"the oracle cannot label {len(unknown)} id(s) that are not in the pool: "
                f"{unknown[:5]}{hint}; only items of data.train can be labelled"
            )
        if len(set(wanted)) != len(wanted):
            repeated = sorted({i for i in wanted if wanted.count(i) > 1})
            raise DataError(f"ids requested twice in one labelling request: {repeated[:5]}")
        again = [i for i in wanted if self._mask[self._position[i]]]
        if again:
            raise DataError(
                f"{len(again)} id(s) are already labelled (e.g. {again[0]!r}); a strategy must "
                "select unlabelled items only"
            )
        no_mask = [i for i in wanted if not self._has_mask[self._position[i]]]
        if no_mask:
            raise DataError(
                f"{len(no_mask)} item(s) have no ground-truth mask to reveal (e.g. "
                f"{no_mask[0]!r}); a simulated experiment needs masks for the whole pool"
            )
        for item in wanted:
            self._mask[self._position[item]] = True
            self._labelled.append(item)
        return wanted
