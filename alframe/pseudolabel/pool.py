"""Pseudo-labels for a whole pool: the recipe switch of the active-learning loop (issue: RPG in
the loop) and the bookkeeping that keeps them apart from human labels.

After a round's model is trained, :func:`pseudo_label_samples` builds an RPG reference bank from
the human-labelled items (the model's decoder features), labels every other pool item, and —
in simulations, where the pool's ground truth is hidden from training but known — measures the
pseudo-labels against it. :func:`write_pool_pseudolabels` stores them in one compressed file per
round (``pseudolabels.npz``) plus a per-item CSV; nothing of it is read by evaluation.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe.config.schema import DataConfig, PseudoLabelConfig
from alframe.errors import DataError

__all__ = [
    "PoolPseudoLabels",
    "options_from_config",
    "pseudo_label_samples",
    "write_pool_pseudolabels",
]


def options_from_config(cfg: PseudoLabelConfig) -> Any:
    """The :class:`~alframe.pseudolabel.semisup.SemiSupervisedOptions` of a recipe section."""
    from alframe.pseudolabel.rpg import RPGOptions
    from alframe.pseudolabel.semisup import SemiSupervisedOptions

    return SemiSupervisedOptions(
        warmup_fraction=cfg.warmup_fraction,
        ramp_fraction=cfg.ramp_fraction,
        lambda_max=cfg.lambda_max,
        unlabelled_batch_size=cfg.unlabelled_batch_size,
        rpg=RPGOptions(**cfg.rpg.model_dump()),
    )


@dataclass
class PoolPseudoLabels:
    """Pseudo-labels of pool items.

    Attributes:
        ids: (N,) global ids.
        labels: (N, H, W) int16 class indices, -1 where no pseudo-label was given.
        confidence: (N, H, W) float16 confidence of each pixel's label.
        dice: (N,) mean foreground Dice against the hidden ground truth (NaN without one).
        pixel_accuracy: (N,) share of pixels whose pseudo-label equals the ground truth (NaN
            without one).
        coverage: (N,) share of pixels that received a pseudo-label.
        n_references: number of human-labelled items the bank was built from.
    """

    ids: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    dice: np.ndarray
    pixel_accuracy: np.ndarray
    coverage: np.ndarray
    n_references: int
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Means over the items (the ground-truth terms only where ground truth exists)."""

        def mean(values: np.ndarray) -> float | None:
            finite = values[np.isfinite(values)]
            return float(finite.mean()) if finite.size else None

        return {
            "n_items": len(self.ids),
            "n_references": self.n_references,
            "dice_mean": mean(self.dice),
            "pixel_accuracy_mean": mean(self.pixel_accuracy),
            "coverage_mean": mean(self.coverage),
            "confidence_mean": float(self.confidence.astype(np.float32).mean())
            if self.confidence.size
            else None,
        }


