"""``alframe pseudolabel``: reference-guided pseudo-labels (RPG) for a folder of images.

Output formats (chosen to keep label values exact and confidences unquantised):

* 2-D inputs (PNG, JPEG, TIFF): ``<out>/masks/<stem>.png`` (TIFF inputs: ``.tif``), 8-bit (16-bit
  when a label value exceeds 255) with the **references' mask values** (e.g. 0/255), and
  ``<out>/confidence/<stem>.tif``, a float32 TIFF.
* NIfTI volumes (``.nii``/``.nii.gz``, sliced along the last axis): ``<out>/masks/<stem>.nii.gz``
  (integer, the input's affine) and ``<out>/confidence/<stem>.nii.gz`` (float32).
* ``<out>/pseudolabel.json``: class values, options, feature source and per-image statistics.

Feature sources: ``--checkpoint`` (decoder features of a model trained by ``alframe train``; its
recipe gives the image size and normalisation), ``--mae`` (the frozen XSSR MAE encoder, stride-4
multi-scale features), or neither: multi-scale intensity / gradient / Laplacian features, a
model-free baseline that works for structures defined by their brightness and texture; use a
checkpoint for real anatomy.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alframe.errors import ConfigError, DataError

_NIFTI = (".nii.gz", ".nii")
_IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def add_commands(sub: Any) -> None:
    """Adds the ``pseudolabel`` sub-command to the ``alframe`` sub-parser group."""
    parser = sub.add_parser(
        "pseudolabel",
        help="reference-guided pseudo-labels (RPG): label images from a few labelled references",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--references", required=True, help="folder with images/ and masks/ (same file stems)"
    )
    parser.add_argument("--images", required=True, help="folder of images to pseudo-label")
    parser.add_argument("--out", required=True, help="output folder (must be empty or new)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="segmentation checkpoint: decoder features")
    source.add_argument("--mae", help="MAE checkpoint (mae.ckpt or its folder): encoder features")
    parser.add_argument("--top-k", type=int, default=1, help="1: nearest pixel; k>1: vote")
    parser.add_argument("--temperature", type=float, default=0.1, help="top-k vote temperature")
    parser.add_argument("--max-per-class", type=int, default=5000, help="reference pixels/class")
    parser.add_argument(
        "--filter-percentile",
        type=float,
        default=None,
        help="leave pixels below this similarity percentile (per image) unlabelled",
    )
    parser.add_argument(
        "--ignore-value",
        type=int,
        default=None,
        help="mask value of filtered pixels (default 255, or the largest unused value)",
    )
    parser.add_argument(
        "--spatial-weight", type=float, default=0.0, help="spatial prior weight (0: off)"
    )
    parser.add_argument("--match-stride", type=int, default=1, help="match at 1/stride resolution")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="model input size (default: the checkpoint's recipe, 256 256 for --mae, the "
        "original size without a model)",
    )
    parser.add_argument("--backend", choices=["auto", "torch", "faiss"], default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per feature batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reference sample")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=cmd_pseudolabel)


# ------------------------------------------------------------------------------------- files


def _kind(path: Path) -> str | None:
    lower = path.name.lower()
    if lower.endswith(_NIFTI):
        return "nifti"
    if lower.endswith(_IMAGES):
        return "image"
    return None


def _stem(path: Path) -> str:
    lower = path.name.lower()
    for ext in (*_NIFTI, *_IMAGES):
        if lower.endswith(ext):
            return path.name[: -len(ext)]
    return path.stem


def _list_folder(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist; check the path")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _kind(p)
    )
    if not files:
        raise DataError(
            f"{what} folder {folder} holds no images ({', '.join((*_IMAGES, *_NIFTI))}); put "
            "the images there or fix the path"
        )
    stems: dict[str, Path] = {}
    for path in files:
        if _stem(path) in stems:
            raise DataError(
                f"{folder} has two files with the stem '{_stem(path)}' ({stems[_stem(path)].name}, "
                f"{path.name}); keep one"
            )
        stems[_stem(path)] = path
    return files


def _read_volume(path: Path) -> tuple[np.ndarray, Any]:
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:
        raise DataError(f"cannot read volume {path} ({type(err).__name__}); re-export it") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise DataError(f"volume {path} has shape {data.shape}; pseudolabel reads 3-D volumes")
    return data, image


def _slices(path: Path) -> list[np.ndarray]:
    """The 2-D image(s) of a file: one for PNG/TIFF/JPEG, one per last-axis slice for NIfTI."""
    from alframe.data.io import read_array

    if _kind(path) == "nifti":
        volume, _ = _read_volume(path)
        return [volume[:, :, k] for k in range(volume.shape[2])]
    return [read_array(path)]


def _gray(array: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) → float32 (H, W, in_channels) with the luminance rule of alframe.data."""
    from alframe.data.io import LUMINANCE_WEIGHTS

    data = array.astype(np.float32, copy=False)
    if data.ndim == 3:
        if data.shape[2] == 2:
            data = data[:, :, 0]
        elif in_channels == 3:
            return np.ascontiguousarray(data[:, :, :3])
        else:
            return (data[:, :, :3] @ np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32))[:, :, None]
    gray = data[:, :, None]
    return np.repeat(gray, 3, axis=2) if in_channels == 3 else gray


