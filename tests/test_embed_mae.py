"""Conv-MAE (XSSR Stage 1): masking, loss, augmentation, training, checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from alframe.config.schema import Recipe
from alframe.embed.mae import (
    MaskedAutoencoderTask,
    batch_generator,
    load_mae,
    load_mae_encoder,
    masked_mse_loss,
    normalize_patches,
    random_patch_mask,
    random_resized_crop,
    save_mae,
    train_mae,
)
from alframe.errors import DataError, ModelError

ENCODER = "tu-resnet10t"


class BlobImages(Dataset[dict[str, Any]]):
    """Seeded synthetic images: a bright disc on a dark background (a learnable structure)."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        grid = torch.arange(size, dtype=torch.float32)
        yy, xx = torch.meshgrid(grid, grid, indexing="ij")
        images = []
        for _ in range(n):
            cy, cx = (torch.rand(2, generator=gen) * size).tolist()
            radius = 4.0 + 8.0 * float(torch.rand(1, generator=gen))
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2).float()
            images.append(0.1 + 0.8 * disc[None])
        self.images = torch.stack(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "id": f"src/{index:03d}", "index": index}


def make_recipe(tmp_path: Path, source: bool = True, **mae: Any) -> Recipe:
    data: dict[str, Any] = {
        "root": str(tmp_path),
        "datasets": {"src": {"path": "src", "masks": None}, "tgt": {"path": "tgt"}},
        "train": {"dataset": "tgt"},
        "image_size": [32, 32],
    }
    if source:
        data["source"] = {"dataset": "src"}
    settings = {"encoder": ENCODER, "max_epochs": 4, "batch_size": 4, "base_lr": 0.2, **mae}
    return Recipe.model_validate(
        {
            "name": "mae_test",
            "seed": 3,
            "data": data,
            "embed": {"mae": settings},
            "train": {"progress": False, "accelerator": "cpu"},
            "output_dir": str(tmp_path / "run"),
        }
    )


# ---------------------------------------------------------------------------------------------
# Masking


def test_mask_covers_mask_ratio_of_patches_per_image() -> None:
    mask = random_patch_mask(5, 64, 64, 16, 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 1, 64, 64) and mask.dtype == torch.bool
    # 16 patches of 16x16: exactly 12 masked in every image, each patch all-or-nothing.
    patches = mask.float().reshape(5, 4, 16, 4, 16).mean(dim=(2, 4))
    assert set(patches.unique().tolist()) <= {0.0, 1.0}
    assert patches.sum(dim=(1, 2)).tolist() == [12.0] * 5
    assert mask.float().mean().item() == pytest.approx(0.75)
    # Images get different patch sets.
    assert not torch.equal(mask[0], mask[1])


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_mask_ratio_on_a_ragged_grid(ratio: float) -> None:
    # 40 px with 16 px patches: a 3x3 grid whose last row/column is cut to 8 px.
    mask = random_patch_mask(2, 40, 40, 16, ratio, torch.Generator().manual_seed(1))
    assert mask.shape == (2, 1, 40, 40)
    grid = mask[:, 0, ::16, ::16]  # the top-left pixel of each patch
    assert grid.sum(dim=(1, 2)).tolist() == [round(ratio * 9)] * 2


def test_mask_is_seeded_and_deterministic() -> None:
    first = random_patch_mask(4, 32, 32, 8, 0.75, batch_generator(7, 3))
    again = random_patch_mask(4, 32, 32, 8, 0.75, batch_generator(7, 3))
    other_step = random_patch_mask(4, 32, 32, 8, 0.75, batch_generator(7, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other_step)


def test_mask_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(1, 32, 32, 8, 1.0, torch.Generator())


# ---------------------------------------------------------------------------------------------
# Loss


def test_loss_counts_only_masked_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 2, 32, 32, generator=gen)
    prediction = torch.rand(3, 2, 32, 32, generator=gen)
    mask = random_patch_mask(3, 32, 32, 8, 0.5, gen)
    loss = masked_mse_loss(prediction, target, mask, 8)
    # Garbage in the unmasked pixels does not change the loss.
    changed = torch.where(mask, prediction, prediction + 100.0)
    assert masked_mse_loss(changed, target, mask, 8).item() == pytest.approx(loss.item())
    # Independent reference: mean over masked pixels of the channel-mean squared error.
    error = ((prediction - target) ** 2).mean(dim=1)
    assert loss.item() == pytest.approx(error[mask[:, 0]].mean().item(), rel=1e-6)
    # And unmasked pixels get no gradient.
    pred = prediction.clone().requires_grad_(True)
    masked_mse_loss(pred, target, mask, 8).backward()
    assert pred.grad is not None
    assert torch.all(pred.grad.masked_select(~mask.expand_as(pred)) == 0)


