"""Annotator assignment: balanced, seeded, with an optional overlap for agreement."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def assign_annotators(
    ids: Sequence[str], annotators: Sequence[str], overlap: float, seed: int | Sequence[int]
) -> dict[str, list[str]]:
    """Give every item a primary annotator, and a fraction of them a second one.

    Items are shuffled with a seeded generator and dealt round-robin, so loads differ by at most
    one. ``round(overlap * n)`` items (drawn with the same generator) also go to a second
    annotator, cycling through the others so the extra work is spread evenly too.

    Args:
        ids: (n,) item ids.
        annotators: annotator names (at least one).
        overlap: fraction of items labelled twice, in [0, 1] (ignored with one annotator).
        seed: seed (or seed sequence, e.g. ``[recipe seed, round]``) of the shuffles.

    Returns:
        Item id → annotators, primary first (one or two names).
    """
    if not annotators:
        raise ValueError("at least one annotator is needed")
    rng = np.random.default_rng(seed)
    n, count = len(ids), len(annotators)
    order = rng.permutation(n)
    offset = int(rng.integers(count))
    result: dict[str, list[str]] = {}
    primary_index: dict[str, int] = {}
    for k, position in enumerate(order):
        item = ids[int(position)]
        index = (k + offset) % count
        primary_index[item] = index
        result[item] = [annotators[index]]
    if count > 1 and overlap > 0:
        n_overlap = min(n, round(overlap * n))
        for m, position in enumerate(rng.permutation(n)[:n_overlap]):
            item = ids[int(position)]
            second = (primary_index[item] + 1 + m % (count - 1)) % count
            result[item].append(annotators[second])
    return result
