"""Embedding cache (hits, misses, refusals) and the recipe-level pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from alframe.config.schema import Recipe
from alframe.embed import pipeline
from alframe.embed.cache import EmbeddingCache, EmbeddingKey, ids_hash, preprocessing_signature
from alframe.errors import ConfigError, ModelError, StateError


def _prep(**changes: Any) -> str:
    settings: dict[str, Any] = {
        "image_size": (32, 32),
        "in_channels": 1,
        "normalization": {"method": "percentile", "low": 0.5, "high": 99.5},
        "concat_penultimate": False,
        "backbone": "mae",
        **changes,
    }
    return preprocessing_signature(**settings)


IDS = ["pool/a", "pool/b", "pool/c"]


def _array(seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((3, 8)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_returns_the_stored_array(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    key = EmbeddingKey.create("w" * 64, IDS, _prep())
    assert cache.get(key) is None
    path = cache.put(key, IDS, _array(), info={"encoder": "resnet18"})
    assert path.is_file() and cache.sidecar_path(key).is_file()
    got = cache.get(key)
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, _array())
    entry = cache.get_entry(EmbeddingKey.create("w" * 64, list(IDS), _prep()))
    assert entry is not None and entry[1] == IDS
    # No temp files are left behind.
    assert sorted(p.suffix for p in path.parent.iterdir()) == [".json", ".npy"]


@pytest.mark.parametrize(
    "other",
    [
        EmbeddingKey.create("v" * 64, IDS, _prep()),  # other weights
        EmbeddingKey.create("w" * 64, IDS[::-1], _prep()),  # same ids, other order
        EmbeddingKey.create("w" * 64, [*IDS, "pool/d"], _prep()),  # other ids
        EmbeddingKey.create("w" * 64, IDS, _prep(image_size=(64, 64))),
        EmbeddingKey.create("w" * 64, IDS, _prep(in_channels=3)),
        EmbeddingKey.create("w" * 64, IDS, _prep(normalization={"method": "zscore"})),
        EmbeddingKey.create("w" * 64, IDS, _prep(concat_penultimate=True)),
        EmbeddingKey.create("w" * 64, IDS, _prep(backbone="timm")),
    ],
)
def test_cache_misses_for_any_other_key(tmp_path: Path, other: EmbeddingKey) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put(EmbeddingKey.create("w" * 64, IDS, _prep()), IDS, _array())
    assert cache.get(other) is None


def _stored(tmp_path: Path) -> tuple[EmbeddingCache, EmbeddingKey]:
    cache = EmbeddingCache(tmp_path)
    key = EmbeddingKey.create("w" * 64, IDS, _prep())
    cache.put(key, IDS, _array())
    return cache, key


def _edit_sidecar(cache: EmbeddingCache, entry: EmbeddingKey, **changes: Any) -> None:
    path = cache.sidecar_path(entry)
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_cache_refuses_a_tampered_array(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path)
    np.save(cache.array_path(key), _array(seed=1))  # same shape, other values
    with pytest.raises(StateError, match=r"checksum.*delete .*npy.*recompute"):
        cache.get(key)
    # Nothing was deleted: the user decides.
    assert cache.array_path(key).is_file() and cache.sidecar_path(key).is_file()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda c, k: np.save(c.array_path(k), _array()[:2]), "shape"),
        (lambda c, k: c.array_path(k).write_bytes(b"not numpy"), "unreadable array"),
        (lambda c, k: c.array_path(k).unlink(), "missing"),
        (lambda c, k: c.sidecar_path(k).write_text("{oops"), "unreadable sidecar"),
        (lambda c, k: _edit_sidecar(c, k, ids=["pool/x", "pool/b", "pool/c"]), "ids"),
        (
            lambda c, k: _edit_sidecar(c, k, key={**k.as_dict(), "weights_hash": "0" * 64}),
            "another key",
        ),
        (lambda c, k: _edit_sidecar(c, k, format="something else"), "not an alframe"),
        (
            lambda c, k: np.save(c.array_path(k), _array().astype(np.float64)),
            "float32",
        ),
    ],
)
def test_cache_refuses_stale_or_corrupt_entries(tmp_path: Path, tamper: Any, message: str) -> None:
    cache, key = _stored(tmp_path)
    tamper(cache, key)
    with pytest.raises(StateError, match=message):
        cache.get(key)


def test_cache_put_validates_and_overwrites(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path)
    with pytest.raises(ValueError, match="ids"):
        cache.put(key, IDS[::-1], _array())
    with pytest.raises(ValueError, match="N=3"):
        cache.put(key, IDS, _array()[:2])
    cache.put(key, IDS, _array(seed=5))
    np.testing.assert_array_equal(cache.get(key), _array(seed=5))
    assert cache.delete(key) and cache.get(key) is None


def test_orphan_array_without_sidecar_is_a_miss(tmp_path: Path) -> None:
    # A crash between the two writes leaves an array without its sidecar (the commit marker).
    cache, key = _stored(tmp_path)
    cache.sidecar_path(key).unlink()
    assert cache.get(key) is None


def test_ids_hash_is_order_sensitive() -> None:
    assert ids_hash(["a", "b"]) != ids_hash(["b", "a"])
    assert ids_hash(["a", "b"]) == ids_hash(("a", "b"))
    # No ambiguity from joining: ["a,b"] is not ["a", "b"].
    assert ids_hash(["a,b"]) != ids_hash(["a", "b"])


# ---------------------------------------------------------------------------------------------
# Pipeline


class NoiseImages(Dataset[dict[str, Any]]):
    def __init__(self, ids: list[str], seed: int = 0) -> None:
        self.ids = ids
        self.images = torch.rand(len(ids), 1, 32, 32, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "id": self.ids[index], "index": index}


def make_recipe(tmp_path: Path, backbone: str = "timm", **data: Any) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "embed_test",
            "seed": 0,
            "data": {
                "root": str(tmp_path),
                "datasets": {"pool": {"path": "pool"}},
                "train": {"dataset": "pool"},
                "image_size": [32, 32],
                **data,
            },
            "embed": {"backbone": backbone, "encoder": "resnet10t", "batch_size": 4},
            "train": {"progress": False},
            "output_dir": str(tmp_path / "run"),
        }
    )


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the catalog and the dataset with in-memory stand-ins (no alframe.data needed)."""
    samples = [SimpleNamespace(id=f"pool/{i:02d}") for i in range(6)]
    monkeypatch.setattr(pipeline, "_samples_for", lambda recipe, which: samples)
    monkeypatch.setattr(
        pipeline, "_make_dataset", lambda recipe, items: NoiseImages([s.id for s in items])
    )
    return samples