def test_norm_pix_loss_matches_per_patch_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(2, 1, 16, 16, generator=gen)
    normalised = normalize_patches(target, 8)
    # Reference: patchify, then (x - mean) / sqrt(unbiased var + eps) per patch.
    patches = target.reshape(2, 1, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, 64)
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    expected = ((patches - mean) / (var + 1e-6).sqrt()).reshape(2, 2, 2, 1, 8, 8)
    expected = expected.permute(0, 3, 1, 4, 2, 5).reshape(2, 1, 16, 16)
    torch.testing.assert_close(normalised, expected, rtol=1e-4, atol=1e-4)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    zero = masked_mse_loss(expected, target, mask, 8, norm_pix_loss=True)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Augmentation


def test_random_resized_crop_is_seeded_and_keeps_size() -> None:
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    first = random_resized_crop(images, torch.Generator().manual_seed(5), scale=(0.6, 1.0))
    again = random_resized_crop(images, torch.Generator().manual_seed(5), scale=(0.6, 1.0))
    assert first.shape == images.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, images)
    # scale (1, 1) with ratio (1, 1) is the whole image.
    whole = random_resized_crop(images, torch.Generator(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(whole, images)


# ---------------------------------------------------------------------------------------------
# Training and files


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Recipe, list[str]]:
    tmp = tmp_path_factory.mktemp("mae")
    recipe = make_recipe(tmp)
    cwd = os.getcwd()
    os.chdir(tmp)  # proves that nothing (lightning_logs, checkpoints) lands in the CWD
    try:
        result = train_mae(recipe, samples=BlobImages(16))
        listing = sorted(p.name for p in tmp.iterdir())
    finally:
        os.chdir(cwd)
    return tmp, result, recipe, listing


def test_train_mae_writes_files_and_lowers_the_loss(
    trained: tuple[Path, Any, Recipe, list[str]],
) -> None:
    tmp, result, _, listing = trained
    assert listing == ["run"]  # no lightning_logs / checkpoints in the working directory
    folder = tmp / "run" / "mae"
    assert result.checkpoint == folder / "mae.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [
        "mae.ckpt",
        "mae_encoder.json",
        "mae_encoder.safetensors",
    ]
    assert result.epochs == 4 and len(result.loss_history) == 4
    assert result.final_loss == result.loss_history[-1]
    assert result.loss_history[-1] < 0.7 * result.loss_history[0]
    assert result.wall_time_s > 0 and result.n_images == 16
    data = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert data["info"]["encoder"] == ENCODER and data["info"]["in_channels"] == 1


def test_checkpoint_and_encoder_file_agree(trained: tuple[Path, Any, Recipe, list[str]]) -> None:
    _, result, _, _ = trained
    from alframe.embed.extract import weights_hash

    task = load_mae(result.checkpoint)
    assert task.loss_history == pytest.approx(result.loss_history)
    from_ckpt, info = load_mae_encoder(result.checkpoint)
    from_file, file_info = load_mae_encoder(result.encoder_weights)
    assert info["encoder"] == file_info["encoder"] == ENCODER
    assert weights_hash(from_ckpt) == weights_hash(from_file) == weights_hash(task.encoder)
    assert info["encoder_weights_hash"] == weights_hash(from_ckpt)


def test_train_mae_is_deterministic(
    tmp_path: Path, trained: tuple[Path, Any, Recipe, list[str]]
) -> None:
    _, first, recipe, _ = trained
    again = train_mae(recipe, out_dir=tmp_path / "again", samples=BlobImages(16))
    assert again.loss_history == first.loss_history
    from alframe.embed.extract import weights_hash

    assert weights_hash(load_mae(again.checkpoint)) == weights_hash(load_mae(first.checkpoint))


