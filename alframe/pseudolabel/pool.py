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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe.config.schema import DataConfig, PseudoLabelConfig
from alframe.errors import DataError

if TYPE_CHECKING:
    from alframe.inference import Hardware
    from alframe.pseudolabel.base import PseudoLabels
    from alframe.pseudolabel.rpg import RPGPseudoLabeller

__all__ = [
    "PREDICT_PASS_IMAGES",
    "PoolPseudoLabels",
    "options_from_config",
    "pseudo_label_batches",
    "pseudo_label_samples",
    "write_pool_pseudolabels",
]

PREDICT_PASS_IMAGES = 1024
"""Images per predict-loop pass when pseudo-labels run on other devices (``pseudolabel.devices``).
A pass holds its labels, confidences and similarities in memory at once (12 bytes a pixel:
0.8 GB for 1024 images of 256 × 256), and each pass starts its processes anew (``ddp_spawn``),
so a pool is labelled in passes of this many images (rounded to whole batches)."""


class _Images:
    """The ``image`` (C, H, W) of items ``start:stop`` of a dataset (what the predict loop
    batches); module level, so ``ddp_spawn`` can pickle it."""

    def __init__(self, dataset: Any, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.start + index]["image"]


def pseudo_label_batches(
    labeller: RPGPseudoLabeller,
    dataset: Any,
    batch_size: int,
    hardware: Hardware | None = None,
    pass_images: int = PREDICT_PASS_IMAGES,
) -> Iterator[tuple[dict[str, Any], PseudoLabels]]:
    """``(batch, its pseudo-labels)`` for consecutive batches of a dataset, in order.

    Args:
        labeller: a fitted RPG labeller.
        dataset: a :class:`~alframe.data.SegmentationDataset` (items with ``image``, N).
        batch_size: items per batch (B).
        hardware: None: each batch is labelled here, as it is read. Otherwise the images are
            labelled in Lightning's predict loop on this hardware
            (:meth:`RPGPseudoLabeller.predict_dataset`), ``pass_images`` at a time, and the
            batches are read again for what the caller needs besides the labels (masks, ids).
            The labels are the same either way.
        pass_images: images per predict-loop pass (see :data:`PREDICT_PASS_IMAGES`).

    Yields:
        The collated batch (``image`` (B, C, H, W), ...) and its :class:`PseudoLabels`
        ((B, H, W) each).
    """
    from torch.utils.data import DataLoader

    from alframe.pseudolabel.base import PseudoLabels

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if hardware is None:
        for batch in loader:
            yield batch, labeller.predict(batch["image"])
        return
    # Whole batches per pass: every batch the processes run is a batch of the one-process run.
    batches_per_pass = max(1, pass_images // batch_size)
    n_items = len(dataset)
    labelled: PseudoLabels | None = None
    for number, batch in enumerate(loader):
        offset = (number % batches_per_pass) * batch_size
        if offset == 0:
            start = number * batch_size
            stop = min(start + batches_per_pass * batch_size, n_items)
            images: Any = _Images(dataset, start, stop)  # map-style, as a Dataset is
            labelled = labeller.predict_dataset(images, hardware)
        assert labelled is not None  # set at the first batch of every pass
        size = int(batch["image"].shape[0])
        part = slice(offset, offset + size)
        yield (
            batch,
            PseudoLabels(
                labelled.labels[part], labelled.confidence[part], labelled.similarity[part]
            ),
        )


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
        cfg: the recipe's ``pseudolabel`` section (matching options; ``devices``: where the
            pool is labelled, see :func:`alframe.inference.hardware_unless_here`).
        batch_size: images per forward pass (and process).
        eval_transforms: the recipe's evaluation-time augment steps (``augment.eval``).

    Returns:
        :class:`PoolPseudoLabels`.

    Raises:
        DataError: no reference, or a reference without a mask.
    """
    import torch

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
        from alframe.inference import hardware_unless_here

        dataset = SegmentationDataset(items, data_cfg, eval_transforms, train=False)
        hardware = hardware_unless_here(cfg.devices, model_device(model))
        start = 0
        for batch, pseudo in pseudo_label_batches(labeller, dataset, batch_size, hardware):
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


def model_device(model: Any) -> Any:
    """The torch device of a model's first parameter (the CPU for a model without any)."""
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


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