def test_embed_pool_caches_by_weights_hash(tmp_path: Path, fake_data: list[Any]) -> None:
    recipe = make_recipe(tmp_path)
    first = pipeline.embed_pool(recipe, "pool", progress=False)
    assert not first.from_cache
    assert first.ids == [s.id for s in fake_data]
    assert first.embeddings.shape == (6, 512) and first.embeddings.dtype == np.float32
    assert first.cache_path.parent == tmp_path / "run" / "embeddings"
    second = pipeline.embed_pool(recipe, "pool", progress=False)
    assert second.from_cache and second.cache_path == first.cache_path
    assert second.weights_hash == first.weights_hash
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    # Other preprocessing → another entry; other weights (seed of the random init) → another.
    other_norm = make_recipe(tmp_path, normalization={"method": "zscore"})
    assert not pipeline.embed_pool(other_norm, progress=False).from_cache
    other_seed = make_recipe(tmp_path).model_copy(update={"seed": 1})
    reseeded = pipeline.embed_pool(other_seed, progress=False)
    assert not reseeded.from_cache and reseeded.weights_hash != first.weights_hash
    assert len(list((tmp_path / "run" / "embeddings").glob("*.npy"))) == 3


def test_embed_pool_refuses_a_stale_entry_until_recomputed(
    tmp_path: Path, fake_data: list[Any]
) -> None:
    recipe = make_recipe(tmp_path)
    first = pipeline.embed_pool(recipe, progress=False)
    np.save(first.cache_path, np.zeros_like(first.embeddings))
    with pytest.raises(StateError, match="recompute"):
        pipeline.embed_pool(recipe, progress=False)
    fixed = pipeline.embed_pool(recipe, recompute=True, progress=False)
    assert not fixed.from_cache
    np.testing.assert_array_equal(fixed.embeddings, first.embeddings)
    assert pipeline.embed_pool(recipe, progress=False).from_cache


