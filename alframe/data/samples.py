"""Samples: one 2-D image (a file, or one slice of a NIfTI volume) with its optional mask.

A sample's global id is ``"<dataset>/<file stem>"`` for image folders and
``"<dataset>/<volume stem>:<slice:04d>"`` for NIfTI slices. Ids are stable across runs (they depend
only on file names), so selections, splits and caches can be stored as ids.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from alframe.config.loading import expand_path
from alframe.config.schema import DatasetConfig
from alframe.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""File endings read as 2-D images (case-insensitive)."""

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
"""File endings read as NIfTI volumes (case-insensitive)."""


@dataclass(frozen=True)
class Sample:
    """One 2-D training / evaluation item.

    Attributes:
        id: global id, ``"<dataset>/<stem>"`` or ``"<dataset>/<volume stem>:<slice:04d>"``.
        dataset: name of the data set in ``data.datasets``.
        group: items that must stay together in splits and selections (the file stem for image
            folders, the volume stem for NIfTI slices).
        image_path: image file (or NIfTI volume).
        mask_path: mask file (or mask volume); ``None`` for unlabelled items.
        slice_index: slice of the volume along ``axis``; ``None`` for 2-D image files.
        axis: slicing axis of NIfTI volumes (ignored for 2-D files).
    """

    id: str
    dataset: str
    group: str
    image_path: Path
    mask_path: Path | None
    slice_index: int | None = None
    axis: int = 2

    @property
    def local_id(self) -> str:
        """The id without the ``"<dataset>/"`` prefix (the file stem, plus ``:<slice>``)."""
        return self.id.split("/", 1)[1] if "/" in self.id else self.id

    @property
    def labelled(self) -> bool:
        """Whether the sample has a mask."""
        return self.mask_path is not None


def file_stem(path: Path) -> str:
    """The file name without its image / NIfTI extension (``a.nii.gz`` → ``a``)."""
    name = path.name
    lower = name.lower()
    for ext in (*NIFTI_EXTENSIONS, *IMAGE_EXTENSIONS):
        # .nii.gz is listed before .nii so the double extension is removed whole.
        if lower.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _has_extension(path: Path, extensions: tuple[str, ...]) -> bool:
    lower = path.name.lower()
    return any(lower.endswith(ext) for ext in extensions)


def _list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    # Hidden files (.DS_Store, ._foo.png from macOS) are never data.
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _has_extension(p, extensions)
    )


def _by_stem(files: list[Path], what: str, folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        stem = file_stem(path)
        if stem in found:
            raise DataError(
                f"{what} folder {folder} has two files with the stem '{stem}' "
                f"({found[stem].name}, {path.name}); keep one of them"
            )
        found[stem] = path
    return found


def _check_folder(folder: Path, name: str, key: str, root: Path) -> None:
    if folder.is_dir():
        return
    parent = folder.parent
    hint = ""
    if parent.is_dir():
        subdirs = sorted(p.name for p in parent.iterdir() if p.is_dir())
        close = difflib.get_close_matches(folder.name, subdirs, n=3)
        if close:
            hint = f" (did you mean {', '.join(close)}?)"
        elif subdirs:
            hint = f" ({parent} contains: {', '.join(subdirs[:8])})"
    raise DataError(
        f"data set '{name}': folder {folder} does not exist{hint}; "
        f"fix data.datasets.{name}.{key} (data.root is {root})"
    )


def discover_samples(name: str, cfg: DatasetConfig, root: Path) -> list[Sample]:
    """Find every sample of one data set.

    Image folders pair ``<path>/<images>/<stem>.<ext>`` with ``<path>/<masks>/<stem>.<any ext>``.
    NIfTI data sets give one sample per slice of each ``<path>/<images>/*.nii[.gz]`` volume along
    ``cfg.axis``; the mask volume has the same file name in ``<path>/<masks>/``. Only headers are
    read here, so discovery is fast even for large volumes.

    Args:
        name: the data set's key in ``data.datasets`` (prefix of every id).
        cfg: the data set's configuration.
        root: the resolved ``data.root``; ``cfg.path`` is relative to it.

    Returns:
        The samples, sorted by id. ``mask_path`` is ``None`` for every sample when ``cfg.masks``
        is ``None`` (unlabelled data).

    Raises:
        DataError: a folder is missing or empty, an image has no mask, two files share a stem, or
            a volume header cannot be read / does not match its mask.
    """
    base = expand_path(cfg.path, root)
    _check_folder(base, name, "path", root)
    image_dir = base / cfg.images
    _check_folder(image_dir, name, "images", root)
    mask_dir = base / cfg.masks if cfg.masks is not None else None
    if mask_dir is not None:
        _check_folder(mask_dir, name, "masks", root)

    extensions = NIFTI_EXTENSIONS if cfg.kind == "nifti" else IMAGE_EXTENSIONS
    images = _by_stem(_list_files(image_dir, extensions), "image", image_dir)
    if not images:
        what = "NIfTI volumes" if cfg.kind == "nifti" else "images"
        others = sorted(p.name for p in image_dir.iterdir() if not p.name.startswith("."))[:5]
        seen = f" (it holds e.g. {', '.join(others)})" if others else " (it is empty)"
        raise DataError(
            f"data set '{name}': no {what} ({', '.join(extensions)}) in {image_dir}"
            f"{seen}; put the images there or fix data.datasets.{name}.path / kind"
        )
    masks = (
        _by_stem(_list_files(mask_dir, extensions), "mask", mask_dir)
        if mask_dir is not None
        else {}
    )
    if mask_dir is not None:
        missing = [stem for stem in images if stem not in masks]
        if missing:
            example = images[missing[0]]
            suffix = ".nii.gz" if cfg.kind == "nifti" else ".png"
            more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
            raise DataError(
                f"image {example} has no mask in {mask_dir}{more}; add "
                f"{cfg.masks}/{missing[0]}{suffix} or remove the image "
                f"(or set data.datasets.{name}.masks: null for unlabelled data)"
            )

    samples: list[Sample] = []
    for stem, image_path in images.items():
        mask_path = masks.get(stem)
        if cfg.kind == "folder":
            samples.append(Sample(f"{name}/{stem}", name, stem, image_path, mask_path))
            continue
        n_slices = _volume_slices(image_path, mask_path, cfg.axis)
        samples.extend(
            Sample(f"{name}/{stem}:{k:04d}", name, stem, image_path, mask_path, k, cfg.axis)
            for k in range(n_slices)
        )
    return sorted(samples, key=lambda s: s.id)


def _volume_slices(image_path: Path, mask_path: Path | None, axis: int) -> int:
    from alframe.data.io import nifti_shape

    shape = nifti_shape(image_path)
    if mask_path is not None:
        mask_shape = nifti_shape(mask_path)
        if mask_shape != shape:
            raise DataError(
                f"volume {image_path} has shape {shape} but its mask {mask_path} has shape "
                f"{mask_shape}; the mask must have the volume's shape — re-export it"
            )
    return shape[axis]