def _mask_slices(path: Path) -> list[np.ndarray]:
    from alframe.data.io import read_array, single_channel_mask

    if _kind(path) == "nifti":
        volume, _ = _read_volume(path)
        slices = [volume[:, :, k] for k in range(volume.shape[2])]
    else:
        slices = [single_channel_mask(read_array(path, keep_palette=True), path)]
    for data in slices:
        if data.dtype.kind == "f" and not np.all(data == np.round(data)):
            raise DataError(f"mask {path} has non-integer values; masks hold class values")
        if data.size and data.min() < 0:
            raise DataError(f"mask {path} has negative values; masks hold class values >= 0")
    return [s.astype(np.int64) for s in slices]


@dataclass
class _References:
    images: list[np.ndarray]  # (H, W) or (H, W, C) raw
    masks: list[np.ndarray]  # (H, W) raw values
    values: list[int]  # sorted class values


def _read_references(folder: Path) -> _References:
    if not folder.is_dir():
        raise DataError(f"references folder {folder} does not exist; check --references")
    image_dir, mask_dir = folder / "images", folder / "masks"
    for sub in (image_dir, mask_dir):
        if not sub.is_dir():
            raise DataError(
                f"references folder {folder} has no {sub.name}/ sub-folder; --references needs "
                "images/ and masks/ with the same file stems"
            )
    image_files = _list_folder(image_dir, "reference images")
    masks_by_stem = {_stem(p): p for p in _list_folder(mask_dir, "reference masks")}
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for path in image_files:
        mask_path = masks_by_stem.get(_stem(path))
        if mask_path is None:
            raise DataError(
                f"reference image {path} has no mask in {mask_dir}; add {_stem(path)}.png or "
                "remove the image"
            )
        image_slices, mask_slices = _slices(path), _mask_slices(mask_path)
        if len(image_slices) != len(mask_slices) or any(
            i.shape[:2] != m.shape for i, m in zip(image_slices, mask_slices)
        ):
            raise DataError(
                f"reference image {path} is {image_slices[0].shape[:2]} (H, W) x "
                f"{len(image_slices)} but its mask {mask_path} is {mask_slices[0].shape} x "
                f"{len(mask_slices)}; the mask must have the image's size — re-export it"
            )
        images.extend(image_slices)
        masks.extend(mask_slices)
    values = sorted({int(v) for m in masks for v in np.unique(m)})
    if len(values) < 2:
        raise DataError(
            f"the reference masks hold only the value {values}; pseudo-labels need at least two "
            "classes (e.g. background 0 and foreground 255)"
        )
    return _References(images, masks, values)


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------- features


@dataclass
class _Source:
    features: Any
    in_channels: int
    image_size: tuple[int, int] | None
    normalization: Any
    description: str


