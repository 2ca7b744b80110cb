"""Labelled target sets for source-model selection.

Three layouts are recognised by :func:`load_target`:

- **class folders**: ``DIR/<class name>/*.png`` (one folder per class; image classification);
- **CSV**: a file with rows ``path,label`` (an optional header ``path,label``; relative paths are
  resolved against the CSV's folder);
- **segmentation**: ``DIR/images/*`` with ``DIR/masks/*`` of the same file stems. Labels are
  derived from the masks (``label_mode``): ``fraction`` — the foreground fraction cut into
  ``bins`` quantile bins (default); ``presence`` — which foreground classes are present (each
  combination is one label); ``pixels`` — pixel features are sampled with their mask labels from
  the feature maps (a few labelled images suffice).

Images are read once (grey or RGB), resized to ``image_size`` and kept in memory as raw
intensities; each candidate then applies its own channel count and intensity normalisation.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alframe.data.io import read_array
from alframe.data.samples import IMAGE_EXTENSIONS, file_stem
from alframe.errors import ConfigError, DataError

LABEL_MODES = ("auto", "class", "fraction", "presence", "pixels")
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class TargetSet:
    """A labelled target set held in memory.

    Attributes:
        paths: (N,) image files.
        images: (N, H, W, C_raw) float32 raw intensities resized to the image size (C_raw 1 or 3).
        labels: (N,) int64 image-level labels (for ``pixels`` mode: a per-image stratum used for
            subsampling only).
        class_names: name of each label value.
        label_mode: ``class``, ``fraction``, ``presence`` or ``pixels``.
        masks: (N, H, W) int64 class-index masks (segmentation targets only; −1 = ignore).
    """

    paths: list[Path]
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    label_mode: str
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def channels(
        self, in_channels: int, normalization: Mapping[str, Any] | None = None
    ) -> np.ndarray:
        """Images as (N, in_channels, H, W) float32, intensity-normalised per image.

        Args:
            in_channels: 1 (RGB → luminance) or 3 (grey replicated).
            normalization: ``data.normalization`` settings (default: percentile 0.5 / 99.5).
        """
        from alframe.config.schema import NormalizationConfig
        from alframe.data.transforms import normalize_intensity

        cfg = NormalizationConfig(**dict(normalization or {}))
        raw = self.images
        if in_channels == 1 and raw.shape[3] == 3:
            raw = (raw @ _LUMA)[..., None]
        elif in_channels == 3 and raw.shape[3] == 1:
            raw = np.repeat(raw, 3, axis=3)
        elif in_channels not in (1, 3):
            raise ConfigError(f"candidates with {in_channels} input channels are not supported")
        out = np.stack([normalize_intensity(image, cfg) for image in raw])
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _read_resized(path: Path, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    from PIL import Image

    data = read_array(path, keep_palette=nearest)
    if data.ndim == 3:
        data = data[:, :, 0] if data.shape[2] == 2 else data[:, :, :3]
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    array = np.asarray(data, dtype=np.float32)
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    if array.ndim == 2:
        return np.asarray(
            Image.fromarray(array, mode="F").resize((width, height), resample), dtype=np.float32
        )
    channels = [
        np.asarray(Image.fromarray(array[:, :, c], mode="F").resize((width, height), resample))
        for c in range(array.shape[2])
    ]
    return np.stack(channels, axis=2).astype(np.float32)


def _read_images(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    arrays = []
    for path in paths:
        try:
            image = _read_resized(path, size)
        except DataError:
            raise
        except Exception as err:  # PIL / tifffile errors name nothing useful for the user
            raise DataError(f"cannot read image {path} ({type(err).__name__}: {err})") from None
        arrays.append(image[:, :, None] if image.ndim == 2 else image)
    if any(a.shape[2] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return np.stack(arrays).astype(np.float32)


def _from_csv(file: Path) -> tuple[list[Path], list[str]]:
    paths: list[Path] = []
    labels: list[str] = []
    with open(file, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DataError(f"{file}:{line_no}: expected 'path,label', got {row!r}")
            path_text, label = row[0].strip(), row[1].strip()
            if line_no == 1 and path_text.lower() in {"path", "image", "file"}:
                continue
            path = Path(path_text)
            if not path.is_absolute():
                path = file.parent / path
            if not path.is_file():
                raise DataError(f"{file}:{line_no}: image {path} does not exist")
            paths.append(path)
            labels.append(label)
    if not paths:
        raise DataError(f"{file} lists no images; expected rows 'path,label'")
    return paths, labels


def _from_class_folders(root: Path) -> tuple[list[Path], list[str]]:
    paths: list[Path] = []
    labels: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _image_files(folder)
        paths.extend(files)
        labels.extend([folder.name] * len(files))
    if not paths:
        raise DataError(
            f"{root} holds no class folders with images; expected DIR/<class>/*.png, a CSV of "
            "path,label, or DIR/images + DIR/masks"
        )
    return paths, labels


def _subsample(labels: np.ndarray, max_images: int | None, seed: int) -> np.ndarray:
    """Indices of a stratified, seeded subsample (all indices when no cap), sorted."""
    n = labels.shape[0]
    if max_images is None or max_images >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.maximum(1, np.floor(counts / n * max_images).astype(int))
    for value, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == value)
        chosen.extend(rng.choice(members, size=min(quota, members.size), replace=False).tolist())
    return np.sort(np.asarray(chosen[: max(max_images, len(classes))], dtype=np.int64))


def _mask_labels(masks: np.ndarray, mode: str, bins: int) -> tuple[np.ndarray, list[str]]:
    if mode == "presence":
        keys = [tuple(np.unique(m[m > 0]).tolist()) for m in masks]
        unique = sorted(set(keys))
        names = ["+".join(str(v) for v in key) or "none" for key in unique]
        return np.asarray([unique.index(k) for k in keys], dtype=np.int64), names
    fractions = (masks > 0).reshape(masks.shape[0], -1).mean(axis=1)
    edges = np.quantile(fractions, np.linspace(0, 1, bins + 1)[1:-1])
    labels = np.searchsorted(edges, fractions, side="right").astype(np.int64)
    names = [f"fraction_bin{i}" for i in range(bins)]
    return labels, names


def load_target(
    path: str | Path,
    image_size: int | tuple[int, int] = 96,
    label_mode: str = "auto",
    bins: int = 3,
    max_images: int | None = None,
    seed: int = 0,
) -> TargetSet:
    """Read a labelled target set (class folders, a CSV, or images + masks).

    Args:
        path: a folder or a CSV file (see the module docstring).
        image_size: side (or (H, W)) every image is resized to.
        label_mode: ``auto`` (``class`` for classification layouts, ``fraction`` for
            segmentation), or one of ``class``, ``fraction``, ``presence``, ``pixels``.
        bins: quantile bins of the foreground fraction (``fraction`` mode).
        max_images: keep a stratified, seeded subsample of at most this many images.
        seed: seed of the subsample.

    Returns:
        The :class:`TargetSet`.

    Raises:
        DataError: missing folder / files, unreadable images, unmatched masks, fewer than two
            classes.
        ConfigError: an unknown label mode, or a segmentation mode for a classification layout.
    """
    if label_mode not in LABEL_MODES:
        raise ConfigError(
            f"label mode {label_mode!r} is unknown; use one of {', '.join(LABEL_MODES)}"
        )
    size: tuple[int, int] = (
        (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[1])
    )
    if min(size) < 8:
        raise ConfigError(f"image size {size} is too small; use at least 8 pixels")
    root = Path(path)
    if not root.exists():
        raise DataError(f"target {root} does not exist; check the path")
    masks: np.ndarray | None = None
    if root.is_dir() and (root / "images").is_dir() and (root / "masks").is_dir():
        mode = "fraction" if label_mode == "auto" else label_mode
        if mode == "class":
            raise ConfigError(
                f"{root} is a segmentation set (images/ + masks/); use fraction, presence or pixels"
            )
        image_files = _image_files(root / "images")
        mask_by_stem = {file_stem(p): p for p in _image_files(root / "masks")}
        missing = [p.name for p in image_files if file_stem(p) not in mask_by_stem]
        if missing:
            raise DataError(
                f"{root}/masks lacks masks for {len(missing)} image(s) (e.g. {missing[0]}); every "
                "image needs a mask with the same file stem"
            )
        if not image_files:
            raise DataError(f"{root}/images holds no images")
        raw_masks = np.stack(
            [_read_resized(mask_by_stem[file_stem(p)], size, nearest=True) for p in image_files]
        )
        if raw_masks.ndim == 4:
            raw_masks = raw_masks[..., 0]
        values = np.unique(raw_masks)
        masks = np.searchsorted(values, raw_masks).astype(np.int64)  # 0 = background
        strata, class_names = _mask_labels(masks, "fraction" if mode == "pixels" else mode, bins)
        if mode == "pixels":
            class_names = [str(v) for v in values.astype(np.int64).tolist()]
        paths = image_files
        labels = strata
    else:
        mode = "class" if label_mode == "auto" else label_mode
        if mode != "class":
            raise ConfigError(
                f"label mode {mode!r} needs a segmentation target (DIR/images + DIR/masks)"
            )
        if root.is_file():
            paths, names = _from_csv(root)
        else:
            paths, names = _from_class_folders(root)
        class_names = sorted(set(names))
        labels = np.asarray([class_names.index(n) for n in names], dtype=np.int64)
    keep = _subsample(labels, max_images, seed)
    labels = labels[keep]
    if mode == "pixels":
        if masks is None or np.unique(masks[keep]).size < 2:
            raise DataError(f"the masks of {root} hold a single class; pixel labels need two")
    elif np.unique(labels).size < 2:
        raise DataError(
            f"target {root} has a single class ({class_names[int(labels[0])]}); transferability "
            "needs at least two labelled classes"
        )
    chosen = [paths[i] for i in keep]
    return TargetSet(
        paths=chosen,
        images=_read_images(chosen, size),
        labels=labels,
        class_names=class_names,
        label_mode=mode,
        masks=masks[keep] if masks is not None else None,
    )
