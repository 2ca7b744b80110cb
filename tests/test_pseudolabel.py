"""RPG label transfer: matching against a NumPy reference, banks, feature hooks, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from alframe.data.synthetic import synthetic_image
from alframe.errors import ConfigError, DataError, StateError
from alframe.pseudolabel import create, names
from alframe.pseudolabel.features import (
    DecoderFeatures,
    EncoderFeatures,
    IntensityFeatures,
    capture_decoder_features,
)
from alframe.pseudolabel.matching import (
    ReferenceBank,
    ReferenceBankBuilder,
    filter_by_similarity,
    match_labels,
)
from alframe.pseudolabel.semisup import SemiSupervisedOptions, sigmoid_rampup


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _bank(features: np.ndarray, labels: np.ndarray, k: int) -> ReferenceBank:
    n = features.shape[0]
    return ReferenceBank(
        torch.from_numpy(features),
        torch.from_numpy(labels.astype(np.int64)),
        torch.zeros(n, 2),
        k,
    )


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred == 1, truth == 1).sum()
    return float(2 * inter / ((pred == 1).sum() + (truth == 1).sum()))


def _references(n: int = 3, size: int = 64) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(n):
        image, mask = synthetic_image(rng, image_size=size)
        images.append(torch.from_numpy(image / 255.0).float()[None])
        masks.append(torch.from_numpy(mask // 255).long())
    return images, masks


# ------------------------------------------------------------------------------- matching


def test_top1_equals_naive_numpy_argmax() -> None:
    rng = np.random.default_rng(1)
    bank_features, queries = _unit(rng, 300, 16), _unit(rng, 500, 16)
    bank_labels = rng.integers(0, 3, 300)
    expected = bank_labels[np.argmax(queries @ bank_features.T, axis=1)]
    best = np.max(queries @ bank_features.T, axis=1)
    for backend in ("torch", "faiss"):
        result = match_labels(torch.from_numpy(queries), _bank(bank_features, bank_labels, 3),
                              backend=backend)  # fmt: skip
        np.testing.assert_array_equal(result.labels.numpy(), expected)
        np.testing.assert_allclose(result.similarity.numpy(), best, atol=1e-5)
        np.testing.assert_allclose(result.confidence.numpy(), best, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 5])
def test_chunked_equals_unchunked(top_k: int) -> None:
    rng = np.random.default_rng(2)
    bank = _bank(_unit(rng, 257, 8), rng.integers(0, 4, 257), 4)
    queries = torch.from_numpy(_unit(rng, 333, 8))
    whole = match_labels(
        queries, bank, top_k=top_k, chunk_size=10_000, bank_block=10_000, backend="torch"
    )
    chunked = match_labels(queries, bank, top_k=top_k, chunk_size=7, bank_block=13, backend="torch")
    torch.testing.assert_close(chunked.labels, whole.labels, rtol=0, atol=0)
    torch.testing.assert_close(chunked.similarity, whole.similarity, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.confidence, whole.confidence, rtol=0, atol=1e-6)
    faiss = match_labels(queries, bank, top_k=top_k, chunk_size=50, backend="faiss")
    torch.testing.assert_close(faiss.labels, whole.labels, rtol=0, atol=0)


def test_topk_vote_and_margin() -> None:
    # Best match is class 1, but the next four (almost as similar) are class 0.
    angles = np.array([0.0, 0.05, 0.06, 0.07, 0.08, 1.5])
    bank_features = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    bank = _bank(bank_features, np.array([1, 0, 0, 0, 0, 1]), 2)
    query = torch.tensor([[1.0, 0.0]])
    assert int(match_labels(query, bank, top_k=1).labels[0]) == 1
    voted = match_labels(query, bank, top_k=5, temperature=0.1)
    assert int(voted.labels[0]) == 0
    scores = bank_features[:5] @ np.array([1.0, 0.0])
    weights = np.exp(scores / 0.1) / np.exp(scores / 0.1).sum()
    margin = weights[1:].sum() - weights[0]
    assert float(voted.confidence[0]) == pytest.approx(margin, abs=1e-5)
    assert float(voted.similarity[0]) == pytest.approx(1.0, abs=1e-6)


def test_spatial_prior_prefers_nearby_reference() -> None:
    # Two references with the same feature, different labels, at opposite corners.
    bank = ReferenceBank(
        torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
        torch.tensor([0, 1]),
        torch.tensor([[0.1, 0.1], [0.9, 0.9]]),
        2,
    )
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positions = torch.tensor([[0.8, 0.85], [0.2, 0.1]])
    result = match_labels(queries, bank, query_positions=positions, spatial_weight=1.0)
    assert result.labels.tolist() == [1, 0]
    expected = 1.0 - (0.1**2 + 0.05**2)
    assert float(result.similarity[0]) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="positions"):
        match_labels(queries, bank, spatial_weight=1.0)


def test_similarity_filter_marks_ignored() -> None:
    labels = torch.zeros(100, dtype=torch.long)
    similarity = torch.linspace(0, 1, 100)
    filtered = filter_by_similarity(labels, similarity, 30.0)
    assert int((filtered == -1).sum()) == 30
    assert torch.equal(filter_by_similarity(labels, similarity, None), labels)
    with pytest.raises(ConfigError):
        filter_by_similarity(labels, similarity, 100.0)


def test_class_balancing_keeps_rare_class() -> None:
    rng = np.random.default_rng(3)
    features = torch.from_numpy(rng.standard_normal((1, 4, 50, 50)).astype(np.float32))
    mask = torch.zeros(1, 50, 50, dtype=torch.long)
    mask[0, :3, :3] = 1  # 9 rare pixels among 2500
    builder = ReferenceBankBuilder(2, max_per_class=100, seed=0)
    builder.add(features, mask)
    bank = builder.build()
    assert bank.class_counts().tolist() == [100, 9]
    rare = features[0, :, :3, :3].reshape(4, -1).T
    assert match_labels(rare, bank).labels.tolist() == [1] * 9
    # Same seed → same bank; streaming two halves keeps the same sample of the same pixels.
    again = ReferenceBankBuilder(2, max_per_class=100, seed=0)
    again.add(features, mask)
    assert torch.equal(again.build().features, bank.features)


def test_bank_errors() -> None:
    builder = ReferenceBankBuilder(2)
    with pytest.raises(DataError, match="no labelled pixel"):
        builder.build()
    with pytest.raises(DataError, match="class indices"):
        builder.add(torch.zeros(1, 2, 4, 4), torch.full((1, 4, 4), 5))
    with pytest.raises(ConfigError):
        ReferenceBankBuilder(2, max_per_class=0)


# ----------------------------------------------------------------------- pseudo-labeller


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: torch.flip(x, [-1]),
        lambda x: torch.flip(x, [-2]),
        lambda x: torch.rot90(x, 1, (-2, -1)),
    ],
    ids=["hflip", "vflip", "rot90"],
)
def test_transformed_copies_get_dice_one(transform: object) -> None:
    images, masks = _references()
    labeller = create("rpg", features=IntensityFeatures(), num_classes=2, max_per_class=20_000)
    labeller.fit(images, masks)
    batch = torch.stack([transform(i) for i in images])  # type: ignore[operator]
    truth = torch.stack([transform(m) for m in masks])  # type: ignore[operator]
    pseudo = labeller.predict(batch)
    assert pseudo.labels.shape == truth.shape
    assert _dice(pseudo.labels.numpy(), truth.numpy()) > 0.99
    assert torch.all(pseudo.confidence > 0.99)  # an exact copy of every pixel is in the bank


def test_registry_and_errors() -> None:
    assert "rpg" in names()
    with pytest.raises(ConfigError, match="rpg"):
        create("rgp", features=IntensityFeatures(), num_classes=2)
    with pytest.raises(ConfigError, match="unknown option"):
        create("rpg", features=IntensityFeatures(), num_classes=2, topk=5)
    labeller = create("rpg", features=IntensityFeatures(), num_classes=2)
    with pytest.raises(StateError, match="fit"):
        labeller.predict(torch.zeros(1, 1, 8, 8))
    with pytest.raises(DataError, match="size"):
        labeller.fit([torch.zeros(1, 8, 8)], [torch.zeros(8, 9, dtype=torch.long)])


# ------------------------------------------------------------------------ feature hooks


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "stride"),
    [("Unet", 1), ("FPN", 4), ("DeepLabV3Plus", 4)],
)
def test_decoder_hook_any_architecture(arch: str, stride: int) -> None:
    torch.manual_seed(0)
    kwargs = {"decoder_channels": (32, 16, 8)} if arch == "Unet" else {}
    depth = 3 if arch == "Unet" else 5
    model = getattr(smp, arch)(
        "resnet18", encoder_weights=None, encoder_depth=depth, in_channels=1, classes=2, **kwargs
    ).eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        before = model(images)
    source = DecoderFeatures(model)
    features = source(images)
    assert features.shape[0] == 2 and features.shape[-1] == 64 // stride
    assert _hooks(model) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(images), before, rtol=0, atol=0)
    # The hook is also removed when the forward pass fails.
    with pytest.raises(RuntimeError), capture_decoder_features(model):
        model(torch.rand(2, 3, 64, 64))
    assert _hooks(model) == 0
    # Decoder features label transformed copies: a flipped copy of the references.
    masks = (images[:, 0] > 0.5).long()
    labeller = create("rpg", features=source, num_classes=2, max_per_class=10_000)
    pseudo = labeller.fit(images, masks).predict(images)
    assert pseudo.labels.shape == masks.shape


def test_encoder_features_multiscale() -> None:
    from alframe.embed.extract import build_smp_encoder

    encoder = build_smp_encoder("resnet18", 1, depth=5)
    features = EncoderFeatures(encoder)(torch.rand(1, 1, 64, 64))
    assert features.shape == (1, 64 + 128 + 256, 16, 16)


# --------------------------------------------------------------------------- training


def test_sigmoid_rampup_values() -> None:
    assert sigmoid_rampup(0, 10, 20) == 0.0
    assert sigmoid_rampup(9, 10, 20) == 0.0
    assert sigmoid_rampup(10, 10, 20) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(20, 10, 20) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(30, 10, 20, max_weight=0.5) == pytest.approx(0.5)
    assert sigmoid_rampup(1000, 10, 20) == 1.0
    assert sigmoid_rampup(10, 10, 0) == 1.0
    values = [sigmoid_rampup(s, 10, 20) for s in range(40)]
    assert values == sorted(values)


def test_options_roundtrip_and_errors() -> None:
    options = SemiSupervisedOptions(warmup_fraction=0.1)
    assert SemiSupervisedOptions.from_dict(options.to_dict()) == options
    with pytest.raises(ConfigError, match="unknown"):
        SemiSupervisedOptions.from_dict({"warmup": 0.1})
    with pytest.raises(ConfigError):
        SemiSupervisedOptions(warmup_fraction=1.5)


def test_semisupervised_fit_end_to_end(tmp_path: Path) -> None:
    from alframe.config import recipe_from_dict
    from alframe.data import DataCatalog, synthetic_recipe_dict, write_synthetic_dataset
    from alframe.models import load_task
    from alframe.pseudolabel.semisup import fit_semisupervised

    root = write_synthetic_dataset(tmp_path / "data", n_images=8, image_size=32, seed=0)
    raw = synthetic_recipe_dict(root, image_size=32)
    raw["train"].update({"max_epochs": 2, "batch_size": 2, "accelerator": "cpu"})
    raw["model"]["extra"] = {"decoder_channels": [16, 8, 8]}
    recipe = recipe_from_dict(raw)
    samples = DataCatalog(recipe).samples(recipe.data.train)
    labelled, unlabelled = samples[:3], samples[3:]
    options = SemiSupervisedOptions(warmup_fraction=0.5, ramp_fraction=0.25)
    result = fit_semisupervised(recipe, labelled, unlabelled, tmp_path / "run", options)
    total = len(result.steps)
    assert result.warmup_steps == round(0.5 * total)
    warmup = [row for row in result.steps if row["step"] < result.warmup_steps]
    after = [row for row in result.steps if row["step"] >= result.warmup_steps]
    assert warmup and after
    assert all(row["pl_loss"] == 0.0 and row["lambda"] == 0.0 for row in warmup)
    assert all(row["pl_loss"] > 0.0 and row["lambda"] > 0.0 for row in after)
    assert all(0.0 <= row["pl_accuracy"] <= 1.0 for row in after)  # hidden masks exist
    stored = torch.load(result.best_checkpoint, weights_only=True)["hyper_parameters"]
    assert stored["pseudo_cfg"]["warmup_fraction"] == 0.5
    task = load_task(result.best_checkpoint)  # an ordinary segmentation checkpoint
    assert _hooks(task.model) == 0


def _blobs(
    rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = 0.05
) -> np.ndarray:
    points = np.concatenate([c + spread * rng.standard_normal((n, c.size)) for c in centres])
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_prototype_bank_keeps_every_mode_and_labels_like_the_full_bank() -> None:
    from alframe.pseudolabel.matching import ReferenceBank, match_labels, prototype_bank

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16))  # three modes per class
    labels = np.repeat([0, 0, 0, 1, 1, 1], 200)
    bank = ReferenceBank(
        torch.from_numpy(_blobs(rng, centres, 200)),
        torch.from_numpy(labels),
        torch.rand(labels.size, 2, generator=torch.Generator().manual_seed(0)),
        2,
    )
    compact = prototype_bank(bank, 4, seed=0)
    assert compact.class_counts().tolist() == [4, 4]
    assert torch.allclose(compact.features.norm(dim=1), torch.ones(8), atol=1e-5)
    assert compact.positions.min() >= 0 and compact.positions.max() <= 1
    queries = torch.from_numpy(_blobs(rng, centres, 40))
    full = match_labels(queries, bank).labels
    assert torch.equal(match_labels(queries, compact).labels, full)
    # Same seed, same prototypes; a class with fewer pixels than prototypes keeps its pixels.
    assert torch.equal(prototype_bank(bank, 4, seed=0).features, compact.features)
    small = ReferenceBank(bank.features[:3], bank.labels[:3], bank.positions[:3], 2)
    assert torch.equal(prototype_bank(small, 4).features, small.features)
