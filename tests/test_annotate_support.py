"""Shared helpers of the labelling-round tests (no tests here).

Includes an independent Label Studio brush RLE *encoder*, written from the format's description
(the rle-pack bit stream that label-studio-converter decodes): a 32-bit value count, 5 bits
word size - 1, four 4-bit run-length field sizes - 1, then chunks of [1 bit repeat flag, 2 bits
field selector, run length - 1 in that many bits, then one word (repeat) or run-length words
(literals)], MSB first, over the row-major RGBA image of the brush.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alframe.annotate import init_project, next_round, open_project
from alframe.config import Recipe, recipe_from_dict
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset

RLE_SIZES = (3, 4, 8, 16)


class _BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def write(self, value: int, count: int) -> None:
        assert 0 <= value < (1 << count), (value, count)
        self.bits.extend((value >> (count - 1 - k)) & 1 for k in range(count))

    def to_bytes(self) -> list[int]:
        padded = self.bits + [0] * (-len(self.bits) % 8)
        return [
            int("".join(str(b) for b in padded[i : i + 8]), 2) for i in range(0, len(padded), 8)
        ]


def _size_index(length: int) -> int:
    for index, size in enumerate(RLE_SIZES):
        if length - 1 < (1 << size):
            return index
    raise ValueError(length)


def encode_brush_rle(values: Sequence[int] | np.ndarray) -> list[int]:
    """Encode a flat array of bytes as Label Studio brush RLE."""
    data = [int(v) for v in np.asarray(values).ravel()]
    out = _BitWriter()
    out.write(len(data), 32)
    out.write(8 - 1, 5)
    for size in RLE_SIZES:
        out.write(size - 1, 4)
    limit = 1 << RLE_SIZES[-1]
    i = 0
    literals: list[int] = []

    def flush() -> None:
        while literals:
            chunk = literals[:limit]
            del literals[:limit]
            index = _size_index(len(chunk))
            out.write(0, 1)
            out.write(index, 2)
            out.write(len(chunk) - 1, RLE_SIZES[index])
            for word in chunk:
                out.write(word, 8)

    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i] and j - i < limit:
            j += 1
        if j - i >= 2:
            flush()
            index = _size_index(j - i)
            out.write(1, 1)
            out.write(index, 2)
            out.write(j - i - 1, RLE_SIZES[index])
            out.write(data[i], 8)
        else:
            literals.append(data[i])
        i = j
    flush()
    return out.to_bytes()


def brush_result(region: np.ndarray, label: str) -> dict[str, Any]:
    """A Label Studio brushlabels result painting ``region`` (bool H×W) with ``label``."""
    height, width = region.shape
    rgba = np.repeat((region.astype(np.uint8) * 255).ravel(), 4)
    return {
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": {"format": "rle", "rle": encode_brush_rle(rgba), "brushlabels": [label]},
    }


def polygon_result(points_percent: list[list[float]], label: str, h: int, w: int) -> dict[str, Any]:
    """A Label Studio polygonlabels result."""
    return {
        "type": "polygonlabels",
        "original_width": w,
        "original_height": h,
        "value": {"points": points_percent, "polygonlabels": [label]},
    }


def labelstudio_task(
    item_id: str | None, image: str, annotations: list[tuple[Any, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """One task of a Label Studio JSON export."""
    data: dict[str, Any] = {"image": image}
    if item_id is not None:
        data["alframe_id"] = item_id
    return {
        "id": abs(hash(image)) % 100000,
        "data": data,
        "annotations": [
            {"id": k + 1, "completed_by": who, "result": results, "was_cancelled": False}
            for k, (who, results) in enumerate(annotations)
        ],
    }


def synthetic_recipe(root: Path, n_images: int = 12) -> Recipe:
    """Tiny synthetic data (32², classes 0/255) and a 1-epoch, batch-2 recipe."""
    write_synthetic_dataset(root / "data", n_images=n_images, image_size=32, seed=3)
    raw = synthetic_recipe_dict(root / "data", image_size=32)
    raw["select"] = {"strategy": "random"}
    raw["train"].update(max_epochs=1, batch_size=2, progress=False)
    raw["tracking"] = {"enabled": False}
    raw["data"]["evaluate"] = {"target_test": {"dataset": "target", "split": "test"}}
    raw["output_dir"] = str(root / "runs")
    return recipe_from_dict(raw)


def make_project(
    root: Path,
    annotators: Sequence[str] = ("alice", "bob"),
    overlap: float = 0.5,
    budget: int = 4,
    n_images: int = 12,
) -> Path:
    """Data + project + one exported round; returns the project folder."""
    recipe = synthetic_recipe(root, n_images)
    project = root / "project"
    init_project(project, recipe, annotators=annotators, overlap=overlap)
    with open_project(project) as opened:
        next_round(opened, budget)
    return project


def truth_mask(project: Path, item: str) -> np.ndarray:
    """The synthetic ground truth (0/255) of an item."""
    with open_project(project, write=False) as opened:
        path = opened.samples()[item].mask_path
    assert path is not None
    return np.asarray(Image.open(path))


def assignments(project: Path) -> dict[str, list[str]]:
    """Item id → annotators (primary first) over all rounds."""
    with open_project(project, write=False) as opened:
        rows = opened.store.query(
            "SELECT id, annotator FROM assignments ORDER BY id, is_primary DESC"
        )
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["id"], []).append(row["annotator"])
    return out


def cases(project: Path) -> dict[str, str]:
    with open_project(project, write=False) as opened:
        return opened.case_of()


def write_mask_folder(
    project: Path, folder: Path, items: dict[str, list[str]], ignore_value: int | None = None
) -> Path:
    """Ground-truth masks in <folder>/<annotator>/<case>.png (optionally with an ignored band)."""
    names = cases(project)
    for item, annotators in items.items():
        mask = truth_mask(project, item).copy()
        if ignore_value is not None:
            mask[:4, :] = ignore_value
        for who in annotators:
            (folder / who).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / who / f"{names[item]}.png")
    return folder


def state_digest(project: Path) -> str:
    """sha256 over every file of the project (name and bytes), the lock file excepted."""
    digest = hashlib.sha256()
    for path in sorted(project.rglob("*")):
        if path.is_file() and path.name != ".lock":
            digest.update(path.relative_to(project).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project folder (the data stays shared: the recipe paths are relative)."""
    shutil.copytree(source, target)
    return target
