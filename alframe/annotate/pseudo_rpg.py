"""``alframe round pseudolabel``: RPG pseudo-labels for the items nobody has labelled yet.

The references are the project's human labels; the features are the decoder features of a
trained model (by default the latest ``round train`` checkpoint). Pseudo-labels are computed at
the recipe's image size and brought back to each image's own size (nearest neighbour), then
handed to :func:`~alframe.annotate.pseudo.record_pseudo_labels`, which stores them apart from
human labels in one transaction. ``round train --pseudo-labels`` then trains on both; a human
label always wins over a pseudo-label.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from alframe.annotate.project import STORED_IGNORE, Project
from alframe.annotate.pseudo import record_pseudo_labels
from alframe.errors import ConfigError, StateError

__all__ = ["ProjectPseudoLabels", "pseudo_label_project", "reference_dice"]


REFERENCE_FOLDS = 10
"""At most this many folds of the references estimate the pseudo-labels' Dice."""


@dataclass(frozen=True)
class ProjectPseudoLabels:
    """Outcome of :func:`pseudo_label_project`.

    Attributes:
        n_references: human-labelled items used as references.
        n_recorded: pseudo-labels stored.
        checkpoint: the model whose features were matched.
        mean_confidence: mean per-pixel match similarity (best cosine similarity for top-1).
            Not a quality measure: decoder features of any model are similar to each other
            (0.99 from a model with Dice 0.14); see ``estimated_dice``.
        estimated_dice: the quality measure: mean foreground Dice of RPG pseudo-labels of the
            human-labelled items against their human labels, each item pseudo-labelled from the
            references of the other folds (k-fold over the references); None with fewer than
            two references.
        model_agreement: label-free: mean foreground Dice between the pseudo-labels and the
            model's own predictions on the pseudo-labelled items
            (:func:`~alframe.loop.pool_agreement.label_agreement`).
        degenerate: why the model is degenerate on the pool by the label-free guard
            (:class:`~alframe.ranking.guard.DegenerateGuard`), or None.
    """

    n_references: int
    n_recorded: int
    checkpoint: Path
    mean_confidence: float
    estimated_dice: float | None = None
    model_agreement: float | None = None
    degenerate: str | None = None


def _resolve_checkpoint(project: Project, checkpoint: str | os.PathLike[str] | None) -> Path:
    if checkpoint is None or str(checkpoint) == "latest":
        latest = project.latest_checkpoint()
        if latest is None:
            raise StateError(
                "pseudo-labels need a trained model: run `alframe round train DIR` first, or "
                "pass --checkpoint PATH"
            )
        return latest
    path = Path(checkpoint)
    if not path.is_file():
        raise StateError(f"--checkpoint {path}: no such file; give an alframe checkpoint (.ckpt)")
    return path