def test_without_a_source_the_mae_trains_on_the_pool_and_says_so(tmp_path: Path) -> None:
    """A single-site pool: the pool's own images (data.train) train the MAE, with one note."""
    from alframe.data.synthetic import write_synthetic_dataset
    from alframe.embed.mae import SingleSiteNote

    write_synthetic_dataset(tmp_path, n_images=6, domains=("tgt",), image_size=32)
    recipe = make_recipe(tmp_path, source=False, max_epochs=1)
    with pytest.warns(SingleSiteNote, match="trained on the pool's own"):
        result = train_mae(recipe)
    assert result.n_images == 6 and result.checkpoint.is_file()
    info = json.loads((tmp_path / "run" / "mae" / "mae_encoder.json").read_text())
    assert info["source"] is None


def test_train_mae_refuses_target_images(tmp_path: Path) -> None:
    from alframe.data.samples import Sample

    recipe = make_recipe(tmp_path)
    samples = [
        Sample("src/a", "src", "a", tmp_path / "a.png", None),
        Sample("tgt/b", "tgt", "b", tmp_path / "b.png", tmp_path / "b_mask.png"),
    ]
    with pytest.raises(DataError, match=r"never see target images.*tgt/b"):
        train_mae(recipe, samples=samples)
    assert not (tmp_path / "run").exists()


def test_train_mae_needs_two_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2"):
        train_mae(make_recipe(tmp_path), samples=BlobImages(1))


def test_lr_follows_the_mae_rule() -> None:
    task = MaskedAutoencoderTask(encoder_name=ENCODER, base_lr=1.5e-4, batch_size=64)
    assert task.learning_rate == pytest.approx(1.5e-4 * 64 / 256)


def test_load_mae_refuses_foreign_files(tmp_path: Path) -> None:
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ModelError, match="not an alframe MAE checkpoint"):
        load_mae(foreign)
    with pytest.raises(ModelError, match="train-mae"):
        load_mae_encoder(tmp_path / "missing.ckpt")


def test_save_mae_roundtrip_keeps_hyperparameters(tmp_path: Path) -> None:
    task = MaskedAutoencoderTask(
        encoder_name=ENCODER, mask_ratio=0.5, patch_size=8, norm_pix_loss=True
    )
    checkpoint, _ = save_mae(task, tmp_path)
    loaded = load_mae(checkpoint)
    assert loaded.hparams["mask_ratio"] == 0.5 and loaded.hparams["patch_size"] == 8
    assert loaded.hparams["norm_pix_loss"] is True
    for key, value in task.mae.state_dict().items():
        assert torch.equal(value, loaded.mae.state_dict()[key]), key


class _StopAfterEpoch(L.Callback):
    """Fails the fit at the end of epoch ``epoch`` (0-based), after the resume point is saved."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


class _EpochCounter(L.Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


def test_interrupted_mae_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, trained: tuple[Path, Any, Recipe, list[str]]
) -> None:
    from alframe.embed.extract import weights_hash

    _, first, recipe, _ = trained
    out = tmp_path / "killed"
    # A plain callback runs before the resume-point Checkpoint: failing at the end of epoch 2
    # (0-based) leaves the resume point of epoch 1.
    with pytest.raises(RuntimeError, match="killed"):
        train_mae(recipe, out_dir=out, samples=BlobImages(16), callbacks=[_StopAfterEpoch(2)])
    folder = out / "mae"
    assert (folder / "resume.ckpt").is_file() and not (folder / "mae.ckpt").exists()
    counter = _EpochCounter()
    resumed = train_mae(recipe, out_dir=out, samples=BlobImages(16), callbacks=[counter])
    assert counter.epochs == [2, 3]  # continued; a restart would run 0..3 to the same weights
    assert resumed.loss_history == pytest.approx(first.loss_history)
    assert weights_hash(load_mae(resumed.checkpoint)) == weights_hash(load_mae(first.checkpoint))
    assert sorted(p.name for p in folder.iterdir()) == [
        "mae.ckpt",
        "mae_encoder.json",
        "mae_encoder.safetensors",
    ]


def test_a_resume_point_of_other_settings_is_not_used(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, max_epochs=3)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        train_mae(recipe, out_dir=out, samples=BlobImages(16), callbacks=[_StopAfterEpoch(2)])
    other = make_recipe(tmp_path, max_epochs=3, mask_ratio=0.5)
    result = train_mae(other, out_dir=out, samples=BlobImages(16))
    fresh = train_mae(other, out_dir=tmp_path / "fresh", samples=BlobImages(16))
    assert result.loss_history == pytest.approx(fresh.loss_history)  # started from scratch
