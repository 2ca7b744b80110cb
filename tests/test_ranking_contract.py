"""Every registered ranker through the same checks (the plugin contract of alframe.ranking)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alframe.errors import ConfigError, ModelError
from alframe.ranking import (
    RANKERS,
    ConsensusRanker,
    Predictor,
    Ranker,
    TargetImages,
    create_ranker,
    rank_models,
)
from tests.test_ranking import _tiny_unet

ALLOWED_REQUIREMENTS = {"features", "source_labels"}


def _images(n: int = 5) -> TargetImages:
    rng = np.random.default_rng(7)
    images = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
    return TargetImages.from_array(images, labels=(images[:, 0] > 0).astype(np.int64))


def _build(name: str, source: TargetImages) -> Ranker:
    ranker = create_ranker(name)
    if "source_labels" in ranker.requires:
        ranker = create_ranker(name, source=source)
    return ranker


@pytest.fixture(scope="module")
def grey_box() -> Predictor:
    return Predictor.from_module(_tiny_unet(), "unet", num_classes=2)


@pytest.fixture(scope="module")
def other_grey_box() -> Predictor:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        module = _tiny_unet()
    return Predictor.from_module(module, "unet-b", num_classes=2)


@pytest.mark.parametrize("name", RANKERS.names())
def test_registered_ranker_contract(
    name: str, grey_box: Predictor, other_grey_box: Predictor
) -> None:
    images = _images()
    ranker = _build(name, images)
    assert isinstance(ranker, Ranker)
    assert isinstance(ranker.higher_is_better, bool)
    assert isinstance(ranker.zoo_level, bool)
    assert ranker.requires <= ALLOWED_REQUIREMENTS
    if ranker.zoo_level:
        _check_zoo_level(name, images, [grey_box, other_grey_box])
        return
    first = ranker.score(grey_box, images, batch_size=2)
    again = _build(name, images).score(grey_box, images, batch_size=3)
    assert first.per_image.shape == (len(images),)
    assert first.per_image.dtype == np.float64
    assert not np.isinf(first.per_image).any()
    np.testing.assert_allclose(first.per_image, again.per_image, rtol=1e-6, equal_nan=True)
    finite = first.per_image[np.isfinite(first.per_image)]
    assert math.isnan(first.dataset_score) or np.isfinite(first.dataset_score)
    if finite.size:
        assert np.isfinite(first.dataset_score)
    assert first.model == "unet"
    assert first.higher_is_better == ranker.higher_is_better
    assert first.forward_passes in (1, 2)

    black_box = Predictor.from_function(
        lambda batch: torch.full((batch.shape[0], 2, 32, 32), 0.5), name="black"
    )
    assert ranker.supports(black_box) == ("features" not in ranker.requires)
    if "features" in ranker.requires:
        with pytest.raises(ModelError):
            ranker.score(black_box, images)


def _check_zoo_level(name: str, images: TargetImages, predictors: list[Predictor]) -> None:
    """A rank aggregate scores a set: one model alone is a user error that says what to do;
    through rank_models it gives deterministic scores in [0, 1] next to its components."""
    with pytest.raises(ConfigError, match="rank_models"):
        _build(name, images).score(predictors[0], images, batch_size=2)
    reports = [
        rank_models(predictors, images, [_build(name, images)], batch_size=b, progress=False)
        for b in (2, 3)
    ]
    label = _build(name, images).describe()
    first = reports[0].scores(label)
    assert set(first) == {p.name for p in predictors}
    assert all(0.0 <= v <= 1.0 for v in first.values()), first
    assert reports[1].scores(label) == pytest.approx(first, abs=1e-9)
    assert reports[0].primary == label
    components = [c for c in reports[0].rankers if c != label]
    assert components, "the components are report columns"
    for component in components:
        assert set(reports[0].scores(component)) == set(first)
        assert all(np.isfinite(v) for v in reports[0].scores(component).values())
    ranker = _build(name, images)
    if isinstance(ranker, ConsensusRanker):
        assert components == [c.describe() for c in ranker.components_for(predictors)]


def test_unknown_ranker_names_list_close_matches() -> None:
    with pytest.raises(ConfigError, match="cte-ei"):
        create_ranker("cte-e")
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_ranker("entropy", sigma=1.0)


def test_source_dice_without_source_is_a_user_error(grey_box: Predictor) -> None:
    with pytest.raises(ConfigError, match="--source"):
        create_ranker("source-dice").score(grey_box, _images())
