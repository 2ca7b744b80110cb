"""Training entry point, checkpoints and the Lightning task (tiny CPU runs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from alframe.config import Recipe, recipe_from_dict
from alframe.errors import ConfigError, ModelError, StateError
from alframe.models import (
    IGNORE_INDEX,
    SegmentationTask,
    TrainResult,
    evaluate_segmentation,
    fit_segmentation,
    load_task,
)

pytestmark = pytest.mark.filterwarnings(
    # Lightning's own deprecation noise from torch internals; not ours to fix.
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*",
    "ignore:.*does not have many workers.*",
)


class Squares(Dataset[dict[str, Any]]):
    """Noise images with one bright square of random size and position; mask = the square."""

    def __init__(self, n: int, size: int = 32, num_classes: int = 2, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 1, size, size, generator=generator) * 0.2
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        for i in range(n):
            side = int(torch.randint(6, 15, (1,), generator=generator))
            top, left = torch.randint(0, size - side, (2,), generator=generator).tolist()
            label = 1 + i % (num_classes - 1)
            self.images[i, :, top : top + side, left : left + side] += float(label)
            self.masks[i, top : top + side, left : left + side] = label

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "mask": self.masks[i], "id": f"sq{i}", "index": i}


class SquaresModule(L.LightningDataModule):
    """Train and validate on the same 8 images: the point is to show the model can fit them."""

    def __init__(self, num_classes: int = 2, batch_size: int = 4, n: int = 8) -> None:
        super().__init__()
        self.data = Squares(n, num_classes=num_classes)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return DataLoader(self.data, batch_size=self.batch_size)


def make_recipe(
    encoder: str = "tu-test_resnet",  # 80 k parameters: fast on two CPU cores
    classes: dict[str, int] | None = None,
    **train: Any,
) -> Recipe:
    settings: dict[str, Any] = {
        "max_epochs": 2,
        "lr": 0.01,
        "progress": False,
        "early_stopping_patience": 0,
        "accelerator": "cpu",
    }
    settings.update(train)
    return recipe_from_dict(
        {
            "name": "toy",
            "seed": 7,
            "data": {
                "datasets": {"toy": {"path": "toy"}},
                "train": {"dataset": "toy"},
                "image_size": [32, 32],
                "classes": classes or {"background": 0, "square": 1},
            },
            "model": {"arch": "Unet", "encoder": encoder, "encoder_depth": 3},
            "train": settings,
        }
    )


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("overfit")
    return fit_segmentation(make_recipe(max_epochs=10, warmup_epochs=1), SquaresModule(), out)


def test_overfit_beats_all_background(overfit_run: TrainResult) -> None:
    # An all-background prediction has foreground Dice 0 on every image.
    assert overfit_run.best_val_dice > 0.7
    assert overfit_run.epochs_run == 10
    assert overfit_run.best_checkpoint.name == "best.ckpt"
    assert overfit_run.best_checkpoint.is_file()
    assert overfit_run.wall_time_s > 0
    history = overfit_run.history
    assert [row["epoch"] for row in history] == list(range(10))
    assert {"train/loss", "train/lr", "val/loss", "val/dice", "val/iou"} <= set(history[-1])
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert max(row["val/dice"] for row in history) == pytest.approx(overfit_run.best_val_dice)
    # Warm-up for one epoch, then cosine decay.
    lrs = [row["train/lr"] for row in history]
    assert lrs[0] < lrs[1] and lrs[1] == pytest.approx(0.01) and lrs[-1] < lrs[1] / 10


def test_checkpoint_round_trip_gives_identical_predictions(overfit_run: TrainResult) -> None:
    task = load_task(overfit_run.best_checkpoint)
    again = load_task(overfit_run.best_checkpoint)
    assert isinstance(task, SegmentationTask) and not task.training
    assert task.class_names == ["background", "square"]
    assert task.hparams["recipe"]["name"] == "toy"
    images = Squares(4, seed=1).images
    proba = task.predict_proba(images)
    assert proba.shape == (4, 2, 32, 32)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(4, 32, 32))
    torch.testing.assert_close(proba, again.predict_proba(images), rtol=0, atol=0)
    # The checkpoint restores with weights_only loading (no pickled objects).
    raw = torch.load(overfit_run.best_checkpoint, weights_only=True)
    state = {
        k.removeprefix("model."): v for k, v in raw["state_dict"].items() if k.startswith("model.")
    }
    for key, value in task.model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    # Evaluation of the restored task reproduces a high Dice on the training squares.
    df = evaluate_segmentation(task, SquaresModule().val_dataloader(), 2, "train", progress=False)
    assert len(df) == 8 and df["dice"].mean() > 0.7


def test_load_task_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_task(tmp_path / "missing.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="cannot be read safely"):
        load_task(corrupt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 1}}, foreign)
    with pytest.raises(ModelError, match="not an alframe segmentation checkpoint"):
        load_task(foreign)
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(ModelError, match=r"model\.weights"):
        load_task(plain)


def test_load_task_refuses_weights_of_another_model(
    overfit_run: TrainResult, tmp_path: Path
) -> None:
    raw = torch.load(overfit_run.best_checkpoint, weights_only=True)
    raw["hyper_parameters"]["model_cfg"]["arch"] = "FPN"
    changed = tmp_path / "changed.ckpt"
    torch.save(raw, changed)
    with pytest.raises(ModelError, match="do not fit the stored model configuration"):
        load_task(changed)


def test_existing_checkpoint_is_not_overwritten(overfit_run: TrainResult) -> None:
    out = overfit_run.best_checkpoint.parent.parent
    before = overfit_run.best_checkpoint.read_bytes()
    with pytest.raises(StateError, match="already exists"):
        fit_segmentation(make_recipe(), SquaresModule(), out)
    assert overfit_run.best_checkpoint.read_bytes() == before


class _FinalWeights(L.Callback):
    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_same_seed_gives_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # to see that nothing lands in the working directory
    recipe = make_recipe(max_epochs=2)
    finals = []
    results = []
    for run in ("a", "b"):
        capture = _FinalWeights()
        results.append(
            fit_segmentation(recipe, SquaresModule(), tmp_path / run, callbacks=[capture])
        )
        finals.append(capture.state)
    assert finals[0].keys() == finals[1].keys() and finals[0]
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=0, atol=0, msg=key)
    assert results[0].history == results[1].history
    assert not torch.are_deterministic_algorithms_enabled()  # process-wide flag restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoints"]


class _PlainData:
    """Not a LightningDataModule: just the two loader methods of the data contract."""

    def __init__(self, num_classes: int) -> None:
        self.module = SquaresModule(num_classes=num_classes, n=6)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self.module.train_dataloader()

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self.module.val_dataloader()


def test_multiclass_fit_with_plain_loaders_and_csv_logger(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    recipe = make_recipe(
        classes={"background": 0, "left": 1, "right": 2},
        max_epochs=1,
    )
    logger = CSVLogger(tmp_path / "run", name="logs")
    result = fit_segmentation(recipe, _PlainData(3), tmp_path / "run", logger=logger)
    assert result.epochs_run == 1 and math.isfinite(result.best_val_dice)
    assert {"val/dice_left", "val/dice_right"} <= set(result.history[0])
    assert list((tmp_path / "run" / "logs").rglob("metrics.csv"))
    task = load_task(result.best_checkpoint)
    assert task.predict_proba(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_early_stopping_stops_a_flat_run(tmp_path: Path) -> None:
    # lr ~ 0: val/dice never improves, so patience 1 stops after two epochs.
    recipe = make_recipe(max_epochs=6, lr=1e-12, early_stopping_patience=1)
    result = fit_segmentation(recipe, SquaresModule(n=4), tmp_path / "run")
    assert result.epochs_run == 2


def test_training_skips_ignored_pixels() -> None:
    # A batch whose only labelled pixels are background: the loss must not be dragged towards
    # the (ignored) square, so a perfect background prediction gives a near-zero loss.
    recipe = make_recipe()
    task = SegmentationTask.from_recipe(recipe)
    batch = Squares(2)[0]
    mask = batch["mask"].clone()
    mask[mask == 1] = IGNORE_INDEX
    logits = torch.full((1, 1, 32, 32), -30.0)
    loss = task.loss_fn(logits, mask[None])
    assert loss.item() < 1e-3


def test_task_hparams_are_plain_data() -> None:
    task = SegmentationTask.from_recipe(make_recipe())

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, str | int | float | bool)

    assert plain(dict(task.hparams))
    assert set(task.hparams) == {
        "model_cfg",
        "train_cfg",
        "num_classes",
        "class_names",
        "in_channels",
        "recipe",
    }


class _ModuleWithObjectHparams(SquaresModule):
    """A data module that saves a non-plain object (a pydantic recipe) as a hyperparameter."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(n=4)
        self.save_hyperparameters({"recipe": recipe, "root": Path("/data")})


def test_checkpoint_stays_weights_only_with_object_datamodule_hparams(tmp_path: Path) -> None:
    recipe = make_recipe(max_epochs=1)
    result = fit_segmentation(recipe, _ModuleWithObjectHparams(recipe), tmp_path / "run")
    raw = torch.load(result.best_checkpoint, weights_only=True)
    assert "datamodule_hyper_parameters" not in raw
    assert load_task(result.best_checkpoint).num_classes == 2


def test_invalid_trainer_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precision='17-wrong'"):
        fit_segmentation(make_recipe(precision="17-wrong"), SquaresModule(), tmp_path / "run")
    assert not torch.are_deterministic_algorithms_enabled()


def test_trained_checkpoint_as_whole_model_weights(overfit_run: TrainResult) -> None:
    # A Lightning checkpoint works as model.weights (e.g. to fine-tune it on another site).
    from alframe.models import build_model, encoder_feature_channels

    task = load_task(overfit_run.best_checkpoint)
    cfg = task.model_config.model_copy(update={"weights": str(overfit_run.best_checkpoint)})
    model = build_model(cfg, in_channels=1, num_classes=2)
    for key, value in task.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert encoder_feature_channels(task) == encoder_feature_channels(model) == [1, 32, 32, 48]
