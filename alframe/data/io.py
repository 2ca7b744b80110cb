"""Reading images and masks of :class:`~alframe.data.samples.Sample` items as NumPy arrays.

Images come back as float32 ``(H, W, C)`` in the file's raw intensity range (normalisation is a
separate step, see :mod:`alframe.data.transforms`); masks as int64 ``(H, W)`` class indices
``0..K-1``. Every problem with a file is a one-line :class:`~alframe.errors.DataError` that names
the file and the fix.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from alframe.data.samples import NIFTI_EXTENSIONS, Sample
from alframe.errors import ConfigError, DataError

LUMINANCE_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights, the same as Pillow's ``convert("L")``."""

VOLUME_CACHE_SIZE = 4
"""Number of decoded NIfTI volumes kept in memory per process."""


def _detail(err: BaseException) -> str:
    # Library messages can span lines; user-facing errors are one line.
    text = " ".join(str(err).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _lossy_hint(path: Path | None) -> str:
    if path is not None and path.suffix.lower() in (".jpg", ".jpeg"):
        return " (JPEG compression changes label values: save masks as PNG or TIFF)"
    return ""


# --------------------------------------------------------------------------------------- volumes
class _VolumeCache:
    """A small LRU of decoded volumes, so reading all slices of a volume decodes it once.

    Slices are usually read volume by volume (samples are sorted by id), so a few entries suffice.
    DataLoader workers each hold their own cache.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> np.ndarray:
        stat = path.stat()
        # The modification time and size are part of the key so a rewritten file is re-read.
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        volume = _load_volume(path)
        with self._lock:
            self._items[key] = volume
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return volume

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_VOLUMES = _VolumeCache(VOLUME_CACHE_SIZE)


def clear_volume_cache() -> None:
    """Forget every cached NIfTI volume (e.g. after files were rewritten in place)."""
    _VOLUMES.clear()


def _as_3d(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) >= 3 and all(n == 1 for n in shape[3:]):
        return (shape[0], shape[1], shape[2])
    raise DataError(
        f"volume {path} has shape {tuple(shape)}; alframe reads 3-D volumes — save each channel "
        "or time point as its own file"
    )


def nifti_shape(path: Path) -> tuple[int, int, int]:
    """The 3-D shape of a NIfTI volume, read from its header only.

    Raises:
        DataError: the file is not a readable NIfTI file or is not 3-D.
    """
    import nibabel as nib

    try:
        header_shape = tuple(int(n) for n in nib.load(str(path)).shape)  # type: ignore[attr-defined]
    except Exception as err:
        raise DataError(
            f"cannot read volume {path} ({_detail(err)}); the file is corrupt or "
            "not NIfTI — re-export it or remove it"
        ) from None
    return _as_3d(header_shape, path)


def _load_volume(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        # asanyarray keeps the stored dtype (int16, uint8, ...) when there is no scaling, which is
        # 4-8x smaller in the cache than get_fdata()'s float64.
        data = np.asanyarray(image.dataobj)  # type: ignore[attr-defined]
    except Exception as err:
        raise DataError(
            f"cannot read volume {path} ({_detail(err)}); the file is corrupt or "
            "not NIfTI — re-export it or remove it"
        ) from None
    return data.reshape(_as_3d(data.shape, path))


def _read_slice(path: Path, index: int, axis: int) -> np.ndarray:
    volume = _VOLUMES.get(path)
    if not 0 <= index < volume.shape[axis]:
        raise DataError(
            f"volume {path} has {volume.shape[axis]} slices along axis {axis}, slice {index} was "
            "asked for; the file changed since the samples were listed — list them again"
        )
    return np.take(volume, index, axis=axis)


# ----------------------------------------------------------------------------------- 2-D files
def _is_nifti(path: Path) -> bool:
    lower = path.name.lower()
    return any(lower.endswith(ext) for ext in NIFTI_EXTENSIONS)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    data = np.asarray(tifffile.imread(str(path)))
    data = np.squeeze(data)
    # Channel-first TIFFs (C, H, W) are common from microscopy tools; move channels last.
    if data.ndim == 3 and data.shape[0] in (2, 3, 4) and data.shape[2] > 4:
        data = np.moveaxis(data, 0, -1)
    return data


def _read_pillow(path: Path, keep_palette: bool) -> np.ndarray:
    with Image.open(path) as opened:
        opened.load()
        image: Image.Image = opened
        mode = image.mode
        if mode == "P" and keep_palette:
            # Palette PNG masks store class indices; the palette only colours them.
            return np.asarray(image)
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        elif mode == "PA":
            image = image.convert("RGBA")
        return np.asarray(image)


def read_array(path: Path, keep_palette: bool = False) -> np.ndarray:
    """Read a 2-D image file (PNG, JPEG, TIFF) as stored: ``(H, W)`` or ``(H, W, C)``.

    Args:
        path: the file.
        keep_palette: return palette indices of palette PNGs instead of their colours (masks).

    Raises:
        DataError: the file is missing, corrupt or has an unsupported layout.
    """
    if not path.is_file():
        raise DataError(
            f"file {path} does not exist; it was moved or deleted — list the data again"
        )
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            data = _read_tiff(path)
        else:
            data = _read_pillow(path, keep_palette)
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"cannot read {path} ({_detail(err)}); the file is corrupt or not a "
            "PNG/JPEG/TIFF image — re-export it or remove it"
        ) from None
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (2, 3, 4)):
        raise DataError(
            f"{path} has shape {data.shape}; expected a 2-D image (H, W) or (H, W, C) with C in "
            "1-4 — save it as a single 2-D image"
        )
    return data


def _raw_image(sample: Sample) -> np.ndarray:
    if sample.slice_index is not None or _is_nifti(sample.image_path):
        return _read_slice(sample.image_path, sample.slice_index or 0, sample.axis)
    return read_array(sample.image_path)


def read_image(sample: Sample, in_channels: int) -> np.ndarray:
    """Read a sample's image with ``in_channels`` channels, keeping the raw intensities.

    Grayscale images get one channel (or are replicated to three); RGB images are converted to
    gray with the BT.601 luminance weights when ``in_channels`` is 1; alpha channels are dropped;
    16-bit and float data keep their values.

    Args:
        sample: the item to read.
        in_channels: 1 or 3.

    Returns:
        float32 array of shape (H, W, in_channels).

    Raises:
        DataError: the file cannot be read or has an unsupported layout.
        ConfigError: ``in_channels`` is not 1 or 3.
    """
    if in_channels not in (1, 3):
        raise ConfigError(f"data.in_channels = {in_channels}: expected 1 or 3")
    data = _raw_image(sample).astype(np.float32, copy=False)
    if data.ndim == 3:
        if data.shape[2] == 2:  # gray + alpha
            data = data[:, :, 0]
        else:
            rgb = data[:, :, :3]
            if in_channels == 3:
                return np.ascontiguousarray(rgb)
            weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)
            return np.ascontiguousarray(rgb @ weights)[:, :, None]
    gray = data[:, :, None]
    if in_channels == 3:
        gray = np.repeat(gray, 3, axis=2)
    return np.ascontiguousarray(gray)


# -------------------------------------------------------------------------------------- masks
def _raw_mask(sample: Sample) -> np.ndarray:
    if sample.mask_path is None:
        raise DataError(
            f"sample {sample.id} has no mask; it comes from an unlabelled data set — use a "
            "labelled data set (data.datasets.<name>.masks) for training"
        )
    path = sample.mask_path
    if sample.slice_index is not None or _is_nifti(path):
        data = _read_slice(path, sample.slice_index or 0, sample.axis)
    else:
        data = read_array(path, keep_palette=True)
    data = single_channel_mask(data, path)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise DataError(
                f"mask {path} has non-integer values; masks must hold integer class values — "
                "re-export it as an integer image"
            )
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind not in "iu":
        raise DataError(f"mask {path} has unsupported data type {data.dtype}; use integer masks")
    return data


def _found(values: np.ndarray, limit: int = 10) -> str:
    shown = [int(v) if float(v).is_integer() else float(v) for v in values[:limit]]
    more = f" … ({len(values)} values)" if len(values) > limit else ""
    return f"{shown}{more}"


def _check_two_classes(classes: dict[str, int], mask_format: str) -> None:
    if len(classes) != 2:
        raise ConfigError(
            f"mask_format '{mask_format}' gives 2 classes (background, foreground) but data.classes "
            f"has {len(classes)} ({', '.join(classes)}); use mask_format: semantic or list 2 classes"
        )


def single_channel_mask(data: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """A mask array as (H, W): colour masks are accepted only when they are gray in disguise
    (R = G = B; alpha ignored).

    Raises:
        DataError: a colour mask whose channels differ.
    """
    if data.ndim != 3:
        return data
    colour = data[:, :, :3] if data.shape[2] >= 3 else data[:, :, :1]
    if not np.all(colour == colour[:, :, :1]):
        raise DataError(
            f"mask {path} is a colour image with different R, G, B values; save masks as "
            "single-channel images of class values (e.g. 8-bit grayscale or palette PNG)"
        )
    return colour[:, :, 0]


def read_mask(sample: Sample, classes: dict[str, int], mask_format: str) -> np.ndarray:
    """Read a sample's mask as class indices.

    ``binary`` accepts values in {0, 1} or {0, 255} (foreground → 1) and needs exactly two
    classes; ``semantic`` maps the value of each class to its position in ``classes`` (dict
    order, background first); ``instance`` accepts any non-negative ids and maps every id > 0 to
    foreground (1).

    Args:
        sample: the item to read (must have a mask).
        classes: ``data.classes``, class name → mask value.
        mask_format: ``"binary"``, ``"semantic"`` or ``"instance"``.

    Returns:
        int64 array of shape (H, W) with values in 0..len(classes)-1.

    Raises:
        DataError: the mask cannot be read or holds values the format does not allow.
        ConfigError: ``mask_format`` and ``classes`` do not fit together.
    """
    data = _raw_mask(sample)
    path = sample.mask_path
    if mask_format == "binary":
        _check_two_classes(classes, mask_format)
        high = data.max(initial=0)
        low = data.min(initial=0)
        if low >= 0 and high <= 1:
            return data.astype(np.int64)
        if low >= 0 and high == 255 and not np.any((data != 0) & (data != 255)):
            return (data == 255).astype(np.int64)
        values = np.unique(data)
        hint = (
            "use mask_format: instance (ids > 0 become foreground)"
            if values.min() >= 0
            else "fix the mask"
        )
        if len(values) > 2 and values.min() >= 0 and len(values) <= 16:
            hint += " or mask_format: semantic with these values in data.classes"
        raise DataError(
            f"mask {path} has values {_found(values)} but mask_format 'binary' allows {{0, 1}} or "
            f"{{0, 255}}; {hint}{_lossy_hint(path)}"
        )
    if mask_format == "instance":
        _check_two_classes(classes, mask_format)
        if data.min(initial=0) < 0:
            values = np.unique(data)
            raise DataError(
                f"mask {path} has negative values {_found(values[values < 0])}; instance masks "
                "hold ids >= 0 (0 = background) — fix the mask"
            )
        return (data > 0).astype(np.int64)
    if mask_format == "semantic":
        class_values = np.asarray(list(classes.values()), dtype=np.int64)
        # A lookup table makes the mapping one O(H*W) gather; class values are small ints.
        lut = np.full(int(class_values.max()) + 1, -1, dtype=np.int64)
        lut[class_values] = np.arange(len(class_values))
        low, high = data.min(initial=0), data.max(initial=0)
        if low >= 0 and high < len(lut):
            out = lut[data.astype(np.int64, copy=False)]
            if out.min(initial=0) >= 0:
                return out
        values = np.unique(data)
        unknown = values[~np.isin(values, class_values)]
        raise DataError(
            f"mask {path} has values {_found(unknown)} that are not in data.classes "
            f"{dict(classes)} (values found: {_found(values)}); add them to data.classes or fix "
            f"the mask{_lossy_hint(path)}"
        )
    raise ConfigError(f"mask_format = {mask_format!r}: expected binary, semantic or instance")


def read_pair(
    sample: Sample, in_channels: int, classes: dict[str, int], mask_format: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image and (when labelled) its mask, checking that their sizes agree.

    Returns:
        The image, float32 (H, W, C), and the mask, int64 (H, W), or ``None`` when unlabelled.

    Raises:
        DataError: a file cannot be read, or the image and mask sizes differ.
    """
    image = read_image(sample, in_channels)
    if sample.mask_path is None:
        return image, None
    mask = read_mask(sample, classes, mask_format)
    if mask.shape != image.shape[:2]:
        where = f" (slice {sample.slice_index})" if sample.slice_index is not None else ""
        raise DataError(
            f"image {sample.image_path}{where} is {image.shape[0]}×{image.shape[1]} (H×W) but its "
            f"mask {sample.mask_path} is {mask.shape[0]}×{mask.shape[1]}; the mask must have the "
            "image's size — re-export it"
        )
    return image, mask


def validate_samples(
    samples: list[Sample], in_channels: int, classes: dict[str, int], mask_format: str
) -> list[str]:
    """Read every sample once and collect the problems (for a ``check`` command or a report).

    Args:
        samples: the items to check.
        in_channels: ``data.in_channels``.
        classes: ``data.classes``.
        mask_format: the data set's ``mask_format``.

    Returns:
        One message per broken sample (empty when everything is readable and consistent).
    """
    problems: list[str] = []
    for sample in samples:
        try:
            read_pair(sample, in_channels, classes, mask_format)
        except (DataError, ConfigError) as err:
            problems.append(str(err))
    return problems
