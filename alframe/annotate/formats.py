"""Mask formats of imports: PNG / TIFF / NIfTI files, Label Studio brush RLE and polygons.

Everything here is pure (arrays in, arrays out) so that it is tested without a project. Labels are
returned as uint8 class indices ``0..K-1`` with :data:`STORED_IGNORE` (255) for unlabelled pixels,
the form the project stores.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from alframe.annotate.project import STORED_IGNORE
from alframe.errors import DataError

MASK_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".nii.gz", ".nii")
"""File endings accepted as mask files (case-insensitive; ``.nii.gz`` before ``.nii``)."""

IGNORE_LABEL_NAMES: frozenset[str] = frozenset({"ignore", "unlabelled", "unlabeled"})
"""Label Studio label names (case-insensitive) that mark pixels as unlabelled."""


def mask_extension(path: Path) -> str | None:
    """The mask extension of a file name (lower case), or None when it is not a mask file."""
    lower = path.name.lower()
    for ext in MASK_EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    return None


def strip_mask_extension(name: str) -> str:
    """A file name without its mask extension."""
    ext = mask_extension(Path(name))
    return name[: -len(ext)] if ext else name


# ------------------------------------------------------------------------------ mask files
def _read_nifti_2d(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]
    except Exception as err:
        raise DataError(
            f"mask {path.name} cannot be read as NIfTI ({type(err).__name__}); re-export it "
            "as a 2-D NIfTI, PNG or TIFF mask"
        ) from None
    squeezed = data.reshape([n for n in data.shape if n != 1] or [1])
    if squeezed.ndim != 2:
        raise DataError(
            f"mask {path.name} is a NIfTI array of shape {tuple(data.shape)}; each item is one "
            "2-D slice — save one 2-D mask per item (shape H×W or H×W×1)"
        )
    return np.asarray(squeezed)


def _refuse_multi_page_tiff(path: Path) -> None:
    """A TIFF with several pages is a stack (slices, time points); refuse it rather than
    importing whatever one page holds."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tiff:
            pages = len(tiff.pages)
    except Exception:  # unreadable: read_array names the problem
        return
    if pages > 1:
        raise DataError(
            f"mask {path.name} is a multi-page TIFF ({pages} pages); each item is one 2-D "
            "slice — save one single-page mask per item"
        )


def read_mask_file(path: Path) -> np.ndarray:
    """Read a mask file as stored: a 2-D integer array.

    Raises:
        DataError: unreadable file, colour image, non-integer values, not 2-D, or a TIFF of
            several pages.
    """
    from alframe.data.io import read_array, single_channel_mask

    ext = mask_extension(path)
    if ext in (".nii", ".nii.gz"):
        data = _read_nifti_2d(path)
    elif ext is None:
        raise DataError(
            f"{path.name}: not a mask file; masks must be PNG, TIFF or NIfTI "
            f"({', '.join(MASK_EXTENSIONS)}); JPEG is lossy and changes label values"
        )
    else:
        if ext in (".tif", ".tiff"):
            _refuse_multi_page_tiff(path)
        data = read_array(path, keep_palette=True)
    data = single_channel_mask(data, path.name)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise DataError(
                f"mask {path.name} has non-integer values; masks hold integer class values — "
                "re-export it as an integer image"
            )
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iu":
        raise DataError(f"mask {path.name} has data type {data.dtype}; save an integer mask")
    return np.asarray(data)


def _shown(values: np.ndarray, limit: int = 8) -> str:
    items = [int(v) for v in values[:limit]]
    return str(items) + (f" … ({len(values)} values)" if len(values) > limit else "")


