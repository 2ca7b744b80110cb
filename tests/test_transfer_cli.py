"""``alframe rank-sources`` end to end on tiny synthetic targets, and its user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alframe.cli.main import main
from alframe.errors import DataError
from alframe.transfer import load_source, load_target, rank_sources


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _image(rng: np.random.Generator, bright: bool) -> np.ndarray:
    # A faint lesion in strong noise: some triplets stay active, so FU has gradients.
    image = rng.integers(0, 200, size=(32, 32))
    if bright:
        image[8:24, 8:24] += 40
    return image


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(0)
    for i in range(8):
        _write_png(root / "normal" / f"n{i}.png", _image(rng, False))
        _write_png(root / "lesion" / f"l{i}.png", _image(rng, True))
    return root


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    import torch

    torch.manual_seed(3)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    path = tmp_path_factory.mktemp("w") / "r10t.pth"
    torch.save(model.state_dict(), path)
    return path


def test_rank_sources_end_to_end(
    class_folders: Path, weights_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text("model,performance\na,0.7\nb,0.6\nw,0.8\n")
    out = tmp_path / "ranking.json"
    code = main(
        [
            "rank-sources",
            "--models",
            "a@random:resnet10t",
            "b@random:resnet10t=1",
            f"w@timm:resnet10t={weights_file}",
            "--target",
            str(class_folders),
            "--scores",
            "all",
            "--image-size",
            "32",
            "--truth",
            str(truth),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "weighted Kendall tau" in printed and "ranked by lpfu" in printed
    payload = json.loads(out.read_text())
    assert [row["rank"] for row in payload["ranking"]] == [1, 2, 3]
    assert {row["model"] for row in payload["ranking"]} == {"a", "b", "w"}
    leep = {row["model"]: row["leep"] for row in payload["ranking"]}
    assert np.isfinite(leep["w"]) and np.isnan(leep["a"])  # only w has a source classifier
    assert set(payload["weighted_tau"]) >= {"lpfu", "logme", "nleep", "ncti"}
    assert payload["ranking"][0]["fu_layers"] == "conv1.0 → conv1.3"
    # The class folders are listed class by class: FU must still see two classes per batch.
    assert all(np.isfinite(row["fu"]) and row["fu_batches_used"] > 0 for row in payload["ranking"])


def test_csv_target_and_natural_source_variant(
    class_folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        f"{p.relative_to(class_folders)},{p.parent.name}"
        for p in sorted(class_folders.rglob("*.png"))
    ]
    csv_file = class_folders / "labels.csv"
    csv_file.write_text("path,label\n" + "\n".join(rows) + "\n")
    target = load_target(csv_file, image_size=32)
    assert len(target) == 16 and target.class_names == ["lesion", "normal"]
    sources = [load_source("a@random:resnet10t"), load_source("b@random:resnet10t=2")]
    plain = rank_sources(sources, target, "lpfu", progress=False)
    natural = rank_sources(sources, target, "lpfu", natural_source=True, progress=False)
    # With two candidates min-max normalisation gives {0, 1}: the variants disagree by design.
    assert sorted(plain.scores["lpfu"].tolist() + natural.scores["lpfu"].tolist()) != [0.5] * 4


def test_segmentation_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(9):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4 : 8 + 2 * i, 4:20] = 255
        image = rng.integers(0, 50, size=(32, 32)) + (mask > 0) * 120
        _write_png(tmp_path / "images" / f"s{i}.png", image)
        _write_png(tmp_path / "masks" / f"s{i}.png", mask)
    source = load_source("random:resnet10t")
    fraction = load_target(tmp_path, image_size=32)
    assert fraction.label_mode == "fraction" and np.bincount(fraction.labels).tolist() == [3, 3, 3]
    ranking = rank_sources([source], fraction, "logme", progress=False)
    assert np.isfinite(ranking.scores["logme"][0])
    with pytest.raises(DataError, match="single class"):
        load_target(tmp_path, image_size=32, label_mode="presence")  # every mask has lungs
    pixels = load_target(tmp_path, image_size=128, label_mode="pixels")
    ranking = rank_sources([source], pixels, "lp,fu", progress=False)
    assert np.isfinite(ranking.scores["lp"][0]) and np.isfinite(ranking.scores["fu"][0])
    features = ranking.raw["lp"][0]
    assert features is not None and ranking.info[0]["feature_dim"] == 512


def test_segmentation_checkpoint_candidate(tmp_path: Path) -> None:
    import torch

    from alframe.models import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(
        model_cfg={"arch": "Unet", "encoder": "resnet18"},
        train_cfg={},
        num_classes=2,
        in_channels=1,
    )
    path = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    source = load_source(str(path))
    assert source.kind == "segmentation" and source.in_channels == 1
    assert source.embedding(torch.zeros(2, 1, 64, 64)).shape == (2, 512)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "{missing}"], "does not exist"),
        (["--scores", "logmee"], "Did you mean 'logme'"),
        (["--models", "timm:resnet10t"], "needs a local weights file"),
        (["--models", "random:resnet_nope"], "is not a timm model"),
        (["--models", "seg:/no/such.ckpt"], "does not exist"),
        (["--truth", "{bad_truth}"], "no performance for"),
        (["--target", "{one_class}"], "single class"),
        (["--out", "ranking.txt"], "use a .csv or .json"),
        (["--label-mode", "pixels"], "needs a segmentation target"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    class_folders: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    bad_truth = tmp_path / "truth.csv"
    bad_truth.write_text("model,performance\nother,0.5\n")
    one_class = tmp_path / "one"
    _write_png(one_class / "only" / "a.png", np.zeros((8, 8)))
    _write_png(one_class / "only" / "b.png", np.ones((8, 8)))
    values = {
        "missing": str(tmp_path / "nope"),
        "bad_truth": str(bad_truth),
        "one_class": str(one_class),
    }
    args = [a.format(**values) for a in args]
    base = {
        "--models": ["random:resnet10t"],
        "--target": [str(class_folders)],
        "--image-size": ["32"],
    }
    for key, value in zip(args[::2], args[1::2]):
        base[key] = [value]
    argv = ["rank-sources", "--no-progress"]
    for key, values_ in base.items():
        argv += [key, *values_]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("alframe: error:")
