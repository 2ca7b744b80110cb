"""``alframe pseudolabel`` end to end on tiny synthetic folders, and its user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from alframe.cli.main import main
from alframe.data.synthetic import synthetic_image


def _write(folder: Path, n: int = 2, size: int = 48, flip: bool = False) -> list[np.ndarray]:
    """references-style folder (images/ + masks/); returns the masks as written."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    masks = []
    for i in range(n):
        image, mask = synthetic_image(rng, image_size=size)
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        Image.fromarray(np.ascontiguousarray(image)).save(folder / "images" / f"im{i}.png")
        Image.fromarray(np.ascontiguousarray(mask)).save(folder / "masks" / f"im{i}.png")
        masks.append(mask)
    return masks


def _run(*args: str) -> int:
    return main(["pseudolabel", *args, "--no-progress"])


def test_cli_png_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "refs")
    truth = _write(tmp_path / "new", flip=True)
    out = tmp_path / "out"
    code = _run(
        "--references", str(tmp_path / "refs"), "--images", str(tmp_path / "new" / "images"),
        "--out", str(out), "--max-per-class", "10000",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for i, expected in enumerate(truth):
        mask = np.asarray(Image.open(out / "masks" / f"im{i}.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.mean(mask == expected) > 0.99
        confidence = tifffile.imread(out / "confidence" / f"im{i}.tif")
        assert confidence.dtype == np.float32 and confidence.shape == mask.shape
    info = json.loads((out / "pseudolabel.json").read_text())
    assert info["class_values"] == [0, 255]
    assert "intensity" in info["feature_source"]


def test_cli_nifti_in_nifti_out(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(1)
    pairs = [synthetic_image(rng, image_size=32) for _ in range(2)]
    volume = np.stack([p[0] for p in pairs], axis=2).astype(np.int16)
    labels = np.stack([p[1] // 255 for p in pairs], axis=2).astype(np.uint8)
    for sub in ("refs/images", "refs/masks", "new"):
        (tmp_path / sub).mkdir(parents=True)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "refs/images/v.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "refs/masks/v.nii.gz"))
    nib.save(nib.Nifti1Image(volume[::-1], affine), str(tmp_path / "new/w.nii.gz"))
    out = tmp_path / "out"
    assert _run("--references", str(tmp_path / "refs"), "--images", str(tmp_path / "new"),
                "--out", str(out), "--top-k", "5") == 0  # fmt: skip
    result = nib.load(str(out / "masks" / "w.nii.gz"))
    data = np.asanyarray(result.dataobj)  # type: ignore[attr-defined]
    assert data.shape == labels.shape
    np.testing.assert_allclose(result.affine, affine)  # type: ignore[attr-defined]
    assert np.mean(data == labels[::-1]) > 0.97
    confidence = nib.load(str(out / "confidence" / "w.nii.gz"))
    assert confidence.get_fdata().shape == labels.shape  # type: ignore[attr-defined]


def _error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert _run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alframe: error:") and "\n" not in err
    return err


def test_cli_missing_masks_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "refs")
    _write(tmp_path / "new")
    for mask in (tmp_path / "refs" / "masks").iterdir():
        mask.unlink()
    (tmp_path / "refs" / "masks").rmdir()
    out = tmp_path / "out"
    err = _error(capsys, "--references", str(tmp_path / "refs"), "--images",
                 str(tmp_path / "new" / "images"), "--out", str(out))  # fmt: skip
    assert "masks/" in err
    assert not out.exists()


def test_cli_mismatched_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "refs")
    _write(tmp_path / "new")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "refs" / "masks" / "im1.png")
    out = tmp_path / "out"
    err = _error(capsys, "--references", str(tmp_path / "refs"), "--images",
                 str(tmp_path / "new" / "images"), "--out", str(out))  # fmt: skip
    assert "im1" in err and "size" in err
    assert not out.exists()


def test_cli_empty_images_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "refs")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    err = _error(capsys, "--references", str(tmp_path / "refs"), "--images",
                 str(tmp_path / "empty"), "--out", str(out))  # fmt: skip
    assert "no images" in err
    assert not out.exists()


def test_cli_refuses_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "refs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    err = _error(capsys, "--references", str(tmp_path / "refs"), "--images",
                 str(tmp_path / "refs" / "images"), "--out", str(out))  # fmt: skip
    assert "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "refs")
    out = tmp_path / "out"
    err = _error(capsys, "--references", str(tmp_path / "refs"), "--images",
                 str(tmp_path / "refs" / "images"), "--out", str(out),
                 "--checkpoint", str(tmp_path / "nope.ckpt"))  # fmt: skip
    assert "nope.ckpt" in err
    assert not out.exists()