def to_class_indices(
    data: np.ndarray, class_values: Sequence[int], ignore_value: int, where: str
) -> np.ndarray:
    """Map a mask's values to stored class indices.

    A mask holds either the class *values* of ``data.classes`` (e.g. 0 / 255) or the class
    *indices* 0..K-1, never a mix; ``ignore_value`` (and -1) mark unlabelled pixels.

    Args:
        data: (H, W) integer mask as read.
        class_values: the values of ``data.classes`` in class order.
        ignore_value: the project's value for unlabelled pixels.
        where: the file (or task) named in errors.

    Returns:
        (H, W) uint8 class indices, :data:`STORED_IGNORE` where unlabelled.

    Raises:
        DataError: values outside both conventions (or a mix of them).
    """
    values = np.unique(data)
    ignore = np.isin(values, [ignore_value, -1])
    labelled_values = values[~ignore]
    k = len(class_values)
    as_values = np.isin(labelled_values, class_values)
    as_indices = (labelled_values >= 0) & (labelled_values < k)
    out = np.full(data.shape, STORED_IGNORE, dtype=np.uint8)
    if as_values.all():
        for index, value in enumerate(class_values):
            out[data == value] = index
    elif as_indices.all():
        for index in range(k):
            out[data == index] = index
    else:
        bad = labelled_values[~(as_values | as_indices)]
        if bad.size:
            problem = (
                f"values {_shown(bad)} are neither class values {list(class_values)} nor class "
                f"indices 0..{k - 1}"
            )
        else:
            problem = (
                f"it mixes class values {list(class_values)} and class indices 0..{k - 1}; use "
                "one convention per mask"
            )
        raise DataError(
            f"{where}: {problem} (unlabelled pixels: {ignore_value}); fix the mask or the "
            "project's classes"
        )
    return out


