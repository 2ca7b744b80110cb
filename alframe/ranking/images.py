"""Target images (and optional labels) streamed in batches to every candidate model.

:class:`TargetImages` holds preprocessed images — normalised and resized exactly as the models
expect — either in memory (``from_array``) or as a dataset read on demand (``from_dataset``).
:func:`images_from_folder` builds one from an image folder with the preprocessing of an alframe
recipe (normalisation, size, channels), so black-box and grey-box candidates see the same input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alframe.errors import DataError

__all__ = ["TargetImages", "images_from_folder"]


@dataclass
class TargetImages:
    """Preprocessed target images, iterated in batches.

    Attributes:
        ids: one id per image.
        images: (N, C, H, W) float32 array, or None when ``dataset`` is used.
        labels: (N, H, W) int64 class indices (−1 = unlabelled), or None.
        dataset: a sequence of ``{"image": (C, H, W), "mask": (H, W)}`` items (a
            :class:`~alframe.data.SegmentationDataset`), read on demand, or None.
    """

    ids: list[str]
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    dataset: Any = None
    has_labels: bool = False

    @classmethod
    def from_array(
        cls,
        images: np.ndarray,
        ids: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
    ) -> TargetImages:
        """In-memory images.

        Args:
            images: (N, C, H, W) normalised images.
            ids: N ids (default ``"0".."N-1"``).
            labels: optional (N, H, W) class indices.
        """
        array = np.ascontiguousarray(images, dtype=np.float32)
        if array.ndim != 4:
            raise DataError(f"target images must be (N, C, H, W), got shape {array.shape}")
        names = [str(i) for i in range(len(array))] if ids is None else [str(i) for i in ids]
        if len(names) != len(array):
            raise DataError(f"{len(names)} ids for {len(array)} images")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (array.shape[0], *array.shape[2:]):
                raise DataError(
                    f"labels must be (N, H, W) = {(array.shape[0], *array.shape[2:])}, got "
                    f"{labels.shape}"
                )
        return cls(ids=names, images=array, labels=labels, has_labels=labels is not None)

    @classmethod
    def from_dataset(cls, dataset: Any, ids: Sequence[str], has_labels: bool) -> TargetImages:
        """Images read on demand from a dataset of ``{"image", "mask"}`` items."""
        return cls(ids=list(ids), dataset=dataset, has_labels=has_labels)

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int = 16) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(positions, images)`` with images (b, C, H, W) float32, in id order."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            if self.images is not None:
                yield slice(start, stop), self.images[start:stop]
            else:
                items = [self._item(i)["image"] for i in range(start, stop)]
                yield slice(start, stop), np.stack([_as_numpy(x) for x in items])

    def label_array(self) -> np.ndarray:
        """(N, H, W) int64 labels.

        Raises:
            DataError: there are no labels.
        """
        if not self.has_labels:
            raise DataError("no target labels were given; pass --labels DIR to validate")
        if self.labels is not None:
            return self.labels
        return np.stack([_as_numpy(self._item(i)["mask"]) for i in range(len(self))]).astype(
            np.int64
        )

    def materialise(self) -> TargetImages:
        """An in-memory copy (reads every image once; small target sets only)."""
        if self.images is not None:
            return self
        images = np.concatenate([b for _, b in self.batches(64)]) if len(self) else None
        labels = self.label_array() if self.has_labels else None
        if images is None:
            raise DataError("the target set is empty")
        return TargetImages.from_array(images, self.ids, labels)

    def _item(self, index: int) -> Mapping[str, Any]:
        if self.dataset is None:
            raise DataError("TargetImages has neither images nor a dataset")
        return self.dataset[index]


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)


def images_from_folder(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    recipe: Mapping[str, Any] | None = None,
    image_size: int | None = None,
) -> TargetImages:
    """Target images from a folder, preprocessed like the recipe's training data.

    Args:
        images: a folder of images, or a folder holding ``images/`` (and ``masks/``).
        labels: optional folder of masks with the same file stems (``masks/`` next to
            ``images/`` is not used unless given).
        recipe: an alframe recipe as plain data (from a checkpoint); it gives the normalisation,
            image size, channels, classes and mask format. None: 1 channel, percentile
            normalisation, binary masks and ``image_size`` (default 256).
        image_size: override the square input size (a multiple of 32).

    Returns:
        The images (loaded into memory).

    Raises:
        DataError: a folder is missing, holds no images, or a mask is missing.
    """
    from alframe.config.schema import DataConfig, DatasetConfig
    from alframe.data import SegmentationDataset, discover_samples

    folder = Path(images).expanduser()
    if not folder.is_dir():
        raise DataError(f"--images {folder}: no such folder; pass a folder of target images")
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    mask_dir: Path | None = None
    if labels is not None:
        mask_dir = Path(labels).expanduser()
        if not mask_dir.is_dir():
            raise DataError(f"--labels {mask_dir}: no such folder; pass a folder of masks")
    data_raw = dict(recipe.get("data", {})) if recipe else {}
    mask_format = "binary"
    if data_raw.get("datasets"):
        train_name = (data_raw.get("train") or {}).get("dataset")
        entry = data_raw["datasets"].get(train_name) or next(iter(data_raw["datasets"].values()))
        mask_format = entry.get("mask_format", "binary")
    entry_cfg = DatasetConfig(
        path=str(image_dir.parent.resolve()),
        images=str(image_dir.resolve()),
        masks=str(mask_dir.resolve()) if mask_dir is not None else None,
        mask_format=mask_format,
    )
    fields: dict[str, Any] = {
        "datasets": {"target": entry_cfg},
        "train": {"dataset": "target"},
    }
    for key in ("classes", "image_size", "in_channels", "normalization"):
        if key in data_raw:
            fields[key] = data_raw[key]
    if "normalization" not in fields:
        fields["normalization"] = {"method": "percentile", "low": 0.5, "high": 99.5}
    if image_size is not None:
        fields["image_size"] = (image_size, image_size)
    try:
        data_cfg = DataConfig.model_validate(fields)
    except Exception as err:  # pydantic ValidationError: a bad --image-size
        raise DataError(f"cannot read target images with these settings: {err}") from None
    samples = discover_samples("target", entry_cfg, image_dir.parent)
    dataset = SegmentationDataset(samples, data_cfg, [], train=False)
    ids = [s.local_id for s in samples]
    return TargetImages.from_dataset(dataset, ids, has_labels=mask_dir is not None).materialise()
