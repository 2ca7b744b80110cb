"""Export a labelling project's labelled items as an nnU-Net v2 raw data set.

Layout (``nnUNet_raw/DatasetNNN_Name/``)::

    imagesTr/<case>_0000.png    (or <case>_0000.nii.gz, one file per channel)
    labelsTr/<case>.png         class indices 0..K-1 (K = ignore, when labels leave pixels out)
    dataset.json                channel_names, labels, numTraining, file_ending

PNG follows nnU-Net's natural-image convention (an RGB image is one ``_0000.png`` file with
channel names R, G, B); NIfTI writes each 2-D item as an H×W×1 volume with one file per channel.
Unlabelled pixels become nnU-Net's ``ignore`` label (the highest label value), which nnU-Net
leaves out of the loss — the same meaning they have in alframe.

The data set is written to a hidden staging folder next to the target and renamed into place, so
an interrupted export never leaves a half-written data set.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from alframe._atomic import atomic_write_bytes, fsync_folder
from alframe.annotate.faults import checkpoint
from alframe.annotate.formats import label_sha256, read_label_png
from alframe.annotate.project import STORED_IGNORE, Project
from alframe.data.samples import Sample
from alframe.errors import ConfigError, DataError, StateError

_DATASET_PATTERN = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.\-]+$")


@dataclass
class NnunetExport:
    """What was exported.

    Attributes:
        folder: the data set folder (``DatasetNNN_Name``).
        n_training: number of labelled cases.
        file_ending: ``.png`` or ``.nii.gz``.
        labels: nnU-Net's label name → value mapping.
    """

    folder: Path
    n_training: int
    file_ending: str
    labels: dict[str, int]


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _nifti_bytes(array: np.ndarray) -> bytes:
    import nibabel as nib

    volume = nib.Nifti1Image(array[:, :, None], affine=np.eye(4))
    data: bytes = volume.to_bytes()
    import gzip

    return gzip.compress(data, mtime=0)


def _png_image(image: np.ndarray, where: str) -> np.ndarray:
    if not np.all(image == np.round(image)) or image.min() < 0:
        raise DataError(
            f"{where} has non-integer or negative intensities, which PNG cannot hold; export "
            "with --format nifti"
        )
    if image.max() <= 255:
        out = image.astype(np.uint8)
    elif image.max() <= 65535 and image.shape[2] == 1:
        out = image.astype(np.uint16)
    else:
        raise DataError(
            f"{where} has intensities up to {image.max():g}, beyond what this PNG layout holds; "
            "export with --format nifti"
        )
    return out[:, :, 0] if out.shape[2] == 1 else out


def _verify_labels(project: Project, labels: dict[str, Path]) -> None:
    """Check every stored label against the checksum the state store recorded at import.

    Raises:
        StateError: a label file is unreadable or its content changed since it was imported.
    """
    recorded = {
        project.path(r["path"]): r["label_sha256"]
        for r in project.store.query("SELECT path, label_sha256 FROM annotations")
    }
    damaged: list[tuple[str, Path]] = []
    for item in sorted(labels):
        path = labels[item]
        try:
            intact = label_sha256(read_label_png(path)) == recorded.get(path)
        except Exception:  # any failure to decode the file means it is damaged
            intact = False
        if not intact:
            damaged.append((item, path))
    if damaged:
        item, path = damaged[0]
        raise StateError(
            f"{len(damaged)} stored label{'s are' if len(damaged) > 1 else ' is'} damaged (e.g. "
            f"{item}: {path.relative_to(project.root)} is unreadable or no longer matches the "
            "checksum recorded at import); nothing was exported — restore the project's labels/ "
            "folder from a backup, or import those items again with `alframe round import DIR "
            "--from ... --replace`"
        )


def _write_cases(
    staging: Path,
    labels: dict[str, Path],
    samples: dict[str, Sample],
    cases: dict[str, str],
    file_format: str,
    in_channels: int,
    k: int,
) -> bool:
    """Write every case's image(s) and label to ``staging``; True when a label has ignored
    pixels."""
    from alframe.data.io import read_image

    (staging / "imagesTr").mkdir(parents=True)
    (staging / "labelsTr").mkdir()
    any_ignore = False
    for item in sorted(labels):
        case = cases[item]
        image = read_image(samples[item], in_channels)
        stored = read_label_png(labels[item])
        if stored.shape != image.shape[:2]:
            raise DataError(
                f"the stored label of {item} is {stored.shape}, its image {image.shape[:2]}; "
                "import it again with --replace"
            )
        ignore = stored == STORED_IGNORE
        any_ignore |= bool(ignore.any())
        # nnU-Net's ignore label must be the highest value: K.
        label_array = np.where(ignore, k, stored).astype(np.uint8)
        if file_format == "png":
            atomic_write_bytes(
                staging / "imagesTr" / f"{case}_0000.png", _png_bytes(_png_image(image, item))
            )
            atomic_write_bytes(staging / "labelsTr" / f"{case}.png", _png_bytes(label_array))
        else:
            for channel in range(image.shape[2]):
                atomic_write_bytes(
                    staging / "imagesTr" / f"{case}_{channel:04d}.nii.gz",
                    _nifti_bytes(image[:, :, channel].astype(np.float32)),
                )
            atomic_write_bytes(staging / "labelsTr" / f"{case}.nii.gz", _nifti_bytes(label_array))
        checkpoint("nnunet:case")
    return any_ignore


def export_nnunet(
    project: Project,
    out: str | os.PathLike[str],
    dataset_id: int = 1,
    name: str | None = None,
    file_format: str = "auto",
    overwrite: bool = False,
) -> NnunetExport:
    """Write the labelled items as an nnU-Net v2 raw data set.

    Args:
        project: the open project.
        out: the ``nnUNet_raw`` folder (the data set goes to ``out/DatasetNNN_Name``), or a
            folder already named ``DatasetNNN_Name``.
        dataset_id: nnU-Net's three-digit data set id.
        name: data set name (default: the recipe name).
        file_format: ``png``, ``nifti`` or ``auto`` (PNG unless an image comes from NIfTI).
        overwrite: replace an existing data set folder.

    Returns:
        The :class:`NnunetExport`.

    Raises:
        StateError: nothing is labelled yet.
        ConfigError: bad id, name or format; the target exists and ``overwrite`` is False.
        DataError: an image cannot be written in the chosen format.
    """

    if file_format not in ("auto", "png", "nifti"):
        raise ConfigError(f"--format {file_format!r}: expected auto, png or nifti")
    if not 1 <= dataset_id <= 999:
        raise ConfigError(f"--dataset-id {dataset_id}: nnU-Net ids have three digits (1..999)")
    labels = project.label_files()
    if not labels:
        raise StateError(
            "nothing is labelled yet, so there is nothing to export; import masks with "
            "`alframe round import DIR --from PATH` first"
        )
    target = Path(out)
    if not _DATASET_PATTERN.match(target.name):
        label = re.sub(r"[^A-Za-z0-9_.\-]", "_", name or project.recipe.name)
        target = target / f"Dataset{dataset_id:03d}_{label}"
    if target.exists() and not overwrite:
        raise ConfigError(
            f"{target} already exists; pass --overwrite to replace it or choose another --dataset-id"
        )
    samples = project.samples()
    cases = project.case_of()
    if file_format == "auto":
        from_nifti = any(samples[i].slice_index is not None for i in labels)
        file_format = "nifti" if from_nifti else "png"
    ending = ".png" if file_format == "png" else ".nii.gz"
    in_channels = project.recipe.data.in_channels
    k = len(project.class_names)
    _verify_labels(project, labels)
    staging = target.parent / f".{target.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        any_ignore = _write_cases(staging, labels, samples, cases, file_format, in_channels, k)
        channel_names = {"0": "R", "1": "G", "2": "B"} if in_channels == 3 else {"0": "gray"}
        label_map = {("background" if i == 0 else n): i for i, n in enumerate(project.class_names)}
        if any_ignore:
            label_map["ignore"] = k
        dataset = {
            "channel_names": channel_names,
            "labels": label_map,
            "numTraining": len(labels),
            "file_ending": ending,
            "name": target.name.split("_", 1)[1],
            "description": (
                f"alframe labelling project {project.root.name} ({project.recipe.name})"
            ),
        }
        atomic_write_bytes(
            staging / "dataset.json", (json.dumps(dataset, indent=2) + "\n").encode("utf-8")
        )
        fsync_folder(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # all or nothing: no half data set is left
        raise
    checkpoint("nnunet:staged")
    if target.exists():
        old = target.parent / f".{target.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
    fsync_folder(target.parent)
    return NnunetExport(folder=target, n_training=len(labels), file_ending=ending, labels=label_map)
