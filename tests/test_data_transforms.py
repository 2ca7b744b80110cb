"""Intensity normalisation against direct NumPy formulas, and recipe-built pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from alframe.config import AugmentStep, NormalizationConfig
from alframe.data import build_transforms, normalize_intensity
from alframe.errors import ConfigError


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(1000, 300, size=(20, 16, 1)).astype(np.float32)


def test_minmax() -> None:
    x = _image()
    out = normalize_intensity(x, NormalizationConfig(method="minmax"))
    np.testing.assert_allclose(out, (x - x.min()) / (x.max() - x.min()), rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_percentile() -> None:
    x = _image(1)
    cfg = NormalizationConfig(method="percentile", low=2.0, high=98.0)
    lo, hi = np.percentile(x, [2.0, 98.0])
    expected = (np.clip(x, lo, hi) - lo) / (hi - lo)
    np.testing.assert_allclose(normalize_intensity(x, cfg), expected, rtol=1e-5, atol=1e-6)


def test_zscore() -> None:
    x = _image(2)
    out = normalize_intensity(x, NormalizationConfig(method="zscore"))
    expected = (x.astype(np.float64) - x.mean(dtype=np.float64)) / x.std(dtype=np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_none_divides_8bit_range_only() -> None:
    x8 = np.array([[0.0, 51.0, 255.0]], dtype=np.float32)
    np.testing.assert_allclose(
        normalize_intensity(x8, NormalizationConfig(method="none")), x8 / 255
    )
    x16 = np.array([[0.0, 4000.0]], dtype=np.float32)
    np.testing.assert_array_equal(normalize_intensity(x16, NormalizationConfig(method="none")), x16)


@pytest.mark.parametrize("method", ["minmax", "percentile", "zscore"])
def test_constant_image_gives_zeros(method: str) -> None:
    x = np.full((5, 5, 1), 7.0, dtype=np.float32)
    out = normalize_intensity(x, NormalizationConfig(method=method))
    assert np.isfinite(out).all() and not out.any()


def test_percentile_of_mostly_flat_image_falls_back_to_minmax() -> None:
    x = np.zeros((10, 10, 1), dtype=np.float32)
    x[0, 0, 0] = 50.0  # the 0.5-99.5 percentiles are both 0
    out = normalize_intensity(x, NormalizationConfig(method="percentile"))
    assert np.isfinite(out).all() and out.max() == pytest.approx(1.0)


def _steps(*steps: dict) -> list[AugmentStep]:
    return [AugmentStep.model_validate(s) for s in steps]


@pytest.mark.parametrize("channels", [1, 3])
def test_transforms_resize_to_recipe_size(channels: int) -> None:
    image = np.random.default_rng(0).random((50, 70, channels)).astype(np.float32)
    mask = np.zeros((50, 70), dtype=np.int32)
    mask[10:30, 20:50] = 2
    steps = _steps(
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Affine", "scale": [0.9, 1.1], "rotate": [-10, 10], "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.5},
    )
    pipeline = build_transforms(steps, (64, 32), train=True, seed=0)
    out = pipeline(image=image, mask=mask)
    assert out["image"].shape == (64, 32, channels)
    assert out["mask"].shape == (64, 32)
    assert set(np.unique(out["mask"])) <= {0, 2}  # nearest neighbour keeps labels


def test_transforms_are_seeded() -> None:
    image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    steps = _steps({"name": "Affine", "rotate": [-30, 30], "p": 1.0})
    a = build_transforms(steps, (32, 32), train=True, seed=5)(image=image)["image"]
    b = build_transforms(steps, (32, 32), train=True, seed=5)(image=image)["image"]
    np.testing.assert_array_equal(a, b)


def test_unknown_transform_lists_close_matches() -> None:
    with pytest.raises(
        ConfigError, match=r"augment.train\[0\].name = 'HorizontalFlp'.*HorizontalFlip"
    ):
        build_transforms(_steps({"name": "HorizontalFlp"}), (32, 32), train=True)
    with pytest.raises(ConfigError, match="not an albumentations transform"):
        build_transforms(_steps({"name": "Compose"}), (32, 32), train=False)


def test_bad_transform_arguments() -> None:
    with pytest.raises(
        ConfigError, match=r"augment.eval\[0\] \(HorizontalFlip\).*bogus.*not accepted"
    ):
        build_transforms(_steps({"name": "HorizontalFlip", "bogus": 1}), (32, 32), train=False)
    with pytest.raises(ConfigError, match=r"augment.train\[0\] \(Affine\).*invalid arguments"):
        build_transforms(_steps({"name": "Affine", "rotate": "lots"}), (32, 32), train=True)
