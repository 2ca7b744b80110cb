"""SegmentationDataset / SegmentationDataModule on seeded synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alframe.config import recipe_from_dict
from alframe.data import (
    DataCatalog,
    SegmentationDataModule,
    SegmentationDataset,
    synthetic_recipe_dict,
    write_synthetic_dataset,
)
from alframe.errors import DataError


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_images=12, image_size=48)


def _recipe(root: Path, **data: Any) -> Any:
    raw = synthetic_recipe_dict(root, image_size=32)
    raw["data"].update(data)
    raw["train"]["batch_size"] = 4
    return recipe_from_dict(raw)


def test_synthetic_data_is_deterministic_and_shifted(tmp_path: Path) -> None:
    from PIL import Image

    a = write_synthetic_dataset(tmp_path / "a", n_images=4, image_size=32, seed=7)
    b = write_synthetic_dataset(tmp_path / "b", n_images=4, image_size=32, seed=7)
    for domain in ("source", "target"):
        for sub in ("images", "masks"):
            for i in range(4):
                name = f"{domain}/{sub}/{domain}_{i:03d}.png"
                np.testing.assert_array_equal(
                    np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))
                )
    masks = [np.asarray(Image.open(a / f"source/masks/source_{i:03d}.png")) for i in range(4)]
    assert all(set(np.unique(m)) <= {0, 255} and m.max() == 255 for m in masks)
    means = {
        d: np.mean([np.asarray(Image.open(a / f"{d}/images/{d}_{i:03d}.png")) for i in range(4)])
        for d in ("source", "target")
    }
    assert abs(means["source"] - means["target"]) > 10


def test_synthetic_recipe_validates(synthetic_root: Path) -> None:
    recipe = recipe_from_dict(synthetic_recipe_dict(synthetic_root))
    assert recipe.name == "synthetic_demo"
    assert recipe.model.encoder == "resnet18" and recipe.train.max_epochs == 3
    assert set(recipe.data.evaluate) == {"target_test", "source"}
    catalog = DataCatalog(recipe)
    assert len(catalog.samples(recipe.data.train)) == 9  # 0.75 of 12


def test_dataset_item_shapes(synthetic_root: Path) -> None:
    recipe = _recipe(synthetic_root)
    samples = DataCatalog(recipe).dataset("target")
    dataset = SegmentationDataset(samples, recipe.data, recipe.augment.train, train=True, seed=0)
    item = dataset[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["id"] == samples[3].id and item["index"] == 3 and item["labelled"]


def test_unlabelled_items_get_ignore_masks(synthetic_root: Path) -> None:
    raw = synthetic_recipe_dict(synthetic_root, image_size=32)
    raw["data"]["datasets"]["source"]["masks"] = None
    raw["data"]["in_channels"] = 3
    recipe = recipe_from_dict(raw)
    samples = DataCatalog(recipe).dataset("source")
    item = SegmentationDataset(samples, recipe.data, [], train=False)[0]
    assert item["image"].shape == (3, 32, 32)
    assert (item["mask"] == -1).all() and not item["labelled"]


def test_datamodule_batches(synthetic_root: Path) -> None:
    module = SegmentationDataModule(_recipe(synthetic_root))
    module.setup("fit")
    train_ids = {s.id for s in module.train_samples}
    val_ids = {s.id for s in module.val_samples}
    assert len(train_ids) + len(val_ids) == 9 and len(val_ids) == 2 and not train_ids & val_ids
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert len(batch["id"]) == 4 and batch["index"].shape == (4,)
    val = next(iter(module.val_dataloader()))
    assert val["image"].shape == (2, 1, 32, 32)
    loaders = module.eval_dataloaders()
    assert list(loaders) == ["target_test", "source"]
    assert len(loaders["target_test"].dataset) == 3  # type: ignore[arg-type]
    assert len(loaders["source"].dataset) == 12  # type: ignore[arg-type]


def test_datamodule_is_seeded(synthetic_root: Path) -> None:
    def first_ids() -> list[str]:
        module = SegmentationDataModule(_recipe(synthetic_root))
        return list(next(iter(module.train_dataloader()))["id"])

    assert first_ids() == first_ids()


def test_datamodule_train_ids_and_explicit_val(synthetic_root: Path) -> None:
    recipe = _recipe(synthetic_root, val={"dataset": "target", "split": "test"})
    all_train = DataCatalog(recipe).samples(recipe.data.train)
    chosen = [s.id for s in all_train[:5]]
    module = SegmentationDataModule(recipe, train_ids=chosen)
    module.setup()
    assert [s.id for s in module.train_samples] == chosen
    assert len(module.val_samples) == 3
    with pytest.raises(DataError, match=r"train ids 'target/nope' are not in data.train"):
        SegmentationDataModule(recipe, train_ids=["target/nope"]).setup()


def test_datamodule_val_from_labelled_ids_only(synthetic_root: Path) -> None:
    recipe = _recipe(synthetic_root)
    all_train = DataCatalog(recipe).samples(recipe.data.train)
    chosen = [s.id for s in all_train[:4]]
    module = SegmentationDataModule(recipe, train_ids=chosen)
    module.setup()
    used = {s.id for s in module.train_samples} | {s.id for s in module.val_samples}
    assert used == set(chosen) and module.has_val
    single = SegmentationDataModule(recipe, train_ids=chosen[:1])
    assert not single.has_val and len(single.val_dataloader().dataset) == 0  # type: ignore[arg-type]


def test_lazy_exports_are_real() -> None:
    import alframe.data as data

    assert data.IGNORE_INDEX == -1
    with pytest.raises(AttributeError):
        data.does_not_exist  # noqa: B018