# ----------------------------------------------------------------------- stored label files
def label_sha256(labels: np.ndarray) -> str:
    """Hash of a stored label array's content (shape and values), independent of PNG encoding."""
    digest = hashlib.sha256(b"alframe.label/1")
    digest.update(np.asarray(labels.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def encode_label_png(labels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) label array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def read_label_png(path: Path) -> np.ndarray:
    """A stored label file as uint8 (H, W) (class indices, 255 = unlabelled)."""
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.uint8)


# ------------------------------------------------------------------------ Label Studio brush
class _BitReader:
    """MSB-first bit reader over bytes."""

    def __init__(self, data: np.ndarray) -> None:
        self.bits = np.unpackbits(data.astype(np.uint8))
        self.pos = 0

    def read(self, count: int) -> int:
        end = self.pos + count
        if end > self.bits.size:
            raise EOFError
        chunk = self.bits[self.pos : end].astype(np.int64)
        self.pos = end
        weights = np.left_shift(np.int64(1), np.arange(count - 1, -1, -1, dtype=np.int64))
        return int(chunk @ weights)

    def read_words(self, count: int, size: int) -> np.ndarray:
        end = self.pos + count * size
        if end > self.bits.size:
            raise EOFError
        chunk = self.bits[self.pos : end].astype(np.int64).reshape(count, size)
        self.pos = end
        weights = np.left_shift(np.int64(1), np.arange(size - 1, -1, -1, dtype=np.int64))
        return chunk @ weights


def decode_brush_rle(
    rle: Sequence[int], where: str = "brush", image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode Label Studio's brush RLE (the rle-pack bit stream) to its flat value array.

    The stream: 32 bits value count, 5 bits word size - 1, four 4-bit run-length field sizes - 1,
    then chunks of (1 bit repeat flag, 2 bits field selector, run length - 1, then one word for a
    repeat or run-length words of literals). Label Studio encodes the RGBA image of the brush,
    flattened row by row.

    The declared count is checked before anything is allocated: against ``image_size`` when
    given, and always against the most values the stream's bits can describe, so a damaged or
    hostile header (e.g. 2³²−1 values) costs nothing.

    Args:
        rle: the ``value.rle`` list of byte values.
        where: named in errors.
        image_size: (H, W) of the image the brush belongs to (it needs H·W·4 values).

    Returns:
        (count,) int64 values.

    Raises:
        DataError: the list is not bytes, the declared count does not fit the image or the
            stream, or the stream is truncated / inconsistent.
    """
    array = np.asarray(rle)
    if array.ndim != 1 or array.size < 7 or array.dtype.kind not in "iu":
        raise DataError(
            f"{where}: value.rle must be a list of byte values (Label Studio brush RLE); "
            "re-export the annotations as JSON"
        )
    if array.min() < 0 or array.max() > 255:
        raise DataError(f"{where}: value.rle holds values outside 0..255; re-export the JSON")
    reader = _BitReader(array)
    try:
        count = reader.read(32)
        word = reader.read(5) + 1
        sizes = [reader.read(4) + 1 for _ in range(4)]
        if image_size is not None and count != image_size[0] * image_size[1] * 4:
            raise DataError(
                f"{where}: the brush RLE holds {count} values but a {image_size[0]}×"
                f"{image_size[1]} RGBA image has {image_size[0] * image_size[1] * 4}; the "
                "annotation does not belong to this image"
            )
        # Every chunk spends at least 1 + 2 + 1 bits and yields at most 2**max(sizes) values.
        most = (reader.bits.size - reader.pos) // 4 * (1 << max(sizes))
        if count > most:
            raise EOFError
        out = np.zeros(count, dtype=np.int64)
        i = 0
        while i < count:
            repeat = reader.read(1)
            j = i + 1 + reader.read(sizes[reader.read(2)])
            if j > count:
                raise EOFError
            if repeat:
                out[i:j] = reader.read(word)
            else:
                out[i:j] = reader.read_words(j - i, word)
            i = j
    except EOFError:
        raise DataError(
            f"{where}: the brush RLE is truncated or damaged; re-export the annotations from "
            "Label Studio (JSON)"
        ) from None
    return out


def brush_mask(rle: Sequence[int], height: int, width: int, where: str) -> np.ndarray:
    """The (H, W) bool region of a brush result (the alpha channel of the decoded RGBA)."""
    flat = decode_brush_rle(rle, where, image_size=(height, width))
    return flat.reshape(height, width, 4)[:, :, 3] > 127


def polygon_mask(points: Any, height: int, width: int, where: str) -> np.ndarray:
    """The (H, W) bool region of a polygon result (points in percent of width / height)."""
    try:
        xy = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        xy = np.zeros((0,))
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] < 3 or not np.all(np.isfinite(xy)):
        raise DataError(
            f"{where}: a polygon needs at least 3 [x, y] points in percent; fix or delete it in "
            "Label Studio and export again"
        )
    if xy.min() < -1e-6 or xy.max() > 100 + 1e-6:
        raise DataError(
            f"{where}: polygon points lie outside the image (percent coordinates must be within "
            "0..100); fix the polygon in Label Studio and export again"
        )
    canvas = Image.new("L", (width, height), 0)
    pixels = [(x * width / 100.0, y * height / 100.0) for x, y in xy]
    ImageDraw.Draw(canvas).polygon(pixels, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def labelstudio_labels(
    results: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    class_index: Callable[[str, str], int],
    unpainted: int,
    where: str,
) -> np.ndarray:
    """Paint Label Studio results (brush and polygon regions) into stored class indices.

    Regions are painted in the order given, so later regions win where they overlap.

    Args:
        results: the ``result`` list of one annotation.
        height: image height in pixels.
        width: image width in pixels.
        class_index: label name, where → class index (or :data:`STORED_IGNORE`); raises
            DataError for unknown names.
        unpainted: class index of pixels no region covers (0 or :data:`STORED_IGNORE`).
        where: names the task / annotation in errors.

    Returns:
        (H, W) uint8 labels.

    Raises:
        DataError: unsupported result type, bad geometry, unknown label or wrong image size.
    """
    labels = np.full((height, width), unpainted, dtype=np.uint8)
    for k, result in enumerate(results):
        here = f"{where}, result {k + 1}"
        if not isinstance(result, Mapping):
            raise DataError(f"{here}: expected a JSON object; re-export the annotations as JSON")
        kind = str(result.get("type", ""))
        value = result.get("value")
        if not isinstance(value, Mapping):
            raise DataError(f"{here}: the result has no 'value'; re-export the annotations")
        size = (result.get("original_height"), result.get("original_width"))
        if size != (None, None) and size != (height, width):
            raise DataError(
                f"{here}: the annotation was made on a {size[0]}×{size[1]} image but the item is "
                f"{height}×{width}; it belongs to another image"
            )
        if kind == "brushlabels":
            if value.get("format", "rle") != "rle" or "rle" not in value:
                raise DataError(
                    f"{here}: brush format {value.get('format')!r} is not supported; export the "
                    "annotations as Label Studio JSON (brush RLE)"
                )
            region = brush_mask(value["rle"], height, width, here)
            names = value.get("brushlabels")
        elif kind == "polygonlabels":
            region = polygon_mask(value.get("points"), height, width, here)
            names = value.get("polygonlabels")
        else:
            raise DataError(
                f"{here}: result type {kind!r} is not a segmentation region; use brush or "
                "polygon labels"
            )
        if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
            raise DataError(
                f"{here}: a region needs exactly one label name; fix it in Label Studio"
            )
        labels[region] = class_index(names[0], here)
    return labels
