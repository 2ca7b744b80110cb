"""`project init --images`: a labelling project on one folder of images, without a recipe.

Everything the project makes (MAE, embeddings, runs, MLflow store) stays inside the project
folder wherever the commands run from; a single-site pool trains the MAE on itself and XSSR runs
without novelty; bad input leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from alframe.cli.main import main
from alframe.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site of 10 grey 64² images with {0, 255} masks."""
    root = tmp_path_factory.mktemp("site")
    write_synthetic_dataset(root, n_images=10, domains=("clinic",), image_size=64)
    return root / "clinic"


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_init_from_images_and_first_round_keep_everything_in_the_project(
    site: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    project = tmp_path / "proj"
    args = ["project", "init", str(project), "--images", str(site / "images")]
    args += ["--classes", "background=0,lesion=255", "--image-size", "64"]
    args += ["--set", "embed.mae.max_epochs=1", "--set", "train.progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pool of 10 images" in out and "without its novelty term" in out
    recipe = yaml.safe_load((project / "recipe.yaml").read_text())
    assert recipe["data"]["classes"] == {"background": 0, "lesion": 255}
    assert recipe["data"]["source"] is None and recipe["data"]["in_channels"] == 1
    assert recipe["output_dir"] == "runs"  # relative to the project: it moves with it
    assert not Path(recipe["data"]["root"]).is_absolute()

    assert main(["round", "next", str(project), "--budget", "3"]) == 0
    captured = capsys.readouterr()
    assert "round 1 (xssr): 3 items" in captured.out
    assert "trained on the pool's own (unlabelled) images" in captured.err
    assert "runs without its novelty term" in captured.err
    # The MAE was trained on the pool itself, inside the project.
    info = json.loads((project / "runs" / "mae" / "mae_encoder.json").read_text())
    assert info["source"] is None and info["n_images"] == 10
    assert list((project / "runs" / "embeddings").glob("*.npy"))
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory

    # A project recipe given to other commands resolves against the project, from anywhere.
    assert main(["embed", "--recipe", str(project / "recipe.yaml")]) == 0
    assert main(["embed", "--recipe", str(project)]) == 0
    assert "cache" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []


def test_masks_folder_lets_the_picked_items_be_imported(
    site: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "proj"
    args = ["project", "init", str(project), "--images", str(site / "images")]
    args += ["--masks", str(site / "masks"), "--classes", "background=0,lesion=255"]
    args += ["--image-size", "64"]
    assert main(args) == 0
    recipe = yaml.safe_load((project / "recipe.yaml").read_text())
    assert recipe["data"]["datasets"]["pool"]["masks"] is not None
    assert main(["round", "next", str(project), "--budget", "2", "--strategy", "random"]) == 0
    # Masks of the whole pool, named like the images: strict import refuses the unpicked ones.
    assert main(["round", "import", str(project), "--from", str(site / "masks")]) == 2
    assert "is not in any exported round" in capsys.readouterr().err
    args = ["round", "import", str(project), "--from", str(site / "masks"), "--only-selected"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "imported 2 new" in out and "left out 8 files" in out
    from alframe.annotate import open_project

    with open_project(project) as opened:
        labelled = opened.label_files()
        cases = opened.case_of()
    assert len(labelled) == 2
    for item, path in labelled.items():
        stored = np.asarray(Image.open(path))
        truth = np.asarray(Image.open(site / "masks" / f"{item.split('/')[-1]}.png")) > 0
        np.testing.assert_array_equal(stored == 1, truth, err_msg=cases[item])


def test_colour_images_get_three_channels(tmp_path: Path) -> None:
    from alframe.annotate.project import recipe_for_images

    folder = tmp_path / "rgb"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (40, 40), (k, 2 * k, 3 * k)).save(folder / f"im{k}.png")
    recipe = recipe_for_images(tmp_path / "p", folder, {"background": 0, "cell": 1})
    assert recipe.data.in_channels == 3 and recipe.data.datasets["pool"].masks is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "background=0,lung=255", "--recipe", "r.yaml"], "not both"),
        ([], "--images needs --classes"),
        (["--classes", "background:0,lung:255"], "is not NAME=VALUE"),
        (["--classes", "lung=255"], "at least two classes"),
        (["--classes", "background=0,lung=255", "--masks", "nowhere"], "no such folder"),
        (["--classes", "background=0,lung=255", "--image-size", "50"], "multiples of 32"),
    ],
)
def test_bad_init_input_is_refused_and_creates_nothing(
    site: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    before = _tree(site)
    args = ["project", "init", str(tmp_path / "proj"), "--images", str(site / "images"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "proj").exists()
    assert _tree(site) == before


def test_a_recipe_project_keeps_its_outputs_unless_the_recipe_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alframe.annotate import init_project, open_project
    from alframe.config import recipe_from_dict
    from alframe.data.synthetic import synthetic_recipe_dict

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset(tmp_path / "data", n_images=6, image_size=32)
    raw = synthetic_recipe_dict(tmp_path / "data", image_size=32)
    raw.pop("output_dir", None)
    init_project(tmp_path / "a", recipe_from_dict(raw))
    with open_project(tmp_path / "a") as opened:
        assert Path(opened.recipe.run_dir) == (tmp_path / "a" / "runs").resolve()
        assert opened.recipe.tracking.uri == f"sqlite:///{(tmp_path / 'a').resolve()}/mlflow.db"
    init_project(tmp_path / "b", recipe_from_dict({**raw, "output_dir": str(tmp_path / "mine")}))
    with open_project(tmp_path / "b") as opened:
        assert Path(opened.recipe.run_dir) == tmp_path / "mine"
