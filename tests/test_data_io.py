"""Reading images and masks: formats, channels, bit depths, mask formats, NIfTI slices."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from alframe.config import DatasetConfig
from alframe.data import Sample, discover_samples, read_image, read_mask, read_pair
from alframe.data import io as data_io
from alframe.errors import ConfigError, DataError

BINARY = {"background": 0, "foreground": 1}


def _sample(image: Path, mask: Path | None = None) -> Sample:
    return Sample(f"d/{image.stem}", "d", image.stem, image, mask)


def _gray(seed: int = 0, shape: tuple[int, int] = (12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".TIFF"])
def test_gray_lossless_formats_keep_values(tmp_path: Path, suffix: str) -> None:
    array = _gray()
    path = tmp_path / f"a{suffix}"
    if suffix.lower().startswith(".tif"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    image = read_image(_sample(path), in_channels=1)
    assert image.dtype == np.float32
    assert image.shape == (12, 10, 1)
    np.testing.assert_array_equal(image[:, :, 0], array.astype(np.float32))
    three = read_image(_sample(path), in_channels=3)
    assert three.shape == (12, 10, 3)
    np.testing.assert_array_equal(three[:, :, 2], array.astype(np.float32))


def test_gray_jpeg_is_read_close_to_original(tmp_path: Path) -> None:
    array = np.full((16, 16), 120, dtype=np.uint8)
    path = tmp_path / "a.JPG"
    Image.fromarray(array).save(path, format="JPEG", quality=95)
    image = read_image(_sample(path), in_channels=1)
    assert image.shape == (16, 16, 1)
    assert np.abs(image - 120).max() <= 2


def test_rgb_to_gray_uses_luminance_weights(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    gray = read_image(_sample(path), in_channels=1)
    expected = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert gray.shape == (8, 9, 1)
    np.testing.assert_allclose(gray[:, :, 0], expected, rtol=1e-6)
    colour = read_image(_sample(path), in_channels=3)
    np.testing.assert_array_equal(colour, rgb.astype(np.float32))


def test_rgba_drops_alpha_and_rgb_tiff_channel_first(tmp_path: Path) -> None:
    rgba = np.random.default_rng(2).integers(0, 256, size=(8, 9, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(read_image(_sample(path), 3), rgba[:, :, :3].astype(np.float32))
    tif = tmp_path / "chw.tif"
    tifffile.imwrite(tif, np.moveaxis(rgba[:, :, :3], -1, 0), photometric="minisblack")
    np.testing.assert_array_equal(read_image(_sample(tif), 3), rgba[:, :, :3].astype(np.float32))


def test_16bit_values_are_kept(tmp_path: Path) -> None:
    array = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    png, tif = tmp_path / "a.png", tmp_path / "b.tif"
    Image.fromarray(array).save(png)
    tifffile.imwrite(tif, array)
    for path in (png, tif):
        image = read_image(_sample(path), 1)
        np.testing.assert_array_equal(image[:, :, 0], array.astype(np.float32))


@pytest.mark.parametrize("fg", [1, 255])
def test_binary_masks(tmp_path: Path, fg: int) -> None:
    mask = np.zeros((6, 7), dtype=np.uint8)
    mask[2:4, 1:5] = fg
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    out = read_mask(_sample(tmp_path / "i.png", path), BINARY, "binary")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, (mask > 0).astype(np.int64))


def test_semantic_mask_maps_values_to_class_positions(tmp_path: Path) -> None:
    classes = {"background": 0, "heart": 200, "lung": 100}
    mask = np.array([[0, 100, 200], [200, 100, 0]], dtype=np.uint8)
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    out = read_mask(_sample(tmp_path / "i.png", path), classes, "semantic")
    np.testing.assert_array_equal(out, np.array([[0, 2, 1], [1, 2, 0]]))


def test_semantic_palette_png_uses_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    path = tmp_path / "m.png"
    image.save(path)
    classes = {"background": 0, "a": 1, "b": 2}
    np.testing.assert_array_equal(read_mask(_sample(path, path), classes, "semantic"), indices)


def test_instance_mask_becomes_foreground(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2], [300, 0, 7]], dtype=np.uint16)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, ids)
    out = read_mask(_sample(path, path), BINARY, "instance")
    np.testing.assert_array_equal(out, (ids > 0).astype(np.int64))


def test_gray_rgb_mask_is_accepted(tmp_path: Path) -> None:
    mask = np.zeros((4, 4, 3), dtype=np.uint8)
    mask[1:3, 1:3] = 255
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    assert read_mask(_sample(path, path), BINARY, "binary").sum() == 4


def test_binary_needs_two_classes(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    with pytest.raises(ConfigError, match="mask_format: semantic"):
        read_mask(_sample(path, path), {"a": 0, "b": 1, "c": 2}, "binary")


def _write_volume(path: Path, array: np.ndarray) -> None:
    nib.Nifti1Image(array, np.eye(4)).to_filename(str(path))


def test_nifti_volume_gives_one_sample_per_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    (tmp_path / "vol" / "images").mkdir(parents=True)
    (tmp_path / "vol" / "masks").mkdir()
    volumes = {}
    for name, depth in (("case_b", 3), ("case_a", 2)):
        image = rng.integers(-1000, 2000, size=(8, 6, depth)).astype(np.int16)
        mask = (rng.random((8, 6, depth)) > 0.5).astype(np.uint8)
        _write_volume(tmp_path / "vol" / "images" / f"{name}.nii.gz", image)
        _write_volume(tmp_path / "vol" / "masks" / f"{name}.nii.gz", mask)
        volumes[name] = (image, mask)
    cfg = DatasetConfig(kind="nifti", path="vol")
    samples = discover_samples("ct", cfg, tmp_path)
    assert [s.id for s in samples] == [
        "ct/case_a:0000",
        "ct/case_a:0001",
        "ct/case_b:0000",
        "ct/case_b:0001",
        "ct/case_b:0002",
    ]
    assert [s.group for s in samples] == ["case_a"] * 2 + ["case_b"] * 3
    data_io.clear_volume_cache()
    for sample in samples:
        image, mask = read_pair(sample, 1, BINARY, "binary")
        ref_image, ref_mask = volumes[sample.group]
        assert sample.slice_index is not None
        np.testing.assert_array_equal(image[:, :, 0], ref_image[:, :, sample.slice_index])
        assert mask is not None
        np.testing.assert_array_equal(mask, ref_mask[:, :, sample.slice_index])


def test_nifti_axis_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vol" / "images").mkdir(parents=True)
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    _write_volume(tmp_path / "vol" / "images" / "v.nii", volume)
    samples = discover_samples(
        "ct", DatasetConfig(kind="nifti", path="vol", masks=None, axis=0), tmp_path
    )
    assert len(samples) == 4 and all(s.mask_path is None for s in samples)
    data_io.clear_volume_cache()
    loads: list[Path] = []
    original = data_io._load_volume

    def counting(path: Path) -> np.ndarray:
        loads.append(path)
        return original(path)

    monkeypatch.setattr(data_io, "_load_volume", counting)
    for sample in samples:
        image = read_image(sample, 1)
        assert sample.slice_index is not None
        np.testing.assert_array_equal(image[:, :, 0], volume[sample.slice_index])
    assert len(loads) == 1  # the volume was decoded once for all four slices


def test_unlabelled_pair_has_no_mask(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_gray()).save(path)
    image, mask = read_pair(_sample(path), 1, BINARY, "binary")
    assert image.shape == (12, 10, 1) and mask is None


def test_validate_samples_collects_problems(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(_gray()).save(good)
    bad.write_bytes(b"not an image")
    problems = data_io.validate_samples([_sample(good), _sample(bad)], 1, BINARY, "binary")
    assert len(problems) == 1 and "bad.png" in problems[0]
    with pytest.raises(DataError):
        read_image(_sample(bad), 1)