def pseudo_label_samples(
    model: Any,
    references: Sequence[Any],
    samples: Sequence[Any],
    data_cfg: DataConfig,
    num_classes: int,
    cfg: PseudoLabelConfig,
    batch_size: int = 8,
    eval_transforms: Sequence[Any] = (),
) -> PoolPseudoLabels:
    """RPG pseudo-labels of ``samples`` from the human-labelled ``references``.

    Args:
        model: the trained segmentation model (smp module or ``SegmentationTask``); its decoder
            features are read through a forward hook that is removed afterwards.
        references: labelled :class:`~alframe.data.Sample` items (the reference set).
        samples: items to pseudo-label; their masks, when present, are used only to measure the
            pseudo-labels (simulation), never to make them.
        data_cfg: the recipe's data section (size, normalisation).
        num_classes: K.
        cfg: the recipe's ``pseudolabel`` section (matching options).
        batch_size: images per forward pass.
        eval_transforms: the recipe's evaluation-time augment steps (``augment.eval``).

    Returns:
        :class:`PoolPseudoLabels`.

    Raises:
        DataError: no reference, or a reference without a mask.
    """
    import torch
    from torch.utils.data import DataLoader

    from alframe.data import SegmentationDataset
    from alframe.models.metrics import foreground_mean, per_image_dice_iou
    from alframe.pseudolabel.features import DecoderFeatures
    from alframe.pseudolabel.rpg import RPGOptions, RPGPseudoLabeller

    refs = list(references)
    if not refs:
        raise DataError("pseudo-labels need at least one human-labelled reference item")
    missing = [s.id for s in refs if not s.labelled]
    if missing:
        raise DataError(f"reference items without a mask (e.g. {missing[0]}); label them first")
    labeller = RPGPseudoLabeller(
        DecoderFeatures(model),
        num_classes,
        options=RPGOptions(**cfg.rpg.model_dump()),
        batch_size=batch_size,
    )
    ref_set = SegmentationDataset(refs, data_cfg, eval_transforms, train=False)
    ref_images = torch.stack([ref_set[i]["image"] for i in range(len(ref_set))])
    ref_masks = torch.stack([ref_set[i]["mask"] for i in range(len(ref_set))])
    labeller.fit(ref_images, ref_masks)

    items = list(samples)
    size = tuple(data_cfg.image_size)
    labels = np.full((len(items), *size), -1, dtype=np.int16)
    confidence = np.zeros((len(items), *size), dtype=np.float16)
    dice = np.full(len(items), np.nan)
    accuracy = np.full(len(items), np.nan)
    coverage = np.zeros(len(items))
    if items:
        dataset = SegmentationDataset(items, data_cfg, eval_transforms, train=False)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        start = 0
        for batch in loader:
            pseudo = labeller.predict(batch["image"])
            stop = start + pseudo.labels.shape[0]
            pred = pseudo.labels.cpu()
            labels[start:stop] = pred.numpy().astype(np.int16)
            confidence[start:stop] = pseudo.confidence.cpu().numpy().astype(np.float16)
            coverage[start:stop] = (pred >= 0).float().mean(dim=(1, 2)).numpy()
            truth = batch["mask"].long()
            has_truth = batch["labelled"].numpy().astype(bool)
            if has_truth.any():
                per_class, _ = per_image_dice_iou(pred, truth, num_classes)
                valid = truth >= 0
                correct = ((pred == truth) & valid).sum(dim=(1, 2)).double()
                share = correct / valid.sum(dim=(1, 2)).clamp_min(1).double()
                fg = foreground_mean(per_class).numpy()
                dice[start:stop] = np.where(has_truth, fg, np.nan)
                accuracy[start:stop] = np.where(has_truth, share.numpy(), np.nan)
            start = stop
    return PoolPseudoLabels(
        ids=[s.id for s in items],
        labels=labels,
        confidence=confidence,
        dice=dice,
        pixel_accuracy=accuracy,
        coverage=coverage,
        n_references=len(refs),
    )


def write_pool_pseudolabels(result: PoolPseudoLabels, folder: str | os.PathLike[str]) -> Path:
    """Write ``pseudolabels.npz`` (ids, labels, confidence) and ``pseudolabels.csv`` (per item:
    id, coverage, mean confidence, Dice and pixel accuracy against the hidden ground truth) into
    ``folder``, each atomically.

    Returns:
        The path of the ``.npz`` file.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        ids=np.asarray(result.ids, dtype=str),
        labels=result.labels,
        confidence=result.confidence,
    )
    npz = out / "pseudolabels.npz"
    atomic_write_bytes(npz, buffer.getvalue())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "coverage", "confidence_mean", "dice", "pixel_accuracy"])
    for i, item in enumerate(result.ids):
        writer.writerow(
            [
                item,
                f"{result.coverage[i]:.6f}",
                f"{float(result.confidence[i].astype(np.float32).mean()):.6f}",
                "" if not np.isfinite(result.dice[i]) else f"{result.dice[i]:.6f}",
                ""
                if not np.isfinite(result.pixel_accuracy[i])
                else f"{result.pixel_accuracy[i]:.6f}",
            ]
        )
    atomic_write_bytes(out / "pseudolabels.csv", text.getvalue().encode("utf-8"))
    return npz
