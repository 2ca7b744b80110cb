"""Inter-annotator agreement: Dice between two label maps of the same item."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from alframe.annotate.project import STORED_IGNORE


def dice_agreement(first: np.ndarray, second: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes either annotator used.

    Pixels that either annotator left unlabelled are not compared. When neither annotator marked
    any foreground the two agree perfectly (1.0).

    Args:
        first: (H, W) class indices, :data:`STORED_IGNORE` where unlabelled.
        second: (H, W) the same for the other annotator.
        num_classes: K (class 0 is background and is not scored).

    Returns:
        Dice in [0, 1].
    """
    if first.shape != second.shape:
        raise ValueError(f"label shapes differ: {first.shape} vs {second.shape}")
    valid = (first != STORED_IGNORE) & (second != STORED_IGNORE)
    scores = []
    for cls in range(1, num_classes):
        a = (first == cls) & valid
        b = (second == cls) & valid
        total = int(a.sum()) + int(b.sum())
        if total:
            scores.append(2.0 * int((a & b).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


@dataclass
class AgreementSummary:
    """Dice on doubly-labelled items.

    Attributes:
        per_item: (id, annotator a, annotator b, dice) for every compared pair.
        per_pair: "a|b" → mean Dice of that pair of annotators.
        mean: mean Dice over all compared pairs (NaN when there are none).
    """

    per_item: list[tuple[str, str, str, float]] = field(default_factory=list)
    per_pair: dict[str, float] = field(default_factory=dict)
    mean: float = math.nan


def summarize_agreement(
    pairs: Iterable[tuple[str, str, str, np.ndarray, np.ndarray]], num_classes: int
) -> AgreementSummary:
    """Dice of every (id, annotator a, annotator b, labels a, labels b), per pair and overall."""
    summary = AgreementSummary()
    grouped: dict[str, list[float]] = {}
    for item, name_a, name_b, labels_a, labels_b in pairs:
        a, b = sorted((name_a, name_b))
        score = dice_agreement(labels_a, labels_b, num_classes)
        summary.per_item.append((item, a, b, score))
        grouped.setdefault(f"{a}|{b}", []).append(score)
    summary.per_pair = {k: float(np.mean(v)) for k, v in sorted(grouped.items())}
    if summary.per_item:
        summary.mean = float(np.mean([s for *_, s in summary.per_item]))
    return summary
