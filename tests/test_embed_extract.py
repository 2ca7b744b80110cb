"""Embedding extraction: shapes, unit rows, determinism, no masking, hashing, timm weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from alframe.embed.extract import (
    Embedder,
    encoder_from_mae,
    encoder_from_timm,
    extract_embeddings,
    extract_embeddings_and_ids,
    file_hash,
    pool_features,
    weights_hash,
)
from alframe.embed.mae import MaskedAutoencoderTask, save_mae
from alframe.errors import ModelError

ENCODER = "tu-resnet10t"


class NoiseImages(Dataset[dict[str, Any]]):
    """Seeded random images as SegmentationDataset-style dicts."""

    def __init__(self, n: int, channels: int = 1, size: int = 32, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, channels, size, size, generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "id": f"pool/{index:03d}", "index": index}


@pytest.fixture(scope="module")
def mae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with torch.random.fork_rng(devices=[]):  # a fixed init without touching the global RNG
        torch.manual_seed(0)
        task = MaskedAutoencoderTask(encoder_name=ENCODER, in_channels=1)
    folder = tmp_path_factory.mktemp("mae")
    save_mae(task, folder)
    return folder


def test_embeddings_are_unit_float32_rows(mae_folder: Path) -> None:
    embedder = encoder_from_mae(mae_folder / "mae.ckpt")
    assert embedder.kind == "mae" and embedder.name == ENCODER and embedder.in_channels == 1
    array = extract_embeddings(embedder, NoiseImages(10), batch_size=4, progress=False)
    assert array.shape == (10, 512) and array.dtype == np.float32
    assert array.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-5)


def test_same_weights_and_data_give_identical_embeddings(mae_folder: Path) -> None:
    first = extract_embeddings(encoder_from_mae(mae_folder), NoiseImages(6), 4, progress=False)
    # Different batching, a fresh load from the encoder-only file: bit-identical rows.
    second_embedder = encoder_from_mae(mae_folder / "mae_encoder.safetensors")
    second = extract_embeddings(second_embedder, NoiseImages(6), 5, progress=False)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)
    again = extract_embeddings(encoder_from_mae(mae_folder), NoiseImages(6), 4, progress=False)
    assert np.array_equal(first, again)


def test_embeddings_are_computed_without_masking(mae_folder: Path, tmp_path: Path) -> None:
    dataset = NoiseImages(4)
    embedder = encoder_from_mae(mae_folder)
    array = extract_embeddings(embedder, dataset, 4, progress=False)
    # Independent reference: GAP of the last stage of the *clean* images, L2-normalised.
    with torch.no_grad():
        deepest = embedder.module.eval()(dataset.images)[-1]
    expected = F.normalize(deepest.mean(dim=(2, 3)), dim=1).numpy()
    np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-6)
    # The same encoder weights inside an MAE with another mask ratio give the same embeddings.
    other = MaskedAutoencoderTask(encoder_name=ENCODER, mask_ratio=0.3, patch_size=4)
    other.mae.encoder.load_state_dict(embedder.module.state_dict())
    save_mae(other, tmp_path)
    np.testing.assert_array_equal(
        extract_embeddings(encoder_from_mae(tmp_path), dataset, 4, progress=False), array
    )


def test_concat_penultimate_doubles_information() -> None:
    embedder = encoder_from_timm("resnet10t", 1, seed=1)
    array = extract_embeddings(embedder, NoiseImages(3), 3, concat_penultimate=True, progress=False)
    assert array.shape == (3, 512 + 256)
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-5)
    # Each stage is normalised before concatenation: both halves carry norm 1/sqrt(2).
    np.testing.assert_allclose(np.linalg.norm(array[:, :512], axis=1), 2**-0.5, rtol=1e-5)


def test_pool_features_needs_two_stages_for_concat() -> None:
    with pytest.raises(ModelError, match="concat_penultimate"):
        pool_features([torch.ones(2, 3, 4, 4)], concat_penultimate=True)


def test_extraction_restores_training_mode_and_keeps_ids(mae_folder: Path) -> None:
    embedder = encoder_from_mae(mae_folder)
    embedder.module.train()
    array, ids = extract_embeddings_and_ids(embedder, NoiseImages(5), 2, progress=False)
    assert embedder.module.training
    assert ids == [f"pool/{i:03d}" for i in range(5)] and len(array) == 5


def test_plain_module_tuple_batches_and_loader() -> None:
    embedder = encoder_from_timm("resnet10t", 1)
    images = NoiseImages(4).images
    tuples = [(images[i], 0) for i in range(4)]
    from_tuples = extract_embeddings(embedder.module, tuples, 2, progress=False)
    loader = DataLoader(NoiseImages(4), batch_size=3, shuffle=False)
    np.testing.assert_allclose(
        from_tuples, extract_embeddings(embedder, loader, 99, progress=False), atol=1e-6
    )
    with pytest.raises(ValueError, match="shuffle"):
        extract_embeddings(embedder, DataLoader(NoiseImages(4), shuffle=True), 2, progress=False)


def test_channel_mismatch_is_a_clear_error() -> None:
    embedder = encoder_from_timm("resnet10t", 1)
    with pytest.raises(ModelError, match=r"data\.in_channels"):
        extract_embeddings(embedder, NoiseImages(2, channels=3), 2, progress=False)


def test_weights_hash_changes_when_one_weight_changes() -> None:
    embedder = encoder_from_timm("resnet10t", 1, seed=0)
    before = weights_hash(embedder)
    assert before == weights_hash(embedder.module) == weights_hash(embedder.module.state_dict())
    assert before == weights_hash(encoder_from_timm("resnet10t", 1, seed=0))  # seeded init
    assert before != weights_hash(encoder_from_timm("resnet10t", 1, seed=1))
    with torch.no_grad():
        first = next(iter(embedder.module.parameters()))
        first.view(-1)[0] += 1e-3
    assert weights_hash(embedder) != before
    # A BatchNorm running statistic changes eval outputs, so it changes the hash too.
    bn = next(m for m in embedder.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    previous = weights_hash(embedder)
    assert bn.running_mean is not None
    bn.running_mean[0] += 1.0
    assert weights_hash(embedder) != previous


def test_weights_hash_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert weights_hash(path) == file_hash(path)
    assert (
        weights_hash(str(path))
        == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(ModelError, match="does not exist"):
        weights_hash(tmp_path / "missing.pth")


def test_timm_backbone_from_a_local_weights_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    # A full classifier (head included) with RGB stem, as a downloaded ImageNet file would be.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        full = timm.create_model("resnet10t", pretrained=False, in_chans=3, num_classes=10)
    state = {f"module.{k}": v for k, v in full.state_dict().items()}  # DataParallel prefix
    pth = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": state}, pth)
    rgb = encoder_from_timm("resnet10t", 3, weights=pth)
    assert rgb.source == pth and rgb.kind == "timm"
    for key, value in rgb.module.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    # The same file for grey images: the stem is adapted (summed over RGB), the rest is copied.
    grey = encoder_from_timm("tu-resnet10t", 1, weights=pth)
    stem = next(k for k, v in grey.module.state_dict().items() if v.ndim == 4)
    torch.testing.assert_close(
        grey.module.state_dict()[stem], full.state_dict()[stem].sum(dim=1, keepdim=True)
    )
    safetensors_file = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(safetensors_file))
    same = encoder_from_timm("resnet10t", 3, weights=safetensors_file)
    assert weights_hash(same) == weights_hash(rgb)
    images = NoiseImages(3, channels=3)
    np.testing.assert_array_equal(
        extract_embeddings(same, images, 3, progress=False),
        extract_embeddings(rgb, images, 3, progress=False),
    )


def test_timm_weights_for_another_model_are_refused(tmp_path: Path) -> None:
    import timm

    other = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ModelError, match="resnet10t"):
        encoder_from_timm("resnet10t", 3, weights=path)
    with pytest.raises(ModelError, match=r"not a timm model.*resnet10t"):
        encoder_from_timm("resnet10tt", 3)
    with pytest.raises(ModelError, match="does not exist"):
        encoder_from_timm("resnet10t", 3, weights=tmp_path / "missing.pth")


def test_segmentation_checkpoint_encoder(tmp_path: Path) -> None:
    models = pytest.importorskip("alframe.models")
    from alframe.embed.extract import encoder_from_segmentation

    task = models.SegmentationTask(
        model_cfg={"arch": "Unet", "encoder": ENCODER}, train_cfg={}, num_classes=2
    )
    path = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    embedder = encoder_from_segmentation(path)
    assert embedder.kind == "segmentation" and embedder.name == ENCODER
    assert embedder.in_channels == 1
    assert weights_hash(embedder) == weights_hash(task.model.encoder)
    array = extract_embeddings(embedder, NoiseImages(2), 2, progress=False)
    assert array.shape == (2, 512)
    with pytest.raises(ModelError, match="does not exist"):
        encoder_from_segmentation(tmp_path / "missing.ckpt")


def test_embedder_wraps_any_feature_module() -> None:
    module = torch.nn.Conv2d(1, 4, 3)
    embedder = Embedder(module, "module", "conv", 1)
    array = extract_embeddings(embedder, NoiseImages(2), 2, progress=False)
    assert array.shape == (2, 4)


def _mae_member(seed: int, folder: Path) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = MaskedAutoencoderTask(encoder_name=ENCODER, in_channels=1)
    save_mae(task, folder)
    return folder / "mae.ckpt"


def test_ensemble_embedding_averages_the_members_distances(tmp_path: Path) -> None:
    """Reference: each member embedded alone, rows concatenated and divided by sqrt(K)."""
    from alframe.embed.extract import encoder_ensemble

    members = [encoder_from_mae(_mae_member(s, tmp_path / f"m{s}")) for s in (1, 2, 3)]
    data = NoiseImages(9, seed=4)
    alone = [extract_embeddings(m, data, batch_size=4, progress=False) for m in members]
    together = extract_embeddings(encoder_ensemble(members), data, batch_size=4, progress=False)
    expected = np.concatenate(alone, axis=1) / np.sqrt(3)
    np.testing.assert_allclose(together, expected, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)

    def sq_dist(x: np.ndarray) -> np.ndarray:
        return np.square(x[:, None, :] - x[None, :, :]).sum(-1)

    mean_of_members = np.mean([sq_dist(a) for a in alone], axis=0)
    np.testing.assert_allclose(sq_dist(together), mean_of_members, atol=1e-5)
    # With penultimate stages too, each member's part is still one of the member's embeddings.
    alone_pen = [
        extract_embeddings(m, data, concat_penultimate=True, progress=False) for m in members
    ]
    together_pen = extract_embeddings(
        encoder_ensemble(members), data, concat_penultimate=True, progress=False
    )
    np.testing.assert_allclose(
        sq_dist(together_pen), np.mean([sq_dist(a) for a in alone_pen], axis=0), atol=1e-5
    )


def test_ensemble_hash_names_and_refusals(tmp_path: Path) -> None:
    from alframe.embed.extract import encoder_ensemble

    one = encoder_from_mae(_mae_member(1, tmp_path / "a"))
    two = encoder_from_mae(_mae_member(2, tmp_path / "b"))
    assert encoder_ensemble([one]) is one
    pair, swapped = encoder_ensemble([one, two]), encoder_ensemble([two, one])
    assert pair.name == f"{ENCODER}x2" and pair.kind == "mae"
    assert len({pair.weights_hash(), swapped.weights_hash(), one.weights_hash()}) == 3
    rgb = Embedder(torch.nn.Conv2d(3, 4, 3), "module", "conv", 3)
    with pytest.raises(ModelError, match="different channel counts"):
        encoder_ensemble([one, rgb])
    with pytest.raises(ModelError, match="at least one member"):
        encoder_ensemble([])
