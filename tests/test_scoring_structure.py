"""Neighbour contrast: structureless clouds read ~0, clustered ones high, against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from alframe.errors import DataError
from alframe.scoring.structure import LOW_CONTRAST, _nn_to_mean_ratio, neighbour_contrast


def test_ratio_matches_scipy_distances() -> None:
    x = np.random.default_rng(0).standard_normal((40, 6))
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    expected = d.min(axis=1).mean() / d[np.isfinite(d)].mean()
    assert _nn_to_mean_ratio(x) == pytest.approx(expected, rel=1e-9)


def test_structureless_cloud_reads_near_zero() -> None:
    x = np.random.default_rng(1).standard_normal((300, 32))
    result = neighbour_contrast(x, seed=0)
    assert abs(result.contrast) < 0.05
    assert result.low and result.contrast < LOW_CONTRAST


def test_clusters_read_high_and_scale_does_not_matter() -> None:
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((8, 32))
    x = centres[rng.integers(0, 8, 300)] + 0.1 * rng.standard_normal((300, 32))
    result = neighbour_contrast(x, seed=0)
    assert result.contrast > 0.6 and not result.low
    assert neighbour_contrast(1000.0 * x, seed=0).contrast == pytest.approx(result.contrast)


def test_subsample_is_seeded_and_bounded() -> None:
    x = np.random.default_rng(3).standard_normal((500, 8))
    first = neighbour_contrast(x, max_items=100, seed=4)
    assert first.n_items == 100
    assert neighbour_contrast(x, max_items=100, seed=4) == first


def test_bad_input_is_refused() -> None:
    with pytest.raises(DataError, match="N >= 3"):
        neighbour_contrast(np.zeros((2, 4)))
    broken = np.ones((5, 3))
    broken[1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        neighbour_contrast(broken)
