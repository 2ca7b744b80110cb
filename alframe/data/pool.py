"""A pool: an ordered, immutable collection of samples addressed by stable global ids.

Strategies work on positions ``0..N-1`` of a pool (rows of an embedding matrix); everything that is
stored (selections, rounds, caches) uses the global ids. ``Pool`` converts between the two.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from alframe.data.samples import Sample
from alframe.errors import DataError


class Pool:
    """Samples in a fixed order with an id → position index.

    Args:
        samples: the items; their ids must be unique.

    Raises:
        DataError: two samples share an id.
    """

    def __init__(self, samples: Iterable[Sample]) -> None:
        self._samples: tuple[Sample, ...] = tuple(samples)
        self._index: dict[str, int] = {s.id: i for i, s in enumerate(self._samples)}
        if len(self._index) != len(self._samples):
            duplicates = [i for i, n in Counter(s.id for s in self._samples).items() if n > 1]
            raise DataError(
                f"{len(duplicates)} ids occur more than once in the pool (e.g. "
                f"{', '.join(duplicates[:5])}); each item may be listed once — remove the "
                "duplicates (the same data set referenced twice?)"
            )
        self._groups = np.asarray([s.group for s in self._samples], dtype=object)

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def __repr__(self) -> str:
        return f"Pool({len(self)} samples)"

    @property
    def samples(self) -> list[Sample]:
        """The samples in pool order."""
        return list(self._samples)

    @property
    def ids(self) -> list[str]:
        """Global ids in pool order (a new list each call)."""
        return [s.id for s in self._samples]

    @property
    def groups(self) -> np.ndarray:
        """Group of every item, object array of str, shape (N,)."""
        return self._groups.copy()

    @property
    def labelled(self) -> np.ndarray:
        """Whether every item has a mask file, bool array, shape (N,)."""
        return np.fromiter((s.labelled for s in self._samples), dtype=bool, count=len(self))

    def index_of(self, item_id: str) -> int:
        """Position of one id.

        Raises:
            DataError: the id is not in the pool (the message lists close matches).
        """
        try:
            return self._index[item_id]
        except KeyError:
            raise DataError(self._unknown_message([item_id])) from None

    def indices(self, ids: Iterable[str]) -> np.ndarray:
        """Positions of several ids.

        Args:
            ids: global ids.

        Returns:
            int64 array, shape (len(ids),), in the order given.

        Raises:
            DataError: some ids are not in the pool (all of them are reported at once).
        """
        id_list = list(ids)
        unknown = [i for i in id_list if i not in self._index]
        if unknown:
            raise DataError(self._unknown_message(unknown))
        return np.fromiter((self._index[i] for i in id_list), dtype=np.int64, count=len(id_list))

    def subset(self, ids_or_indices: Sequence[str] | Sequence[int] | np.ndarray) -> Pool:
        """A new pool with some of the items, in the order given.

        Args:
            ids_or_indices: global ids, integer positions (shape (M,)), or a boolean mask of
                shape (N,).

        Returns:
            The sub-pool (its positions are 0..M-1, not the positions in this pool).

        Raises:
            DataError: an id is unknown or a position is out of range.
        """
        items = list(ids_or_indices) if not isinstance(ids_or_indices, np.ndarray) else None
        if items is not None and items and all(isinstance(i, str) for i in items):
            positions = self.indices(items)  # type: ignore[arg-type]
        else:
            array = np.asarray(ids_or_indices)
            if array.size == 0:
                return Pool([])
            if array.dtype.kind in "UO":
                return Pool(self._samples[int(i)] for i in self.indices(array.ravel().tolist()))
            if array.dtype == bool:
                if array.shape != (len(self),):
                    raise DataError(
                        f"boolean selection has shape {array.shape} but the pool has "
                        f"{len(self)} items; pass one flag per item"
                    )
                positions = np.flatnonzero(array)
            elif array.dtype.kind in "iu":
                positions = array.astype(np.int64).ravel()
                bad = positions[(positions < 0) | (positions >= len(self))]
                if bad.size:
                    raise DataError(
                        f"positions {bad[:5].tolist()} are outside the pool (0..{len(self) - 1}); "
                        "pass positions of this pool"
                    )
            else:
                raise DataError(
                    f"cannot select pool items with values of type {array.dtype}; pass ids, "
                    "integer positions or a boolean mask"
                )
        return Pool(self._samples[int(i)] for i in positions)

    def _unknown_message(self, unknown: list[str]) -> str:
        close = difflib.get_close_matches(unknown[0], list(self._index), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        shown = ", ".join(repr(i) for i in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return (
            f"ids {shown}{more} are not in the pool ({len(self)} items){hint}; use ids of the "
            "form '<dataset>/<file stem>' from this pool"
        )
