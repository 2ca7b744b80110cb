"""Min-max normalisation over a subset (the current candidates)."""

from __future__ import annotations

import numpy as np

CONSTANT_VALUE = 1.0
"""Value given to every item when the values are all equal (the 0/0 case): "all equally good"."""


def min_max_normalize(
    values: np.ndarray,
    mask: np.ndarray | None = None,
    constant_value: float = CONSTANT_VALUE,
) -> np.ndarray:
    """Maps ``values`` linearly so that the masked items span [0, 1].

    Items outside ``mask`` are transformed with the same affine map (they may leave [0, 1]).
    When the masked values are all equal (or there is at most one), every item gets
    ``constant_value``, so a constant term neither helps nor hurts any candidate.

    Args:
        values: (N,) finite values.
        mask: (N,) bool, the items defining the range (default: all).
        constant_value: result for a degenerate (zero-width) range.

    Returns:
        (N,) float64 normalised values.
    """
    values = np.asarray(values, dtype=np.float64)
    reference = values if mask is None else values[np.asarray(mask, dtype=bool)]
    if reference.size == 0:
        return np.full(values.shape, constant_value, dtype=np.float64)
    low, high = float(reference.min()), float(reference.max())
    if not high > low:
        return np.full(values.shape, constant_value, dtype=np.float64)
    return (values - low) / (high - low)
