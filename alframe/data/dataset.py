"""The torch dataset of a list of samples (the Lightning DataModule is in :mod:`alframe.data.datamodule`).

Only torch is imported here: pictures, embeddings and pseudo-labels read images through this
dataset without paying for Lightning's import (seconds per command).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from alframe.config.schema import AugmentStep, DataConfig
from alframe.data.io import read_pair
from alframe.data.samples import Sample
from alframe.data.transforms import build_transforms, normalize_intensity
from alframe.errors import ConfigError

IGNORE_INDEX = -1
"""Mask value of unlabelled pixels (whole masks of unlabelled samples)."""


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Samples → normalised, resized, augmented tensors.

    Each item is ``{"image": FloatTensor (C, H, W), "mask": LongTensor (H, W), "id": str,
    "index": int}`` where ``index`` is the position in ``samples`` and (H, W) is
    ``data_cfg.image_size``. Unlabelled samples get a mask filled with :data:`IGNORE_INDEX` (-1),
    so labelled and unlabelled items collate into the same batch; ``"labelled"`` says which.

    Args:
        samples: the items, in the order of ``index``.
        data_cfg: the recipe's ``data`` section (classes, channels, size, normalisation, and the
            ``mask_format`` of each data set).
        augment_steps: ``augment.train`` or ``augment.eval``.
        train: whether this is a training set (augmentations are random).
        seed: seed of the augmentation pipeline (``None``: fresh entropy).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        data_cfg: DataConfig,
        augment_steps: Sequence[AugmentStep],
        train: bool,
        seed: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.data_cfg = data_cfg
        self.train = train
        self.transform = build_transforms(augment_steps, data_cfg.image_size, train, seed=seed)
        unknown = sorted({s.dataset for s in self.samples} - set(data_cfg.datasets))
        if unknown:
            raise ConfigError(
                f"samples come from data sets {unknown} that are not in data.datasets "
                f"({', '.join(data_cfg.datasets)}); build them from this recipe's catalog"
            )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        """Global ids in dataset order."""
        return [s.id for s in self.samples]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Read and normalise one item without resizing or augmenting it.

        Returns:
            The image, float32 (H, W, C), and the mask, int64 (H, W) or ``None``.
        """
        sample = self.samples[index]
        mask_format = self.data_cfg.datasets[sample.dataset].mask_format
        image, mask = read_pair(
            sample, self.data_cfg.in_channels, self.data_cfg.classes, mask_format
        )
        return normalize_intensity(image, self.data_cfg.normalization), mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, mask = self.load(index)
        labelled = mask is not None
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.int64)
        # albumentations' nearest-neighbour resize goes through OpenCV, which has no int64.
        out = self.transform(image=image, mask=mask.astype(np.int32))
        image_out, mask_out = out["image"], out["mask"]
        if image_out.ndim == 2:
            image_out = image_out[:, :, None]
        expected = tuple(self.data_cfg.image_size)
        if image_out.shape[:2] != expected or mask_out.shape[:2] != expected:
            raise ConfigError(
                f"the {'augment.train' if self.train else 'augment.eval'} steps change the image "
                f"size to {image_out.shape[:2]} (data.image_size is {expected}); end them with a "
                "transform that restores the size, e.g. PadIfNeeded or Resize"
            )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image_out.transpose(2, 0, 1))).float(),
            "mask": torch.from_numpy(np.ascontiguousarray(mask_out)).long(),
            "labelled": labelled,
            "id": sample.id,
            "index": index,
        }
