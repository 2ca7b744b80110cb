"""Pictures written by `round next`, `round train` and `select`, logged to MLflow, and the static
report of `round status --report` rendered in headless Chromium (tiny synthetic data)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_annotate_support import assignments, synthetic_recipe, write_mask_folder

from alframe.annotate import import_labels, init_project, open_project
from alframe.cli.main import main
from alframe.config import recipe_from_dict, recipe_to_dict

CHROMIUM = Path("/usr/bin/chromium")
PICKED_RED = np.array([0xD6, 0x27, 0x28])  # the pool picture's stars


def _recipe(root: Path, n_images: int, tracking_uri: str | None = None) -> dict:
    """Synthetic recipe with an embedding strategy (coreset over a random-weight timm encoder:
    no MAE to train) so that rounds have a pool projection."""
    raw = recipe_to_dict(synthetic_recipe(root, n_images=n_images))
    raw["select"] = {"strategy": "coreset"}
    raw["embed"] = {"backbone": "timm", "encoder": "resnet10t", "batch_size": 8}
    if tracking_uri is not None:
        raw["tracking"] = {"enabled": True, "uri": tracking_uri}
    return raw


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()
        return image.size


def _chromium_render(page: Path, work: Path) -> tuple[str, np.ndarray]:
    """The page's DOM after load, and a 1000×2400 screenshot, from headless Chromium."""
    if not CHROMIUM.exists():
        pytest.skip(
            "headless Chromium is not installed (/usr/bin/chromium, Debian's `chromium` "
            "package); the report's browser check needs it"
        )
    common = [
        str(CHROMIUM),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        f"--user-data-dir={work / 'chromium-profile'}",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    shot = work / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1000,2400", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    return dom, pixels


@pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*")
def test_rounds_write_pictures_and_the_report_renders_in_chromium(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project = tmp_path / "project"
    init_project(project, recipe_from_dict(_recipe(tmp_path, 16, uri)), annotators=["solo"])

    # Round 1, before any model: pool projection + picked images alone.
    assert main(["round", "next", str(project), "--budget", "3"]) == 0
    first = project / "rounds" / "001" / "pictures"
    assert f"pictures: {first / 'pool.png'}, {first / 'picked.png'}" in capsys.readouterr().out
    assert _png_size(first / "pool.png") == (640, 520)
    _png_size(first / "picked.png")

    write_mask_folder(project, tmp_path / "masks", assignments(project))
    with open_project(project) as opened:
        import_labels(opened, tmp_path / "masks")
    assert main(["round", "train", str(project)]) == 0  # tracked
    trained = project / "train" / "001" / "pictures"
    assert f"pictures: {trained / 'learning_curve.png'}, {trained / 'picked_round-001.png'}" in (
        capsys.readouterr().out
    )
    _png_size(trained / "learning_curve.png")

    # Round 2: the picks with the latest model's prediction.
    assert main(["round", "next", str(project), "--budget", "3"]) == 0
    assert "pictures: " in capsys.readouterr().out
    _png_size(project / "rounds" / "002" / "pictures" / "picked.png")

    # Logged to MLflow: each round's run and the training's run hold the pictures.
    client = MlflowClient(tracking_uri=uri)
    logged = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            names = sorted(
                Path(a.path).name for a in client.list_artifacts(run.info.run_id, "pictures")
            )
            logged[run.info.run_name] = names
    assert logged["labelling round 001"] == ["picked.png", "pool.png"]
    assert logged["labelling round 002"] == ["picked.png", "pool.png"]
    trained_runs = [names for name, names in logged.items() if "-labels-001" in name]
    assert trained_runs == [["learning_curve.png", "picked_round-001.png"]]

    # The report: one self-contained page.
    assert main(["round", "status", str(project), "--report"]) == 0
    out = capsys.readouterr().out
    page = project / "report.html"
    assert f"report: {page}" in out and "round   2 (coreset): 3 items" in out
    text = page.read_text(encoding="utf-8")
    assert text.count('<img src="data:image/png;base64,') == 3
    assert 'src="file:' not in text and "http" not in text.split("<body>", 1)[1]
    assert "round 2&#x27;s picks" in text or "round 2's picks" in text
    assert not list(project.glob(".report.html.*"))  # written atomically, nothing left over

    dom, pixels = _chromium_render(page, tmp_path)
    assert 'data-images-loaded="3/3"' in dom, re.findall(r"<body[^>]*>", dom)
    assert pixels.shape == (2400, 1000, 3)
    assert (pixels < 250).any(axis=2).mean() > 0.05  # not a blank page
    red = np.abs(pixels.astype(int) - PICKED_RED).sum(axis=2) < 30
    assert red.sum() > 50  # the pool picture's picked stars were decoded and drawn


def test_select_writes_pool_and_picked_pictures_beside_its_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path, 12)))
    out = tmp_path / "picks" / "sel.csv"
    assert main(["select", "--recipe", str(recipe), "-b", "3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    pool, picked = tmp_path / "picks" / "sel_pool.png", tmp_path / "picks" / "sel_picked.png"
    assert f"pictures: {pool}, {picked}" in printed
    assert _png_size(pool) == (640, 520)
    _png_size(picked)

    # A strategy without an embedding: picked images only, and a note why there is no pool.
    other = tmp_path / "random.csv"
    assert (
        main(["select", "--recipe", str(recipe), "-b", "2", "-s", "random", "-o", str(other)]) == 0
    )
    printed = capsys.readouterr().out
    assert "note: no pool projection: strategy 'random' ranks without an embedding" in printed
    assert (tmp_path / "random_picked.png").is_file()
    assert not (tmp_path / "random_pool.png").exists()