def _foreground_dice(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) foreground Dice of (N, H, W) predictions against labels; pixels that are unlabelled
    in ``truth`` (< 0) or unassigned in ``predicted`` (< 0) are left out."""
    from alframe.loop.pool_agreement import label_agreement

    left_out = (truth < 0) | (predicted < 0)
    return label_agreement(
        np.where(left_out, 0, predicted), np.where(left_out, 0, truth), num_classes
    )


def reference_dice(
    make_labeller: Callable[[], Any],
    images: Any,
    masks: Any,
    num_classes: int,
    seed: int,
    folds: int = REFERENCE_FOLDS,
) -> np.ndarray | None:
    """Dice of RPG pseudo-labels of each reference, made from the references of other folds.

    The references are the only items with human labels, so this is how well pseudo-labels of
    *this* model and *these* references reproduce a human label on an item they have not seen.

    Args:
        make_labeller: a new, unfitted pseudo-labeller (``fit(images, masks)``, ``predict``).
        images: (N, C, H, W) reference images (tensor).
        masks: (N, H, W) int64 class indices, -1 = unlabelled (tensor).
        num_classes: K.
        seed: seeds the split into folds.
        folds: number of folds (at most N).

    Returns:
        (N,) per-reference Dice, or None with fewer than two references.
    """
    n = int(images.shape[0])
    if n < 2:
        return None
    order = np.random.default_rng(seed).permutation(n)
    scores = np.zeros(n, dtype=np.float64)
    for held in np.array_split(order, min(folds, n)):
        kept = np.setdiff1d(order, held)
        labeller = make_labeller().fit(images[kept], masks[kept])
        predicted = labeller.predict(images[held]).labels.cpu().numpy()
        scores[held] = _foreground_dice(predicted, masks[held].cpu().numpy(), num_classes)
    return scores


def pseudo_label_project(
    project: Project,
    checkpoint: str | os.PathLike[str] | None = "latest",
    batch_size: int = 8,
    allow_degenerate: bool = False,
    devices: Any = None,
) -> ProjectPseudoLabels:
    """Pseudo-label every unlabelled pool item of ``project`` with RPG and record the labels.

    Matching options come from the recipe's ``pseudolabel.rpg`` section, and where the pool is
    labelled from ``devices`` or ``pseudolabel.devices`` (several devices: Lightning's predict
    loop, the same labels; the model's own predictions and the reference folds stay in this
    process). Before anything is recorded, the model's own predictions on the items are checked
    by the label-free degenerate-model guard (all foreground, all background, the same mask for
    every image): a degenerate model's pseudo-labels would only teach its mistake. The outcome
    reports the pseudo-labels' estimated Dice (k-fold over the human-labelled references) as
    their quality.

    Args:
        project: the open project (writable).
        checkpoint: ``"latest"`` (the latest ``round train`` model), or a checkpoint file.
        batch_size: images per forward pass (and process, with several
            ``pseudolabel.devices``).
        allow_degenerate: record the pseudo-labels of a degenerate model anyway.
        devices: where the items are labelled, spelled as ``embed.devices`` (``round
            pseudolabel --devices``); None: the recipe's ``pseudolabel.devices``.

    Returns:
        :class:`ProjectPseudoLabels`.

    Raises:
        StateError: nothing is labelled yet, no model, nothing left to pseudo-label, or the
            model is degenerate (unless ``allow_degenerate``).
    """
    import torch

    from alframe.annotate.training import _label_dataset_class
    from alframe.data.dataset import SegmentationDataset
    from alframe.data.io import read_image
    from alframe.inference import hardware_unless_here
    from alframe.models import load_task
    from alframe.pseudolabel.features import DecoderFeatures
    from alframe.pseudolabel.pool import model_device, pseudo_label_batches
    from alframe.pseudolabel.rpg import RPGOptions, RPGPseudoLabeller
    from alframe.ranking.guard import DegenerateGuard, ProfileAccumulator

    labels = project.label_files()
    if not labels:
        raise StateError(
            "nothing is labelled yet, so there are no references; import masks with "
            "`alframe round import DIR --from PATH` first"
        )
    targets = [i for i in project.item_ids() if i not in labels]
    if not targets:
        raise StateError("every pool item has a human label; there is nothing to pseudo-label")
    model_file = _resolve_checkpoint(project, checkpoint)
    recipe = project.recipe
    samples = project.samples()
    task = load_task(model_file)
    # Several devices label the pool in the predict loop (the same labels); devices this
    # machine lacks fail here, before any work.
    requested = recipe.pseudolabel.devices if devices is None else devices
    hardware = hardware_unless_here(requested, model_device(task))

    references = [replace(samples[i], mask_path=labels[i]) for i in sorted(labels)]
    ref_set = _label_dataset_class()(
        references, recipe.data, recipe.augment.eval, False, seed=recipe.seed
    )
    ref_set.label_files = frozenset(labels.values())
    ref_items = [ref_set[i] for i in range(len(ref_set))]

    def make_labeller() -> RPGPseudoLabeller:
        return RPGPseudoLabeller(
            DecoderFeatures(task),
            recipe.num_classes,
            options=RPGOptions(**recipe.pseudolabel.rpg.model_dump()),
            batch_size=batch_size,
        )

    ref_images = torch.stack([item["image"] for item in ref_items])
    ref_masks = torch.stack([item["mask"] for item in ref_items])
    labeller = make_labeller().fit(ref_images, ref_masks)

    # Pool images only: their mask files (if any) are never read for pseudo-labelling.
    target_samples = [replace(samples[i], mask_path=None) for i in targets]
    dataset = SegmentationDataset(target_samples, recipe.data, recipe.augment.eval, train=False)
    produced: dict[str, np.ndarray] = {}
    confidences: list[float] = []
    agreements: list[np.ndarray] = []
    profile: ProfileAccumulator | None = ProfileAccumulator()
    position = 0
    for batch, pseudo in pseudo_label_batches(labeller, dataset, batch_size, hardware):
        with torch.no_grad():
            proba = task.predict_proba(batch["image"]).cpu().numpy()
        if profile is not None:
            try:
                profile.add(proba)
            except ConfigError:  # images of several sizes: the guard needs one size
                profile = None
        agreements.append(
            _foreground_dice(pseudo.labels.cpu().numpy(), proba.argmax(axis=1), recipe.num_classes)
        )
        for row in range(pseudo.labels.shape[0]):
            sample = target_samples[position]
            position += 1
            native = read_image(sample, recipe.data.in_channels).shape[:2]
            resized = torch.nn.functional.interpolate(
                pseudo.labels[row][None, None].float(), size=native, mode="nearest"
            )[0, 0].long()
            out = resized.numpy()
            stored = np.where(out < 0, STORED_IGNORE, out).astype(np.uint8)
            produced[sample.id] = stored
            confidences.append(float(pseudo.confidence[row].mean()))
    degenerate = DegenerateGuard().check(profile.profile()) if profile is not None else None
    if degenerate is not None and not allow_degenerate:
        raise StateError(
            f"the model {model_file.name} is degenerate on the {len(targets)} unlabelled items "
            f"({degenerate}), so its pseudo-labels would only teach that; nothing was recorded "
            "— train it on more labels first (`alframe round train DIR`), or pass "
            "--allow-degenerate to record them anyway"
        )
    estimate = reference_dice(
        make_labeller, ref_images, ref_masks, recipe.num_classes, seed=recipe.seed
    )
    recorded = record_pseudo_labels(project, produced, source=f"rpg:{model_file.name}")
    return ProjectPseudoLabels(
        n_references=len(references),
        n_recorded=recorded,
        checkpoint=model_file,
        mean_confidence=float(np.mean(confidences)) if confidences else float("nan"),
        estimated_dice=float(estimate.mean()) if estimate is not None else None,
        model_agreement=float(np.concatenate(agreements).mean()) if agreements else None,
        degenerate=degenerate,
    )
