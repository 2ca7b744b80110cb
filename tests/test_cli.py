"""The `alframe` command: success paths on tiny synthetic data, and every user error → one line, exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from alframe.cli.main import main
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset


def tiny_recipe(data_dir: Path, tmp_path: Path, **train: Any) -> dict[str, Any]:
    raw = synthetic_recipe_dict(data_dir, image_size=32)
    raw["train"].update({"max_epochs": 1, "batch_size": 4, "progress": False, **train})
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    raw["output_dir"] = str(tmp_path / "run")
    return raw


def write_recipe(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, n_images=12, image_size=32, seed=3)
    return root


@pytest.fixture
def data_copy(synthetic_data: Path, tmp_path: Path) -> Path:
    """A private copy a test may break."""
    target = tmp_path / "data"
    shutil.copytree(synthetic_data, target)
    return target


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "demo"):
        assert command in out


def test_train_then_evaluate(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(synthetic_data, tmp_path))
    code, out, err = run_cli(
        ["train", "--recipe", str(recipe), "--set", "train.max_epochs=2"], capsys
    )
    assert code == 0, err
    assert "target_test" in out and "Dice" in out
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert checkpoint.exists()
    assert (tmp_path / "run" / "eval_target_test.csv").exists()
    assert (tmp_path / "run" / "summary.json").exists()
    assert (tmp_path / "mlflow.db").exists()

    code, out, err = run_cli(["evaluate", "-c", str(checkpoint), "-d", "target_test"], capsys)
    assert code == 0, err
    assert "target_test" in out
    out_csv = tmp_path / "folder.csv"
    # A folder whose name is not a data set of the recipe: a new site evaluated ad hoc.
    new_site = tmp_path / "new_site"
    shutil.copytree(synthetic_data / "source", new_site)
    code, out, err = run_cli(
        [
            "evaluate",
            "-c",
            str(checkpoint),
            "-d",
            str(synthetic_data / "source"),
            "--out",
            str(out_csv),
        ],
        capsys,
    )
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(out_csv)
    assert len(table) == 12 and {"id", "dice", "iou"} <= set(table.columns)
    assert table["dice"].between(0, 1).all()


def expect_user_error(
    args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("alframe: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    # Nothing was started: no run folder, no MLflow store.
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "mlflow.db").exists()


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_image_without_mask(
    data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = sorted((data_copy / "target" / "masks").glob("*.png"))[0]
    victim.unlink()
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(data_copy, tmp_path))
    expect_user_error(
        ["train", "--recipe", str(recipe)],
        [f"{victim.stem}.png has no mask", "add masks/"],
        capsys,
        tmp_path,
    )


def test_size_mismatch(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = sorted((data_copy / "target" / "masks").glob("*.png"))[0]
    _png(victim, np.zeros((16, 20), np.uint8))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(data_copy, tmp_path))
    expect_user_error(["train", "--recipe", str(recipe)], [str(victim), "16×20"], capsys, tmp_path)


def test_unexpected_label_values(
    data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = sorted((data_copy / "target" / "masks").glob("*.png"))[-1]
    values = np.zeros((32, 32), np.uint8)
    values[:4, :4] = 7
    _png(victim, values)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(data_copy, tmp_path))
    expect_user_error(["train", "--recipe", str(recipe)], [str(victim), "[0, 7]"], capsys, tmp_path)


def test_corrupt_file(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = sorted((data_copy / "source" / "images").glob("*.png"))[0]
    victim.write_bytes(b"not a png at all")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(data_copy, tmp_path))
    expect_user_error(
        ["train", "--recipe", str(recipe)], [f"cannot read {victim}"], capsys, tmp_path
    )


def test_empty_folder(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for file in (data_copy / "target" / "images").iterdir():
        file.unlink()
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(data_copy, tmp_path))
    expect_user_error(
        ["train", "--recipe", str(recipe)], [str(data_copy / "target" / "images")], capsys, tmp_path
    )


def test_unknown_split_id(
    data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = sorted(p.stem for p in (data_copy / "target" / "images").glob("*.png"))
    rows = ["id,source_split"] + [f"{i},train" for i in ids] + ["no_such_image,test"]
    (data_copy / "splits.csv").write_text("\n".join(rows) + "\n")
    raw = tiny_recipe(data_copy, tmp_path)
    raw["data"]["datasets"]["target"]["split"] = {"kind": "csv", "csv": "splits.csv"}
    raw["data"]["evaluate"] = {}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    expect_user_error(
        ["train", "--recipe", str(recipe)], ["unknown split id", "no_such_image"], capsys, tmp_path
    )


def test_unknown_split_name(
    data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_recipe(data_copy, tmp_path)
    raw["data"]["train"] = {"dataset": "target", "split": "trian"}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    expect_user_error(["train", "--recipe", str(recipe)], ["trian"], capsys, tmp_path)


def test_recipe_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], synthetic_data: Path
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(synthetic_data, tmp_path))
    expect_user_error(
        ["train", "--recipe", str(recipe), "--set", "train.lr=fast"],
        ["train.lr = 'fast'"],
        capsys,
        tmp_path,
    )
    expect_user_error(
        ["train", "--recipe", str(recipe), "--set", "model.arhc=x"],
        ["did you mean arch"],
        capsys,
        tmp_path,
    )
    expect_user_error(
        ["train", "--recipe", str(tmp_path / "nope.yaml")], ["no such file"], capsys, tmp_path
    )


def test_evaluate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_user_error(
        ["evaluate", "-c", str(tmp_path / "missing.ckpt"), "-d", "x"],
        ["missing.ckpt"],
        capsys,
        tmp_path,
    )
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"garbage")
    expect_user_error(["evaluate", "-c", str(junk), "-d", "x"], ["junk.ckpt"], capsys, tmp_path)


def test_debug_shows_traceback(tmp_path: Path) -> None:
    from alframe.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "--recipe", str(tmp_path / "nope.yaml")])


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alframe.cli.main",
            "train",
            "--recipe",
            str(tmp_path / "nope.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("alframe: error: recipe")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "alframe.cli.main", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_demo_synthetic_tracks_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_cli(["demo", "--data", "synthetic", "--epochs", "1"], capsys)
    assert code == 0, err
    # One progress line per round, the learning curve and how to open MLflow.
    assert "[xssr seed 0] round 1: n_labelled=8 dice=" in out
    assert "[random seed 0] round 0: n_labelled=4 dice=" in out
    assert "[full seed 0] round 0: n_labelled=36 dice=" in out
    assert "### target_test" in out
    plot = tmp_path / "alframe_demo" / "run" / "learning_curve.png"
    assert f"learning curve: {plot.relative_to(tmp_path)}" in out and plot.is_file()
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    # Everything the demo makes stays in its folder, MLflow store and artifacts included.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alframe_demo"]
    store = tmp_path / "alframe_demo" / "mlflow.db"
    assert store.exists() and (tmp_path / "alframe_demo" / "mlartifacts").is_dir()
    # The plain-words conclusion: % of full data (or why there is none) and the caution.
    assert "In short (target_test):" in out
    assert ("% of the full-data Dice" in out) != ("trained too briefly" in out)
    assert "xssr vs random at 8 labels:" in out and "does not rank strategies" in out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("synthetic_demo")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert all(run.info.status == "FINISHED" for run in runs)
    kinds = sorted(run.data.tags["alframe.kind"] for run in runs)
    assert kinds == [
        "arm",
        "arm",
        "reference",
        "round",
        "round",
        "round",
        "round",
        "round",
        "summary",
    ]
    xssr_rounds = [
        run
        for run in runs
        if run.data.tags["alframe.kind"] == "round" and run.data.tags["alframe.label"] == "xssr"
    ]
    assert sorted(r.data.metrics["n_labelled"] for r in xssr_rounds) == [4.0, 8.0]
    for run in xssr_rounds:
        assert 0.0 <= run.data.metrics["target_test_dice_mean"] <= 1.0
        assert run.data.params["data.image_size"] == "[64, 64]"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"selection.csv", "manifest.json", "recipe.rounds.yaml", "evaluation"} <= artifacts
    (summary,) = [run for run in runs if run.data.tags["alframe.kind"] == "summary"]
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"learning_curve.png", "summary.md", "summary_table.csv"} <= artifacts


def _demo_table(reference: float, subsets: dict[str, tuple[float, float]]) -> Any:
    from alframe.loop.summary import results_frame, summary_table

    manifests = [
        {
            "label": label,
            "strategy": label,
            "schedule": "s",
            "seed": 0,
            "round": k,
            "n_labelled": n,
            "metrics": {"test": {"n": 4, "dice_mean": dice, "iou_mean": dice}},
        }
        for label, dices in subsets.items()
        for k, (n, dice) in enumerate(zip((4, 8), dices, strict=True))
    ]
    manifests.append(
        {
            "label": "full",
            "strategy": "full",
            "schedule": "full",
            "seed": 0,
            "round": 0,
            "n_labelled": 36,
            "metrics": {"test": {"n": 4, "dice_mean": reference, "iou_mean": reference}},
        }
    )
    return summary_table(results_frame(manifests))


def test_demo_headline_says_only_what_the_run_supports() -> None:
    from alframe.workflows.demo import headline

    table = _demo_table(0.90, {"xssr": (0.70, 0.81), "random": (0.75, 0.855)})
    lines = headline(table, "test")
    assert lines[1] == "In short (test):"
    # The best of the largest budget: random's 0.855 / 0.90 = 95.0 %.
    assert "8 of 36 pool images labelled reach 95.0 % of the full-data Dice (0.900)" in lines[2]
    assert "the other 28 would buy the remaining 5.0 %" in lines[2]
    assert "xssr vs random at 8 labels: -4.5 Dice points on 1 seed(s)" in lines[3]
    # A reference below the subset models (too short a training) gets no percentage: no 178 %.
    short = headline(_demo_table(0.50, {"xssr": (0.70, 0.89), "random": (0.75, 0.85)}), "test")
    assert not any("% of the full-data" in line for line in short)
    assert "trained too briefly" in short[2]


def test_demo_real_without_data_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALFRAME_DATA", raising=False)
    code, _, err = run_cli(["demo", "--data", "real"], capsys)
    assert code == 2 and "ALFRAME_DATA" in err
    assert not (tmp_path / "alframe_demo").exists()
