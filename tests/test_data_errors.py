"""Every data problem a user can cause is a one-line DataError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alframe.config import DatasetConfig, SplitConfig, recipe_from_dict
from alframe.data import Sample, discover_samples, read_image, read_mask, read_pair, split_samples
from alframe.errors import DataError

BINARY = {"background": 0, "foreground": 1}


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_image_without_mask(tmp_path: Path) -> None:
    _write(tmp_path / "ds" / "images" / "a.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "ds" / "images" / "b.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "ds" / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as err:
        discover_samples("ds", DatasetConfig(path="ds"), tmp_path)
    message = _one_line(err)
    assert f"{tmp_path / 'ds' / 'images' / 'b.png'} has no mask in {tmp_path / 'ds' / 'masks'}" in (
        message
    )
    assert "add masks/b.png or remove the image" in message


def test_size_mismatch(tmp_path: Path) -> None:
    image = _write(tmp_path / "images" / "a.png", np.zeros((8, 6), np.uint8))
    mask = _write(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as err:
        read_pair(Sample("d/a", "d", "a", image, mask), 1, BINARY, "binary")
    message = _one_line(err)
    assert str(image) in message and str(mask) in message
    assert "8×6" in message and "4×4" in message and "re-export it" in message


def test_unexpected_binary_values(tmp_path: Path) -> None:
    mask = _write(tmp_path / "m.png", np.array([[0, 1], [2, 255]], np.uint8))
    with pytest.raises(DataError) as err:
        read_mask(Sample("d/a", "d", "a", mask, mask), BINARY, "binary")
    message = _one_line(err)
    assert str(mask) in message
    assert "[0, 1, 2, 255]" in message and "{0, 1} or {0, 255}" in message
    assert "mask_format: instance" in message


def test_unexpected_semantic_values(tmp_path: Path) -> None:
    mask = _write(tmp_path / "m.png", np.array([[0, 1], [7, 9]], np.uint8))
    with pytest.raises(DataError) as err:
        read_mask(Sample("d/a", "d", "a", mask, mask), {"bg": 0, "a": 1}, "semantic")
    message = _one_line(err)
    assert "values [7, 9] that are not in data.classes" in message
    assert "values found: [0, 1, 7, 9]" in message and "add them to data.classes" in message


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage that is not an image" * 3)
    with pytest.raises(DataError) as err:
        read_image(Sample("d/broken", "d", "broken", path, None), 1)
    message = _one_line(err)
    assert f"cannot read {path}" in message and "re-export it or remove it" in message


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        discover_samples("ds", DatasetConfig(path="nowhere"), tmp_path)
    message = _one_line(err)
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    assert "fix data.datasets.ds.path" in message

    (tmp_path / "ds" / "imgs").mkdir(parents=True)
    with pytest.raises(DataError, match=r"did you mean imgs\?.*data.datasets.ds.images"):
        discover_samples("ds", DatasetConfig(path="ds"), tmp_path)

    (tmp_path / "ds" / "images").mkdir()
    (tmp_path / "ds" / "masks").mkdir()
    with pytest.raises(DataError) as err:
        discover_samples("ds", DatasetConfig(path="ds"), tmp_path)
    message = _one_line(err)
    assert f"no images (.png, .jpg, .jpeg, .tif, .tiff) in {tmp_path / 'ds' / 'images'}" in message
    assert "(it is empty)" in message and "put the images there" in message


def test_unknown_split_id(tmp_path: Path) -> None:
    csv_path = tmp_path / "splits.csv"
    csv_path.write_text("id,source_split\na,train\nghost,test\n", encoding="utf-8")
    samples = [Sample("d/a", "d", "a", tmp_path / "a.png", None)]
    with pytest.raises(DataError) as err:
        split_samples(samples, SplitConfig(kind="csv", csv="splits.csv"), tmp_path, seed=0)
    message = _one_line(err)
    assert str(csv_path) in message and "unknown split id 'ghost'" in message
    assert "not in data set 'd'" in message and "split.filter" in message


def test_csv_missing_column(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("name,part\na,train\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'id', 'source_split' \(columns: name, part\)"):
        split_samples([], SplitConfig(kind="csv", csv="s.csv"), tmp_path, seed=0)


def test_unlabelled_training_data_is_refused(tmp_path: Path) -> None:
    from alframe.data import SegmentationDataModule

    _write(tmp_path / "u" / "images" / "a.png", np.zeros((4, 4), np.uint8))
    recipe = recipe_from_dict(
        {
            "name": "t",
            "data": {
                "root": str(tmp_path),
                "datasets": {"u": {"path": "u", "masks": None}},
                "train": {"dataset": "u"},
            },
        }
    )
    with pytest.raises(DataError, match="1 training samples have no mask"):
        SegmentationDataModule(recipe).setup()


def test_corrupt_volume(tmp_path: Path) -> None:
    (tmp_path / "v" / "images").mkdir(parents=True)
    path = tmp_path / "v" / "images" / "bad.nii.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError) as err:
        discover_samples("ct", DatasetConfig(kind="nifti", path="v", masks=None), tmp_path)
    message = _one_line(err)
    assert f"cannot read volume {path}" in message and "not NIfTI" in message
