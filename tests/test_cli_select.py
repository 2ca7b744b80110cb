"""`alframe embed train-mae`, `alframe embed` and `alframe select` on tiny synthetic data."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from alframe.cli.main import main
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic data, a recipe, and a trained 1-epoch MAE shared by the tests of this module."""
    root = tmp_path_factory.mktemp("select")
    write_synthetic_dataset(root / "data", n_images=16, image_size=32, seed=5)
    raw: dict[str, Any] = synthetic_recipe_dict(root / "data", image_size=32)
    raw["output_dir"] = str(root / "run")
    raw["train"] = {**raw.get("train", {}), "progress": False}
    raw["embed"] = {"mae": {"encoder": "tu-test_resnet", "max_epochs": 1, "batch_size": 4}}
    raw["select"] = {"strategy": "xssr", "params": {"alpha": "auto"}}
    (root / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["embed", "train-mae", "--recipe", str(root / "r.yaml")]) == 0
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_mae_wrote_checkpoint(workspace: Path) -> None:
    assert (workspace / "run" / "mae" / "mae.ckpt").exists()


def test_embed_is_cached(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(workspace / "r.yaml")
    capsys.readouterr()
    assert main(["embed", "--recipe", recipe]) == 0
    first = capsys.readouterr().out
    assert main(["embed", "--recipe", recipe]) == 0
    second = capsys.readouterr().out
    assert "pool: 12 ×" in first  # target train split of 16 synthetic images (0.75)
    assert "(cache)" in second
    assert main(["embed", "--recipe", recipe, "--which", "source"]) == 0
    assert "source: 16 ×" in capsys.readouterr().out


def test_select_xssr_writes_terms(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace / "sel.csv"
    code = main(["select", "--recipe", str(workspace / "r.yaml"), "-b", "4", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "selected 4 of 12" in printed and "alpha =" in printed
    rows = read_rows(out)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert len({r["id"] for r in rows}) == 4
    assert {"density", "novelty", "diversity"} <= set(rows[0])
    for row in rows:
        assert 0.0 <= float(row["density"]) <= 1.0

    again = workspace / "sel2.csv"
    assert main(["select", "--recipe", str(workspace / "r.yaml"), "-b", "4", "-o", str(again)]) == 0
    assert read_rows(again) == rows  # same seed, same selection


def test_select_respects_labelled_ids(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alframe.config import load_recipe
    from alframe.data import DataCatalog

    recipe = load_recipe(workspace / "r.yaml")
    pool_ids = [s.id for s in DataCatalog(recipe).samples(recipe.data.train)]
    labelled = workspace / "labelled.txt"
    labelled.write_text("\n".join(pool_ids[:2]) + "\n")
    out = workspace / "sel_coreset.csv"
    code = main(
        [
            "select",
            "--recipe",
            str(workspace / "r.yaml"),
            "-b",
            "3",
            "-s",
            "coreset",
            "--labelled",
            str(labelled),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    chosen = {r["id"] for r in read_rows(out)}
    assert len(chosen) == 3 and not chosen & set(pool_ids[:2])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["-b", "2", "-s", "xsrr"], "xssr"),
        (["-b", "0"], "--budget"),
        (["-b", "2", "-s", "entropy"], "--checkpoint"),
        (["-b", "2", "--labelled", "missing.txt"], "no such file"),
        (["-b", "2", "--set", "embed.weights=/no/such/mae.ckpt"], "/no/such/mae.ckpt"),
    ],
)
def test_select_user_errors(
    workspace: Path,
    extra: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    out = tmp_path / "never.csv"
    capsys.readouterr()
    code = main(["select", "--recipe", str(workspace / "r.yaml"), "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("alframe: error: ")
    assert needle in err
    assert not out.exists()


def test_select_without_mae_says_what_to_do(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = main(
        [
            "select",
            "--recipe",
            str(workspace / "r.yaml"),
            "-b",
            "2",
            "--set",
            f"output_dir={tmp_path / 'fresh'}",
            "-o",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 2
    assert "alframe embed train-mae" in capsys.readouterr().err


def test_select_hints_exactly_when_the_embedding_barely_separates_the_pool(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from alframe.config import load_recipe
    from alframe.embed import embed_pool
    from alframe.scoring import structure

    recipe_path = str(workspace / "r.yaml")
    pool = embed_pool(load_recipe(recipe_path), which="pool", progress=False)
    measured = structure.neighbour_contrast(pool.embeddings, seed=load_recipe(recipe_path).seed)
    capsys.readouterr()
    out = workspace / "hint.csv"
    assert main(["select", "--recipe", recipe_path, "-b", "3", "-o", str(out)]) == 0
    assert ("hint: the embedding barely separates" in capsys.readouterr().out) == measured.low
    # The other branch, whatever this tiny MAE gives: a structureless measurement.
    flat = structure.NeighbourContrast(0.05, 0.9, 0.95, 12)
    monkeypatch.setattr(structure, "neighbour_contrast", lambda *a, **k: flat)
    assert main(["select", "--recipe", recipe_path, "-b", "3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hint: the embedding barely separates the pool (neighbour contrast 0.05" in printed
    assert main(["select", "--recipe", recipe_path, "-b", "3", "-s", "random", "-o", str(out)]) == 0
    assert "hint:" not in capsys.readouterr().out  # random uses no embedding
