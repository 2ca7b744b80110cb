"""Data layer: samples, reading, pools, splits, catalog, transforms, datasets, synthetic data.

The torch / Lightning parts (:class:`SegmentationDataset`, :class:`SegmentationDataModule`) are
imported on first use, so ``import alframe.data`` stays light for code that only needs ids, pools
or splits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alframe._lazy import lazy_exports
from alframe.data.catalog import DataCatalog
from alframe.data.io import (
    clear_volume_cache,
    read_image,
    read_mask,
    read_pair,
    validate_samples,
)
from alframe.data.pool import Pool
from alframe.data.samples import (
    IMAGE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    Sample,
    discover_samples,
)
from alframe.data.splits import grouped_holdout, part_sizes, split_samples
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset
from alframe.data.transforms import build_step, build_transforms, normalize_intensity

if TYPE_CHECKING:
    from alframe.data.datamodule import SegmentationDataModule
    from alframe.data.dataset import IGNORE_INDEX, SegmentationDataset

__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "IGNORE_INDEX": "dataset",
        "SegmentationDataset": "dataset",
        "SegmentationDataModule": "datamodule",
    },
)


__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "DataCatalog",
    "Pool",
    "Sample",
    "SegmentationDataModule",
    "SegmentationDataset",
    "build_step",
    "build_transforms",
    "clear_volume_cache",
    "discover_samples",
    "grouped_holdout",
    "normalize_intensity",
    "part_sizes",
    "read_image",
    "read_mask",
    "read_pair",
    "split_samples",
    "synthetic_recipe_dict",
    "validate_samples",
    "write_synthetic_dataset",
]
