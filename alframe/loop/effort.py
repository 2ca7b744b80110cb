"""Annotation effort as correction: how much of a pre-annotation an annotator has to change.

One measure serves both worlds:

- human rounds on Label Studio (:mod:`alframe.annotate.labelstudio`) measure it between the
  pre-annotation pushed with a task and the mask the annotator submitted;
- simulated budget experiments (:mod:`alframe.loop.active`) estimate it for every queried item
  between what the previous round's model would have pre-annotated and the ground truth, so
  strategies can be compared in estimated correction effort as well as in image counts. Without
  a model yet (the first round) the pre-annotation is empty: the annotator paints every
  foreground pixel.

The estimated effort of a round is the sum of the changed fractions of its items (in "whole
images redrawn"), and experiments report its running total.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def correction_measures(
    pre: np.ndarray, final: np.ndarray, num_classes: int, ignore_value: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the fraction of pixels whose class changed, and the Dice of pre vs final.

    Args:
        pre: (N, H, W) class indices of the pre-annotations.
        final: (N, H, W) class indices of the final masks.
        num_classes: K including background (classes 1..K-1 are scored by Dice).
        ignore_value: a value marking unlabelled pixels (in either array); those pixels still
            count as changed when they differ but are left out of the Dice.

    Returns:
        ``(changed, dice)``: (N,) float64 each. Dice is the mean over the foreground classes
        present in either mask of ``2 |A ∩ B| / (|A| + |B|)``, 1.0 when neither has foreground.

    Raises:
        ValueError: the arrays differ in shape or are not (N, H, W).
    """
    first = np.asarray(pre)
    second = np.asarray(final)
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(
            f"pre and final must both be (N, H, W), got {first.shape} and {second.shape}"
        )
    n = first.shape[0]
    pixels = first.shape[1] * first.shape[2]
    changed = (
        np.count_nonzero(first != second, axis=(1, 2)) / pixels if pixels else np.zeros(n)
    ).astype(np.float64)
    valid = np.ones(first.shape, dtype=bool)
    if ignore_value is not None:
        valid = (first != ignore_value) & (second != ignore_value)
    total = np.zeros(n, dtype=np.float64)
    present = np.zeros(n, dtype=np.int64)
    for cls in range(1, num_classes):
        a = (first == cls) & valid
        b = (second == cls) & valid
        sizes = np.count_nonzero(a, axis=(1, 2)) + np.count_nonzero(b, axis=(1, 2))
        overlap = np.count_nonzero(a & b, axis=(1, 2))
        has = sizes > 0
        total[has] += 2.0 * overlap[has] / sizes[has]
        present += has
    dice = np.where(present > 0, total / np.maximum(present, 1), 1.0)
    return changed, dice


def round_effort(
    pre: np.ndarray | None,
    truth: np.ndarray,
    num_classes: int,
    previous: Mapping[str, Any] | None = None,
    ignore_value: int | None = None,
) -> dict[str, Any]:
    """The estimated correction effort of one simulated round.

    Args:
        pre: (N, H, W) the pre-annotations of the queried items (the previous model's argmax),
            or None when there is no model yet (an empty pre-annotation).
        truth: (N, H, W) their ground-truth class indices.
        num_classes: K.
        previous: the previous round's record (for the running total), if any.
        ignore_value: unlabelled value in ``truth`` (e.g. -1).

    Returns:
        ``{"measure": "changed_fraction", "n_items", "pre_annotated", "changed_fraction_sum",
        "changed_fraction_mean", "pre_dice_mean" (None without a model), "cumulative"}``.
    """
    truth = np.asarray(truth)
    pre_annotated = pre is not None
    baseline = np.zeros_like(truth) if pre is None else np.asarray(pre).astype(truth.dtype)
    if truth.shape[0] == 0:
        changed = dice = np.zeros(0)
    else:
        changed, dice = correction_measures(baseline, truth, num_classes, ignore_value)
    total = float(changed.sum())
    before = float((previous or {}).get("cumulative") or 0.0)
    return {
        "measure": "changed_fraction",
        "n_items": int(truth.shape[0]),
        "pre_annotated": pre_annotated,
        "changed_fraction_sum": total,
        "changed_fraction_mean": float(changed.mean()) if changed.size else None,
        "pre_dice_mean": float(dice.mean()) if pre_annotated and dice.size else None,
        "cumulative": before + total,
    }