def test_embed_pool_uses_embed_cache_dir(tmp_path: Path, fake_data: list[Any]) -> None:
    recipe = make_recipe(tmp_path)
    recipe = recipe.model_copy(
        update={"embed": recipe.embed.model_copy(update={"cache_dir": str(tmp_path / "c")})}
    )
    assert pipeline.embed_pool(recipe, progress=False).cache_path.parent == tmp_path / "c"


def test_mae_backbone_without_checkpoint_says_what_to_do(
    tmp_path: Path, fake_data: list[Any]
) -> None:
    recipe = make_recipe(tmp_path, backbone="mae")
    with pytest.raises(ModelError, match=r"alframe embed train-mae --recipe R.*embed\.weights"):
        pipeline.embed_pool(recipe, progress=False)
    assert not (tmp_path / "run").exists()


def test_mae_backbone_reads_the_run_checkpoint(tmp_path: Path, fake_data: list[Any]) -> None:
    from alframe.embed.mae import MaskedAutoencoderTask, save_mae

    save_mae(MaskedAutoencoderTask(encoder_name="tu-resnet10t"), tmp_path / "run" / "mae")
    result = pipeline.embed_pool(make_recipe(tmp_path, backbone="mae"), progress=False)
    assert result.embeddings.shape == (6, 512)


def test_encoder_channels_must_match_the_data(tmp_path: Path, fake_data: list[Any]) -> None:
    from alframe.embed.mae import MaskedAutoencoderTask, save_mae

    save_mae(MaskedAutoencoderTask(encoder_name="tu-resnet10t"), tmp_path / "run" / "mae")
    recipe = make_recipe(tmp_path, backbone="mae", in_channels=3)
    with pytest.raises(ModelError, match=r"data\.in_channels"):
        pipeline.embed_pool(recipe, progress=False)


def test_source_embedding_needs_data_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.source"):
        pipeline.embed_pool(make_recipe(tmp_path), "source", progress=False)


def test_segmentation_backbone_needs_weights(tmp_path: Path, fake_data: list[Any]) -> None:
    with pytest.raises(ConfigError, match=r"embed\.weights"):
        pipeline.embed_pool(make_recipe(tmp_path, backbone="segmentation"), progress=False)


def test_end_to_end_with_the_data_package(tmp_path: Path) -> None:
    """train-mae on source images, then embed pool and source through the real data layer."""
    pytest.importorskip("alframe.data.dataset", reason="alframe.data is not finished yet")
    from alframe.config import recipe_from_dict
    from alframe.data import DataCatalog, synthetic_recipe_dict, write_synthetic_dataset
    from alframe.embed.mae import train_mae

    write_synthetic_dataset(tmp_path / "data", n_images=8, image_size=32)
    raw = synthetic_recipe_dict(tmp_path / "data", image_size=32)
    raw["output_dir"] = str(tmp_path / "run")
    raw["train"] = {"progress": False, "accelerator": "cpu"}
    raw["embed"] = {"mae": {"encoder": "tu-resnet10t", "max_epochs": 1, "batch_size": 4}}
    recipe = recipe_from_dict(raw)

    result = train_mae(recipe)
    assert result.n_images == 8 and result.checkpoint.is_file()
    pool = pipeline.embed_pool(recipe, "pool", progress=False)
    catalog = DataCatalog(recipe)
    assert pool.ids == [s.id for s in catalog.samples(recipe.data.train)]
    assert all(i.startswith("target/") for i in pool.ids)
    source = pipeline.embed_pool(recipe, "source", progress=False)
    assert all(i.startswith("source/") for i in source.ids) and len(source.ids) == 8
    assert pool.weights_hash == source.weights_hash
    np.testing.assert_allclose(np.linalg.norm(source.embeddings, axis=1), 1.0, rtol=1e-5)
    assert pipeline.embed_pool(recipe, "pool", progress=False).from_cache


