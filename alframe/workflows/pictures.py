"""Pictures of a selection, from a recipe: the pool projection and the picked images with the
current model's prediction (drawn by :mod:`alframe.report.pictures`).

``alframe select`` writes them next to its CSV (``<stem>_pool.png``, ``<stem>_picked.png``);
labelling rounds write them into the round's folder (:mod:`alframe.annotate.pictures`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from alframe.config import Recipe
from alframe.data.samples import Sample
from alframe.report.pictures import (
    MAX_OVERLAYS,
    picked_overlay_figure,
    pool_projection_figure,
    save_figure,
)
from alframe.workflows.selection import SelectionResult

NO_EMBEDDING_NOTE = (
    "no pool projection: strategy {strategy!r} ranks without an embedding (use one that reads "
    "the embedding, e.g. xssr, coreset or typiclust, to see the pool)"
)


def selection_picture_paths(out_csv: str | os.PathLike[str]) -> dict[str, Path]:
    """Where ``alframe select`` writes its pictures: ``<stem>_pool.png`` and
    ``<stem>_picked.png`` beside the CSV."""
    target = Path(out_csv)
    return {
        "pool": target.with_name(f"{target.stem}_pool.png"),
        "picked": target.with_name(f"{target.stem}_picked.png"),
    }


def load_model(model: Any) -> Any:
    """A :class:`~alframe.models.SegmentationTask` from a checkpoint path (a task as it is)."""
    if isinstance(model, str | os.PathLike):
        from alframe.models import load_task

        return load_task(model)
    return model


def display_images_and_predictions(
    recipe: Recipe, samples: Sequence[Sample], model: Any = None
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The items as the model sees them (eval transforms) and the model's argmax prediction.

    Args:
        recipe: data settings and eval transforms.
        samples: the items.
        model: a segmentation task or checkpoint path; None for images only.

    Returns:
        ``(images, predictions)``: per item an (H, W) (one channel) or (H, W, 3) float32 image
        at ``data.image_size``, and per item an (H, W) uint8 class-index map (None without a
        model).
    """
    import torch
    from torch.utils.data import DataLoader

    from alframe.data import SegmentationDataset

    task = load_model(model) if model is not None else None
    # Images only: a mask on disk is neither needed nor read.
    images_only = [replace(s, mask_path=None) for s in samples]
    dataset = SegmentationDataset(images_only, recipe.data, recipe.augment.eval, train=False)
    loader = DataLoader(dataset, batch_size=max(1, recipe.train.batch_size), shuffle=False)
    images: list[np.ndarray] = []
    predictions: list[np.ndarray] = []
    with torch.no_grad():
        for batch in loader:
            pixels = batch["image"].numpy()  # (B, C, H, W)
            for item in pixels:
                images.append(item[0] if item.shape[0] != 3 else item.transpose(1, 2, 0))
            if task is not None:
                probabilities = task.predict_proba(batch["image"]).cpu().numpy()
                predictions.extend(probabilities.argmax(axis=1).astype(np.uint8))
    return images, (predictions if task is not None else None)


def write_picked_picture(
    recipe: Recipe,
    samples: Sequence[Sample],
    path: str | os.PathLike[str],
    title: str,
    model: Any = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Draw the first :data:`~alframe.report.pictures.MAX_OVERLAYS` items (their images with
    the model's prediction, or alone without a model) and write the PNG.

    Args:
        recipe: data settings, classes and eval transforms.
        samples: the picked items in pick order.
        path: the PNG to write (atomically).
        title: the figure title.
        model: a segmentation task or checkpoint path; None when there is no model yet.
        captions: per item caption (default: ``#rank id``).

    Returns:
        The written path.
    """
    shown = list(samples)[:MAX_OVERLAYS]
    images, predictions = display_images_and_predictions(recipe, shown, model)
    names = (
        list(captions)
        if captions is not None
        else [f"#{k} {s.id}" for k, s in enumerate(shown, start=1)]
    )
    figure = picked_overlay_figure(
        images,
        predictions,
        [_short(n) for n in names],
        list(recipe.data.classes),
        title,
        total=len(samples),
    )
    return save_figure(figure, path)


def _short(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def write_pool_picture(
    result: SelectionResult,
    path: str | os.PathLike[str],
    title: str,
    labelled_name: str = "labelled",
    picked_name: str = "picked",
) -> Path | None:
    """The pool projection of a selection (None when the strategy used no embedding).

    Args:
        result: the selection with its pool embeddings and labelled mask.
        path: the PNG to write (atomically).
        title: the figure title.
        labelled_name: legend name of the items labelled before the selection.
        picked_name: legend name of the selected items.

    Returns:
        The written path, or None.
    """
    if result.embeddings is None:
        return None
    labelled = (
        result.labelled if result.labelled is not None else np.zeros(len(result.ids), dtype=bool)
    )
    figure = pool_projection_figure(
        result.embeddings,
        labelled,
        result.selection.indices,
        title=title,
        labelled_name=labelled_name,
        picked_name=picked_name,
    )
    return save_figure(figure, path)


def write_selection_pictures(
    recipe: Recipe,
    result: SelectionResult,
    paths: Mapping[str, Path],
    model: Any = None,
    samples: Mapping[str, Sample] | None = None,
    labelled_name: str = "labelled",
    picked_name: str = "picked",
    title: str = "",
) -> tuple[dict[str, Path], list[str]]:
    """Write the pool projection (``paths["pool"]``) and the picked images with the model's
    prediction (``paths["picked"]``).

    Args:
        recipe: the recipe of the selection.
        result: the selection.
        paths: target PNGs by kind (``pool``, ``picked``).
        model: the current segmentation task or checkpoint; None when there is none.
        samples: pool id → sample (default: discovered from ``data.train``).
        labelled_name: legend name of the items labelled before the selection.
        picked_name: legend name of the selected items.
        title: prefix of the figure titles (e.g. ``"round 2 (coreset)"``).

    Returns:
        ``(written, notes)``: kind → path of every picture written, and notes on pictures that
        could not be drawn.
    """
    written: dict[str, Path] = {}
    notes: list[str] = []
    heading = title or result.strategy
    n_picked = len(result.selection.indices)
    pool = write_pool_picture(
        result,
        paths["pool"],
        f"{heading}: {n_picked} picked from a pool of {len(result.ids)}",
        labelled_name,
        picked_name,
    )
    if pool is not None:
        written["pool"] = pool
    else:
        notes.append(NO_EMBEDDING_NOTE.format(strategy=result.strategy))
    if samples is None:
        from alframe.data import DataCatalog

        samples = {s.id: s for s in DataCatalog(recipe).samples(recipe.data.train)}
    picked_ids = [result.ids[int(i)] for i in result.selection.indices]
    written["picked"] = write_picked_picture(
        recipe,
        [samples[i] for i in picked_ids],
        paths["picked"],
        f"{heading}: picked images",
        model=model,
    )
    return written, notes
