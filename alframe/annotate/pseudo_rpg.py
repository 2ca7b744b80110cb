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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from alframe.annotate.project import STORED_IGNORE, Project
from alframe.annotate.pseudo import record_pseudo_labels
from alframe.errors import StateError

__all__ = ["ProjectPseudoLabels", "pseudo_label_project"]


@dataclass(frozen=True)
class ProjectPseudoLabels:
    """Outcome of :func:`pseudo_label_project`.

    Attributes:
        n_references: human-labelled items used as references.
        n_recorded: pseudo-labels stored.
        checkpoint: the model whose features were matched.
        mean_confidence: mean per-pixel confidence (best cosine similarity for top-1).
    """

    n_references: int
    n_recorded: int
    checkpoint: Path
    mean_confidence: float


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


def pseudo_label_project(
    project: Project,
    checkpoint: str | os.PathLike[str] | None = "latest",
    batch_size: int = 8,
) -> ProjectPseudoLabels:
    """Pseudo-label every unlabelled pool item of ``project`` with RPG and record the labels.

    Matching options come from the recipe's ``pseudolabel.rpg`` section.

    Args:
        project: the open project (writable).
        checkpoint: ``"latest"`` (the latest ``round train`` model), or a checkpoint file.
        batch_size: images per forward pass.

    Returns:
        :class:`ProjectPseudoLabels`.

    Raises:
        StateError: nothing is labelled yet, no model, or nothing left to pseudo-label.
    """
    import torch
    from torch.utils.data import DataLoader

    from alframe.annotate.training import _label_dataset_class
    from alframe.data.dataset import SegmentationDataset
    from alframe.data.io import read_image
    from alframe.models import load_task
    from alframe.pseudolabel.features import DecoderFeatures
    from alframe.pseudolabel.rpg import RPGOptions, RPGPseudoLabeller

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

    references = [replace(samples[i], mask_path=labels[i]) for i in sorted(labels)]
    ref_set = _label_dataset_class()(
        references, recipe.data, recipe.augment.eval, False, seed=recipe.seed
    )
    ref_set.label_files = frozenset(labels.values())
    ref_items = [ref_set[i] for i in range(len(ref_set))]
    labeller = RPGPseudoLabeller(
        DecoderFeatures(task),
        recipe.num_classes,
        options=RPGOptions(**recipe.pseudolabel.rpg.model_dump()),
        batch_size=batch_size,
    )
    labeller.fit(
        torch.stack([item["image"] for item in ref_items]),
        torch.stack([item["mask"] for item in ref_items]),
    )

    # Pool images only: their mask files (if any) are never read for pseudo-labelling.
    target_samples = [replace(samples[i], mask_path=None) for i in targets]
    dataset = SegmentationDataset(target_samples, recipe.data, recipe.augment.eval, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    produced: dict[str, np.ndarray] = {}
    confidences: list[float] = []
    position = 0
    for batch in loader:
        pseudo = labeller.predict(batch["image"])
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
    recorded = record_pseudo_labels(project, produced, source=f"rpg:{model_file.name}")
    return ProjectPseudoLabels(
        n_references=len(references),
        n_recorded=recorded,
        checkpoint=model_file,
        mean_confidence=float(np.mean(confidences)) if confidences else float("nan"),
    )