def _feature_source(args: argparse.Namespace) -> _Source:
    from alframe.config.schema import NormalizationConfig
    from alframe.pseudolabel.features import DecoderFeatures, EncoderFeatures, IntensityFeatures

    size = tuple(args.image_size) if args.image_size else None
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise ConfigError(f"--image-size must be positive, got {size}")
    for flag, value in (("--checkpoint", args.checkpoint), ("--mae", args.mae)):
        # Before the (slow) model imports, so a typo fails at once.
        if value and not Path(value).exists():
            raise ConfigError(f"{flag} {value} does not exist; check the path")
    if args.checkpoint:
        from alframe.models import load_task

        task: Any = load_task(args.checkpoint)
        recipe = task.hparams.get("recipe") or {}
        data = recipe.get("data", {}) if isinstance(recipe, dict) else {}
        if size is None:
            size = tuple(data.get("image_size", (256, 256)))
        normalization = NormalizationConfig.model_validate(data.get("normalization", {}))
        return _Source(
            DecoderFeatures(task),
            int(task.in_channels),
            (int(size[0]), int(size[1])),
            normalization,
            f"decoder features of {args.checkpoint}",
        )
    if args.mae:
        from alframe.embed import encoder_from_mae

        embedder = encoder_from_mae(args.mae)
        return _Source(
            EncoderFeatures(embedder),
            embedder.in_channels,
            (int(size[0]), int(size[1])) if size else (256, 256),
            NormalizationConfig(),
            f"MAE encoder features of {args.mae}",
        )
    return _Source(
        IntensityFeatures(),
        1,
        (int(size[0]), int(size[1])) if size else None,
        NormalizationConfig(),
        "multi-scale intensity features (no model)",
    )


def _to_tensor(image: np.ndarray, source: _Source) -> Any:
    """Raw 2-D image → normalised, resized (1, C, h, w) tensor."""
    import torch
    import torch.nn.functional as F

    from alframe.data.transforms import normalize_intensity

    data = normalize_intensity(_gray(image, source.in_channels), source.normalization)
    tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))[None].float()
    if source.image_size is not None and tuple(tensor.shape[-2:]) != source.image_size:
        tensor = F.interpolate(tensor, size=source.image_size, mode="bilinear", align_corners=False)
    return tensor


def _mask_tensor(mask: np.ndarray, values: list[int], size: tuple[int, int] | None) -> Any:
    import torch

    from alframe.pseudolabel.matching import resize_labels

    lut = {v: i for i, v in enumerate(values)}
    indices = np.vectorize(lut.__getitem__, otypes=[np.int64])(mask) if mask.size else mask
    tensor = torch.from_numpy(np.ascontiguousarray(indices))[None].long()
    return resize_labels(tensor, size) if size is not None else tensor


# ---------------------------------------------------------------------------------- command


def _ignore_value(requested: int | None, values: Sequence[int]) -> int:
    if requested is not None:
        if requested in values:
            raise ConfigError(f"--ignore-value {requested} is a class value of the references")
        return requested
    # The largest unused 8-bit value keeps 8-bit masks 8-bit; 16 bits only when all are taken.
    for candidate in (*range(255, -1, -1), *range(65535, 255, -1)):
        if candidate not in values:
            return candidate
    raise ConfigError("every 16-bit value is a class value; pass --ignore-value")


