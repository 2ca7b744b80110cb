"""A label-free stopping signal: how much the model still changes on the unlabelled pool.

Definition. Let ``L_r`` be the labelled set once round r's selection is labelled (the training
set of ``model_r``) and ``U_r = pool \\ L_r`` the items still unlabelled then. For a round
``r >= 1``::

    pool_agreement_r = mean over i in U_r of D(argmax model_{r-1}(x_i), argmax model_r(x_i))

``D`` is the foreground Dice of :mod:`alframe.models.metrics` with one prediction standing in for
the ground truth (Dice is symmetric, so it does not matter which): per foreground class
``c = 1..K-1``, ``2 |A_c ∩ B_c| / (|A_c| + |B_c|)``, **1.0 when neither prediction contains
class c**, then the mean over the K-1 classes. An item both models predict as all background
therefore counts as 1 (they agree), and a binary problem scores class 1 only. The rule is the
evaluation rule on purpose, so the signal reads on the same scale as the learning curve's Dice;
it differs from inter-annotator agreement (:func:`alframe.annotate.agreement.dice_agreement`),
which skips classes neither annotator drew.

Round 0 has no previous model and no value; neither has a round that leaves nothing unlabelled.

Why it can tell when to stop: if another batch of labels no longer changes what the model
predicts on the images nobody labelled, labels of the same kind are unlikely to change its test
Dice much either. It needs no labels, so it works in real labelling projects, where there is no
test curve to watch. How close to 1 is close enough is task-dependent; compare it with the
learning curve of a simulated experiment on similar data before trusting a threshold.

Cost: ``U_r ⊆ U_{r-1}``, so ``model_{r-1}``'s predictions on ``U_r`` are part of what it
predicted on ``U_{r-1}``. Every round predicts its unlabelled pool once (batched) and keeps the
label maps (:data:`POOL_PREDICTIONS_FILE`, compressed, written atomically before the round is
committed); the next round reads them back instead of predicting twice. That also makes a
resumed run (after ``kill -9``) read exactly what the uninterrupted run would have.

Pure NumPy: callers pass a ``predict_proba(ids) -> (N, K, H, W)`` function.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alframe._atomic import atomic_write_bytes

__all__ = [
    "POOL_PREDICTIONS_FILE",
    "PoolPredictions",
    "label_agreement",
    "predict_label_maps",
    "read_pool_predictions",
    "write_pool_predictions",
]

POOL_PREDICTIONS_FILE = "pool_predictions.npz"
"""A round's argmax predictions on the items still unlabelled after it (ids + label maps)."""

PREDICT_CHUNK_ITEMS = 64
"""Items per ``predict_proba`` call: bounds the float32 probabilities held at once."""


def label_agreement(previous: np.ndarray, current: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-item foreground Dice between two predictions of the same items.

    Args:
        previous: (N, H, W) integer class indices (e.g. the previous model's argmax).
        current: (N, H, W) class indices of the same items (the current model's argmax).
        num_classes: K including background (>= 2); classes 1..K-1 are scored.

    Returns:
        (N,) float64 in [0, 1]: the mean over foreground classes of
        ``2 |A_c ∩ B_c| / (|A_c| + |B_c|)``, a class absent from both counting 1.

    Raises:
        ValueError: the arrays differ in shape or are not (N, H, W), or K < 2.
    """
    first = np.asarray(previous)
    second = np.asarray(current)
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(
            f"previous and current must both be (N, H, W), got {first.shape} and {second.shape}"
        )
    if num_classes < 2:
        raise ValueError(
            f"num_classes must be at least 2 (background + one class), got {num_classes}"
        )
    total_score = np.zeros(first.shape[0], dtype=np.float64)
    for cls in range(1, num_classes):
        in_first = first == cls
        in_second = second == cls
        overlap = np.count_nonzero(in_first & in_second, axis=(1, 2))
        sizes = np.count_nonzero(in_first, axis=(1, 2)) + np.count_nonzero(in_second, axis=(1, 2))
        total_score += np.where(sizes > 0, 2.0 * overlap / np.maximum(sizes, 1), 1.0)
    return total_score / (num_classes - 1)


def predict_label_maps(
    predict_proba: Callable[[Sequence[str]], np.ndarray],
    ids: Sequence[str],
    chunk_items: int = PREDICT_CHUNK_ITEMS,
) -> tuple[np.ndarray, int]:
    """Argmax class maps of a model over ``ids``, predicted a chunk at a time.

    Args:
        predict_proba: ids → (n, K, H, W) class probabilities (e.g.
            :meth:`alframe.loop.learner.LightningLearner.predict_proba`).
        ids: the N items (non-empty).
        chunk_items: items per call.

    Returns:
        ``(labels, K)``: (N, H, W) uint8 class indices (uint16 when K > 256) in the order of
        ``ids``, and the number of classes.

    Raises:
        ValueError: no ids.
    """
    items = list(ids)
    if not items:
        raise ValueError("predict_label_maps needs at least one id")
    chunks: list[np.ndarray] = []
    num_classes = 0
    for start in range(0, len(items), max(int(chunk_items), 1)):
        probabilities = np.asarray(predict_proba(items[start : start + chunk_items]))
        num_classes = int(probabilities.shape[1])
        dtype = np.uint8 if num_classes <= 256 else np.uint16
        chunks.append(probabilities.argmax(axis=1).astype(dtype))
    return np.concatenate(chunks), num_classes


@dataclass(frozen=True)
class PoolPredictions:
    """Stored label maps of one model over pool items.

    Attributes:
        ids: the N items, in row order.
        labels: (N, H, W) class indices.
        num_classes: K of the model.
    """

    ids: list[str]
    labels: np.ndarray
    num_classes: int

    def subset(self, ids: Sequence[str]) -> np.ndarray | None:
        """(len(ids), H, W) label maps of ``ids`` in that order, or None if one is not stored."""
        row_of = {item: row for row, item in enumerate(self.ids)}
        rows = [row_of.get(item) for item in ids]
        if any(row is None for row in rows):
            return None
        return self.labels[np.asarray(rows, dtype=np.int64)]


def write_pool_predictions(
    path: str | os.PathLike[str], ids: Sequence[str], labels: np.ndarray, num_classes: int
) -> Path:
    """Store label maps atomically as a compressed ``.npz`` (``ids``, ``labels``, ``num_classes``).

    Args:
        path: the file to write.
        ids: the N items.
        labels: (N, H, W) class indices.
        num_classes: K.

    Returns:
        The path written.
    """
    if len(ids) != labels.shape[0]:
        raise ValueError(f"{len(ids)} ids for {labels.shape[0]} label maps")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        ids=np.asarray(list(ids), dtype=np.str_),
        labels=labels,
        num_classes=np.asarray(num_classes, dtype=np.int64),
    )
    return atomic_write_bytes(path, buffer.getvalue())


def read_pool_predictions(path: str | os.PathLike[str]) -> PoolPredictions | None:
    """Read what :func:`write_pool_predictions` stored; None when missing or unreadable.

    Callers fall back to predicting again, so a damaged file costs time, never a wrong value.
    """
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            ids = [str(item) for item in data["ids"].tolist()]
            labels = np.asarray(data["labels"])
            num_classes = int(data["num_classes"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if labels.ndim != 3 or labels.shape[0] != len(ids):
        return None
    return PoolPredictions(ids=ids, labels=labels, num_classes=num_classes)
