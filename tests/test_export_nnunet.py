"""`alframe export nnunet`: an nnU-Net v2 raw data set of the labelled items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_annotate_support import assignments, cases, make_project, truth_mask, write_mask_folder

from alframe.annotate import import_labels, open_project
from alframe.cli.main import main
from alframe.errors import ConfigError, StateError
from alframe.export import export_nnunet


@pytest.fixture(scope="module")
def labelled_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nnunet")
    project = make_project(root, annotators=("solo",), overlap=0.0, budget=4)
    items = sorted(assignments(project))
    # Three labelled (one with an unlabelled band), one left pending.
    write_mask_folder(project, root / "m1", {i: ["solo"] for i in items[:2]})
    write_mask_folder(project, root / "m2", {items[2]: ["solo"]}, ignore_value=254)
    with open_project(project) as opened:
        import_labels(opened, root / "m1")
        import_labels(opened, root / "m2")
    return project


def test_png_dataset_layout_and_content(labelled_project: Path, tmp_path: Path) -> None:
    assert (
        main(["export", "nnunet", str(labelled_project), str(tmp_path), "--dataset-id", "7"]) == 0
    )
    folder = tmp_path / "Dataset007_synthetic_demo"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "gray"}
    assert dataset["labels"] == {"background": 0, "foreground": 1, "ignore": 2}
    assert dataset["numTraining"] == 3 and dataset["file_ending"] == ".png"
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert len(images) == len(labels) == 3
    assert [n.replace("_0000.png", ".png") for n in images] == labels
    names = cases(labelled_project)
    items = sorted(assignments(labelled_project))
    with open_project(labelled_project, write=False) as opened:
        source_image = np.asarray(Image.open(opened.samples()[items[0]].image_path))
    exported = np.asarray(Image.open(folder / "imagesTr" / f"{names[items[0]]}_0000.png"))
    np.testing.assert_array_equal(exported, source_image)
    label = np.asarray(Image.open(folder / "labelsTr" / f"{names[items[0]]}.png"))
    np.testing.assert_array_equal(
        label, (truth_mask(labelled_project, items[0]) > 0).astype(np.uint8)
    )
    banded = np.asarray(Image.open(folder / "labelsTr" / f"{names[items[2]]}.png"))
    assert (banded[:4] == 2).all() and set(np.unique(banded[4:])) <= {0, 1}
    assert not list(tmp_path.glob(".*partial*"))


def test_nifti_format_and_overwrite(labelled_project: Path, tmp_path: Path) -> None:
    import nibabel as nib

    with open_project(labelled_project, write=False) as opened:
        result = export_nnunet(opened, tmp_path / "Dataset003_x", file_format="nifti")
        assert result.file_ending == ".nii.gz" and result.folder == tmp_path / "Dataset003_x"
        with pytest.raises(ConfigError, match="pass --overwrite"):
            export_nnunet(opened, tmp_path / "Dataset003_x", file_format="nifti")
        export_nnunet(opened, tmp_path / "Dataset003_x", file_format="nifti", overwrite=True)
    volume = next((tmp_path / "Dataset003_x" / "labelsTr").glob("*.nii.gz"))
    assert nib.load(volume).shape == (32, 32, 1)  # type: ignore[attr-defined]
    dataset = json.loads((tmp_path / "Dataset003_x" / "dataset.json").read_text())
    assert dataset["file_ending"] == ".nii.gz" and dataset["numTraining"] == 3


def test_nothing_labelled_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=2)
    with (
        open_project(project, write=False) as opened,
        pytest.raises(StateError, match="nothing is labelled"),
    ):
        export_nnunet(opened, tmp_path / "out")
    assert not (tmp_path / "out").exists()