def cmd_pseudolabel(args: argparse.Namespace) -> int:
    """Handler of ``alframe pseudolabel`` (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from alframe.pseudolabel.rpg import RPGOptions, RPGPseudoLabeller

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ConfigError(
            f"--out {out} exists and is not empty; choose a new folder or --overwrite"
        )
    options = RPGOptions(
        top_k=args.top_k,
        temperature=args.temperature,
        max_per_class=args.max_per_class,
        filter_percentile=args.filter_percentile,
        spatial_weight=args.spatial_weight,
        match_stride=args.match_stride,
        backend=args.backend,
        seed=args.seed,
    )
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    targets = _list_folder(Path(args.images), "--images")
    references = _read_references(Path(args.references))
    ignore_value = _ignore_value(args.ignore_value, references.values)
    source = _feature_source(args)

    ref_images = [_to_tensor(image, source) for image in references.images]
    ref_masks = [
        _mask_tensor(mask, references.values, tuple(img.shape[-2:]))
        for mask, img in zip(references.masks, ref_images)
    ]
    labeller = RPGPseudoLabeller(
        source.features, len(references.values), options, batch_size=args.batch_size
    )
    labeller.fit(ref_images, ref_masks)
    assert labeller.bank is not None  # set by fit
    counts = labeller.bank.class_counts().tolist()

    value_lut = np.asarray([*references.values, ignore_value], dtype=np.int64)
    used = value_lut if args.filter_percentile else value_lut[:-1]
    mask_dtype = np.uint8 if used.max() <= 255 else np.uint16
    summary: list[dict[str, Any]] = []
    for path in tqdm(targets, desc="pseudo-labelling", unit="image", disable=args.no_progress):
        slices = _slices(path)
        labels_out: list[np.ndarray] = []
        confidence_out: list[np.ndarray] = []
        for start in range(0, len(slices), args.batch_size):
            chunk = slices[start : start + args.batch_size]
            # Equal-sized slices of one volume batch together; 2-D files are one slice.
            batch = torch.cat([_to_tensor(s, source) for s in chunk])
            pseudo = labeller.predict(batch)
            size = chunk[0].shape[:2]
            stacked = torch.stack([pseudo.labels.float(), pseudo.confidence], dim=1)
            if tuple(stacked.shape[-2:]) != tuple(size):
                stacked = F.interpolate(stacked, size=tuple(size), mode="nearest")
            labels = stacked[:, 0].round().long().cpu().numpy()
            labels_out.extend(value_lut[np.where(labels < 0, len(references.values), labels)])
            confidence_out.extend(stacked[:, 1].cpu().numpy().astype(np.float32))
        summary.append(
            _write_outputs(path, out, labels_out, confidence_out, mask_dtype)
            | {"mean_confidence": float(np.mean([c.mean() for c in confidence_out]))}
        )

    info = {
        "references": str(args.references),
        "images": str(args.images),
        "feature_source": source.description,
        "image_size": list(source.image_size) if source.image_size else None,
        "class_values": references.values,
        "reference_pixels_per_class": counts,
        "ignore_value": ignore_value if args.filter_percentile else None,
        "options": asdict(options),
        "outputs": summary,
    }
    _write_atomic(
        out / "pseudolabel.json", lambda p: p.write_text(json.dumps(info, indent=2), "utf-8")
    )
    print(
        f"pseudo-labelled {len(targets)} files from {len(references.images)} reference images "
        f"({source.description}); class values {references.values}"
    )
    if args.filter_percentile:
        print(f"filtered pixels have the mask value {ignore_value}")
    print(f"masks: {out / 'masks'}  confidence: {out / 'confidence'}")
    return 0


def _write_outputs(
    path: Path,
    out: Path,
    labels: list[np.ndarray],
    confidence: list[np.ndarray],
    mask_dtype: type[np.unsignedinteger[Any]],
) -> dict[str, Any]:
    stem = _stem(path)
    if _kind(path) == "nifti":
        import nibabel as nib

        _, reference = _read_volume(path)
        label_volume = np.stack(labels, axis=2).astype(mask_dtype)
        conf_volume = np.stack(confidence, axis=2).astype(np.float32)
        mask_path = out / "masks" / f"{stem}.nii.gz"
        conf_path = out / "confidence" / f"{stem}.nii.gz"
        affine = reference.affine
        # The temporary name keeps the .nii.gz ending, so nibabel compresses it.
        _write_atomic(mask_path, lambda p: nib.save(nib.Nifti1Image(label_volume, affine), str(p)))
        _write_atomic(conf_path, lambda p: nib.save(nib.Nifti1Image(conf_volume, affine), str(p)))
    else:
        import tifffile
        from PIL import Image

        is_tiff = path.name.lower().endswith((".tif", ".tiff"))
        mask_path = out / "masks" / f"{stem}{'.tif' if is_tiff else '.png'}"
        conf_path = out / "confidence" / f"{stem}.tif"
        mask = labels[0].astype(mask_dtype)
        if is_tiff:
            _write_atomic(mask_path, lambda p: tifffile.imwrite(str(p), mask))
        else:
            _write_atomic(mask_path, lambda p: Image.fromarray(mask).save(p, format="PNG"))
        _write_atomic(conf_path, lambda p: tifffile.imwrite(str(p), confidence[0]))
    return {"image": str(path), "mask": str(mask_path), "confidence": str(conf_path)}
