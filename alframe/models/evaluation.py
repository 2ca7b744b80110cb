"""Per-image evaluation of a segmentation model on a data loader, and reporting helpers.

Scores follow :mod:`alframe.models.metrics`: per image and class,
``Dice = 2|P∩G| / (|P|+|G|)`` and ``IoU = |P∩G| / |P∪G|`` over labelled pixels (mask != -1),
1.0 when prediction and ground truth are both empty. ``dice`` / ``iou`` columns are the mean over
the foreground classes (binary: the foreground itself). Predictions are the most probable class
(binary: foreground probability > 0.5).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from alframe.errors import ModelError
from alframe.models.losses import check_mask
from alframe.models.metrics import foreground_mean, per_image_dice_iou
from alframe.models.task import SegmentationTask, logits_to_proba

__all__ = ["evaluate_segmentation", "format_table", "summarize", "write_evaluation"]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _class_names(
    task_or_model: nn.Module, num_classes: int, given: Sequence[str] | None
) -> list[str]:
    names = list(given) if given is not None else getattr(task_or_model, "class_names", None)
    if names is None or len(names) != num_classes:
        names = [f"class{i}" for i in range(num_classes)]
    return [str(n) for n in names]


def evaluate_segmentation(
    task_or_model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    num_classes: int,
    name: str,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Dice and IoU of every image of a data loader.

    Args:
        task_or_model: a :class:`SegmentationTask` or a bare smp model returning (B, 1, H, W)
            logits for binary or (B, K, H, W) logits for K-class problems.
        dataloader: yields ``{"image": (B, C, H, W), "mask": (B, H, W) long, "id": list[str]}``;
            without ``id`` the running image number is used.
        num_classes: K including background.
        name: the evaluation set's name (progress bar label; stored in ``df.attrs["name"]``).
        progress: show a tqdm progress bar.
        class_names: K names for the per-class columns; default the task's names or
            ``class0 ..``.

    Returns:
        One row per image: ``id``, ``dice``, ``iou`` (foreground mean) and, for K > 2,
        ``dice_<class>`` / ``iou_<class>`` for every foreground class.

    Raises:
        ModelError: the model's output channels do not fit ``num_classes``.
        DataError: masks that are not class indices.
    """
    if isinstance(task_or_model, SegmentationTask) and task_or_model.num_classes != num_classes:
        raise ModelError(
            f"evaluation set {name!r}: the model was trained for {task_or_model.num_classes} "
            f"classes but num_classes={num_classes}"
        )
    names = _class_names(task_or_model, num_classes, class_names)
    device = _device_of(task_or_model)
    rows: list[dict[str, Any]] = []
    was_training = task_or_model.training
    task_or_model.eval()
    total = len(dataloader) if isinstance(dataloader, Sized) else None
    try:
        with torch.inference_mode():
            for batch in tqdm(
                dataloader, total=total, desc=name, disable=not progress, unit="batch"
            ):
                images = batch["image"].to(device)
                masks = batch["mask"].to(device)
                check_mask(masks, num_classes)
                logits = task_or_model(images)
                preds = logits_to_proba(logits, num_classes).argmax(dim=1)
                dice, iou = per_image_dice_iou(preds, masks, num_classes)
                dice_fg, iou_fg = foreground_mean(dice), foreground_mean(iou)
                ids = batch.get("id")
                for b in range(images.shape[0]):
                    row: dict[str, Any] = {
                        "id": str(ids[b]) if ids is not None else str(len(rows)),
                        "dice": float(dice_fg[b]),
                        "iou": float(iou_fg[b]),
                    }
                    if num_classes > 2:
                        for c in range(1, num_classes):
                            row[f"dice_{names[c]}"] = float(dice[b, c])
                            row[f"iou_{names[c]}"] = float(iou[b, c])
                    rows.append(row)
    finally:
        task_or_model.train(was_training)
    columns = ["id", "dice", "iou"]
    if num_classes > 2:
        columns += [f"{m}_{n}" for n in names[1:] for m in ("dice", "iou")]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["name"] = name
    return frame


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Mean and standard deviation of every score column.

    Args:
        df: a frame from :func:`evaluate_segmentation`.

    Returns:
        ``{"n": rows, "dice_mean": .., "dice_std": .., "iou_mean": .., "iou_std": .., ...}``
        for every numeric column. The std is the population std (ddof=0), so a single image
        gives 0 rather than NaN; an empty frame gives NaN means.
    """
    summary: dict[str, float] = {"n": float(len(df))}
    for column in df.columns:
        if column == "id" or not pd.api.types.is_numeric_dtype(df[column]):
            continue
        values = df[column].astype(float)
        summary[f"{column}_mean"] = float(values.mean()) if len(values) else math.nan
        summary[f"{column}_std"] = float(values.std(ddof=0)) if len(values) else math.nan
    return summary


def write_evaluation(df: pd.DataFrame, out_csv: str | os.PathLike[str]) -> Path:
    """Write the per-image scores to CSV atomically (temporary file + ``os.replace``).

    A reader never sees a half-written file, and an interrupted write leaves any previous file
    intact.

    Args:
        df: a frame from :func:`evaluate_segmentation`.
        out_csv: destination; parent folders are created.

    Returns:
        The written path.
    """
    target = Path(out_csv)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            df.to_csv(stream, index=False)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def format_table(results: Mapping[str, pd.DataFrame]) -> str:
    """A plain-text table of mean ± std Dice and IoU per evaluation set.

    Args:
        results: evaluation set name -> frame from :func:`evaluate_segmentation`.

    Returns:
        Aligned text, one line per set, e.g.::

            set             n  Dice            IoU
            shenzhen_test 110  0.951 ± 0.021   0.908 ± 0.036
    """
    header = ["set", "n", "Dice", "IoU"]
    lines = [header]
    for set_name, df in results.items():
        stats = summarize(df)
        lines.append(
            [
                set_name,
                str(len(df)),
                _mean_std(stats.get("dice_mean"), stats.get("dice_std")),
                _mean_std(stats.get("iou_mean"), stats.get("iou_std")),
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    aligned = []
    for row in lines:
        cells = [
            row[i].rjust(widths[i]) if i == 1 else row[i].ljust(widths[i]) for i in range(len(row))
        ]
        aligned.append("  ".join(cells).rstrip())
    return "\n".join(aligned)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std if std is not None else math.nan:.3f}"
