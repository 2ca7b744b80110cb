"""Per-pixel uncertainty measures and per-image aggregations on hand-made probability maps."""

from __future__ import annotations

import numpy as np
import pytest

from alframe.errors import ConfigError
from alframe.scoring import (
    UNCERTAINTY_AGGREGATIONS,
    foreground_weight,
    item_uncertainty,
    pixel_entropy,
    pixel_margin_uncertainty,
)


def test_binary_pixel_measures() -> None:
    p = np.array([[[0.0, 0.5], [1.0, 0.9]]], dtype=np.float32)
    entropy = pixel_entropy(p)
    assert entropy[0, 0, 1] == pytest.approx(np.log(2), rel=1e-6)
    assert entropy[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert entropy[0, 1, 1] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), rel=1e-5)
    np.testing.assert_allclose(pixel_margin_uncertainty(p), [[[0.0, 1.0], [0.0, 0.2]]], atol=1e-6)
    np.testing.assert_allclose(foreground_weight(p), p)


def test_multiclass_pixel_measures_equal_binary_for_two_classes() -> None:
    rng = np.random.default_rng(0)
    foreground = rng.random((3, 4, 5)).astype(np.float32)
    two_class = np.stack([1 - foreground, foreground], axis=1)
    np.testing.assert_allclose(pixel_entropy(two_class), pixel_entropy(foreground), atol=1e-5)
    np.testing.assert_allclose(
        pixel_margin_uncertainty(two_class), pixel_margin_uncertainty(foreground), atol=1e-5
    )
    np.testing.assert_allclose(foreground_weight(two_class), foreground, atol=1e-6)
    three_class = np.full((1, 3, 2, 2), 1 / 3, dtype=np.float32)
    np.testing.assert_allclose(pixel_entropy(three_class), np.log(3), rtol=1e-5)
    np.testing.assert_allclose(pixel_margin_uncertainty(three_class), 1.0, atol=1e-6)


def test_aggregations() -> None:
    # image 0: mildly uncertain everywhere; image 1: certain except one maximally uncertain pixel
    maps = np.zeros((2, 10, 10), dtype=np.float32)
    maps[0] = 0.8
    maps[1, 0, 0] = 0.5
    mean = item_uncertainty(maps, "margin", "mean")
    np.testing.assert_allclose(mean, [0.4, 0.01], atol=1e-6)
    top = item_uncertainty(maps, "margin", "top_fraction", top_fraction=0.01)
    np.testing.assert_allclose(top, [0.4, 1.0], atol=1e-6)
    weighted = item_uncertainty(maps, "margin", "foreground_weighted")
    np.testing.assert_allclose(weighted, [0.4, 1.0], atol=1e-6)
    assert item_uncertainty(np.zeros((1, 4, 4)), "entropy", "foreground_weighted")[0] == 0.0
    assert {"mean", "top_fraction", "foreground_weighted"} <= set(UNCERTAINTY_AGGREGATIONS.names())


def test_chunking_does_not_change_results() -> None:
    maps = np.random.default_rng(2).random((70, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(
        item_uncertainty(maps, chunk_items=8), item_uncertainty(maps, chunk_items=100)
    )


def test_unknown_aggregation_and_measure_are_config_errors() -> None:
    maps = np.zeros((1, 2, 2))
    with pytest.raises(ConfigError, match="Did you mean 'mean'"):
        item_uncertainty(maps, "entropy", "meen")
    with pytest.raises(ConfigError, match="measure"):
        item_uncertainty(maps, "variance", "mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="top_fraction"):
        item_uncertainty(maps, "entropy", "top_fraction", top_fraction=0.0)