def test_embed_devices_from_the_recipe_reach_the_predict_loop_and_share_the_cache(
    tmp_path: Path, fake_data: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from alframe.embed import extract
    from alframe.inference import Hardware

    used: list[Hardware] = []
    real = extract.predict_rows

    def recording(net: Any, step: Any, data: Any, hardware: Hardware, **kw: Any) -> Any:
        used.append(hardware)
        # One process stands in for the two asked for: tests/test_inference.py runs real DDP.
        return real(net, step, data, Hardware(), **kw)

    monkeypatch.setattr(extract, "predict_rows", recording)
    one = pipeline.embed_pool(make_recipe(tmp_path / "one"), "pool", progress=False)
    split = make_recipe(tmp_path / "split")
    split = split.model_copy(
        update={"embed": split.embed.model_copy(update={"devices": "cpu,cpu"})}
    )
    two = pipeline.embed_pool(split, "pool", progress=False)
    # No GPU here: "auto" is one CPU process; "cpu,cpu" two DDP processes.
    assert used == [Hardware("cpu", 1, "auto"), Hardware("cpu", 2, "ddp_spawn")]
    np.testing.assert_array_equal(two.embeddings, one.embeddings)
    # Where rows were computed is not part of the cache key: the split run's entry serves a
    # one-device recipe with the same output folder.
    same_folder = make_recipe(tmp_path / "split")
    assert pipeline.embed_pool(same_folder, "pool", progress=False).from_cache
    # An explicit argument overrides the recipe.
    pipeline.embed_pool(split, "pool", progress=False, recompute=True, device="cpu")
    assert used[-1] == Hardware("cpu", 1, "auto")


def test_embed_ensemble_from_the_recipe(tmp_path: Path, fake_data: list[Any]) -> None:
    """``embed.ensemble`` adds MAE members; the cache keeps them apart from the main MAE."""
    from alframe.embed.mae import MaskedAutoencoderTask, save_mae
    from alframe.errors import ConfigError, ModelError

    paths = []
    for seed in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            task = MaskedAutoencoderTask(encoder_name="tu-resnet10t", in_channels=1)
        save_mae(task, tmp_path / f"mae{seed}")
        paths.append(str(tmp_path / f"mae{seed}" / "mae.ckpt"))

    def recipe(ensemble: list[str], backbone: str = "mae") -> Recipe:
        base = make_recipe(tmp_path, backbone=backbone)
        embed = base.embed.model_copy(update={"weights": paths[0], "ensemble": ensemble})
        return base.model_copy(update={"embed": embed})

    single = pipeline.embed_pool(recipe([]), progress=False)
    pair = pipeline.embed_pool(recipe([paths[1]]), progress=False)
    assert not pair.from_cache and pair.weights_hash != single.weights_hash
    assert pair.embeddings.shape == (6, 2 * single.embeddings.shape[1])
    np.testing.assert_allclose(
        pair.embeddings[:, : single.embeddings.shape[1]] * np.sqrt(2), single.embeddings, atol=2e-6
    )
    assert pipeline.embed_pool(recipe([paths[1]]), progress=False).from_cache
    with pytest.raises(ModelError, match=r"embed\.ensemble: no MAE checkpoint"):
        pipeline.embed_pool(recipe([str(tmp_path / "missing.ckpt")]), progress=False)
    with pytest.raises(ConfigError, match="backbone is 'timm'"):
        pipeline.embed_pool(recipe([paths[1]], backbone="timm"), progress=False)


def test_float16_storage_gives_the_same_rows_fresh_and_from_the_cache(
    tmp_path: Path, fake_data: list[Any]
) -> None:
    """``embed.storage_dtype: float16``: half the disk, its own cache key, identical rows on reuse."""
    recipe = make_recipe(tmp_path)
    half = recipe.model_copy(
        update={"embed": recipe.embed.model_copy(update={"storage_dtype": "float16"})}
    )
    full = pipeline.embed_pool(recipe, progress=False)
    fresh = pipeline.embed_pool(half, progress=False)
    assert not fresh.from_cache and fresh.cache_path != full.cache_path
    assert np.load(fresh.cache_path, mmap_mode="r").dtype == np.float16
    np.testing.assert_array_equal(fresh.embeddings, full.embeddings.astype(np.float16))
    again = pipeline.embed_pool(half, progress=False)
    assert again.from_cache and again.embeddings.dtype == np.float32
    np.testing.assert_array_equal(again.embeddings, fresh.embeddings)
