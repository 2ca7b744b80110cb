"""Every registered ranker through the same checks (the plugin contract of alframe.ranking)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alframe.errors import ConfigError, ModelError
from alframe.ranking import RANKERS, Predictor, Ranker, TargetImages, create_ranker
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


@pytest.mark.parametrize("name", RANKERS.names())
def test_registered_ranker_contract(name: str, grey_box: Predictor) -> None:
    images = _images()
    ranker = _build(name, images)
    assert isinstance(ranker, Ranker)
    assert isinstance(ranker.higher_is_better, bool)
    assert ranker.requires <= ALLOWED_REQUIREMENTS
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


def test_unknown_ranker_names_list_close_matches() -> None:
    with pytest.raises(ConfigError, match="cte-ei"):
        create_ranker("cte-e")
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_ranker("entropy", sigma=1.0)


def test_source_dice_without_source_is_a_user_error(grey_box: Predictor) -> None:
    with pytest.raises(ConfigError, match="--source"):
        create_ranker("source-dice").score(grey_box, _images())
