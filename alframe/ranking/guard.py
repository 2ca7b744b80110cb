"""Degenerate-model guard: candidates whose predictions cannot be right, whatever they score.

Consistency scores reward stable predictions, and nothing is more stable than a model that
predicts the same mask for every input: all foreground, all background, or one fixed shape. Such
a model is perfectly consistent under any perturbation and confident everywhere, so CTE and the
confidence baselines can rank it first (an all-foreground model topped a fluorescence zoo with
CTE-NHD = 1.000). The guard looks at the clean predictions on the target images alone — no labels
— and flags:

- **all foreground**: more than ``max_foreground`` of all pixels predicted foreground;
- **all background**: less than ``min_foreground`` of all pixels predicted foreground;
- **input-independent**: the per-pixel prediction barely varies across images. The measure is
  the share of the foreground's total variance that is *across images at the same position*,
  ``mean_x Var_i(b_i(x)) / (f·(1 − f))`` with ``b`` the binary foreground and ``f`` its overall
  fraction: 0 when every image gets the same mask, about 1 when objects sit anywhere (nuclei),
  around 0.1–0.3 for organs that sit in roughly the same place (lungs on chest X-rays).

Flagged models are ranked below every unflagged one by :class:`~alframe.ranking.RankingReport`
and shown with their reason. Pure NumPy; the statistics stream over batches in O(H·W) memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alframe.errors import ConfigError

__all__ = ["DegenerateGuard", "PredictionProfile", "ProfileAccumulator"]


@dataclass(frozen=True)
class PredictionProfile:
    """What a model's clean target predictions look like (label-free).

    Attributes:
        n_images: images seen.
        foreground_fraction: share of all pixels predicted foreground (argmax ≠ background).
        images_with_foreground: share of images with at least one foreground pixel.
        input_dependence: share of the foreground variance that lies across images at the same
            pixel (see the module docstring); NaN when the foreground is empty or full, or with
            fewer than two images.
    """

    n_images: int
    foreground_fraction: float
    images_with_foreground: float
    input_dependence: float


class ProfileAccumulator:
    """Streams (B, K, H, W) probability batches into a :class:`PredictionProfile`."""

    def __init__(self) -> None:
        self.count = 0
        self.with_foreground = 0
        self.pixel_sum: np.ndarray | None = None  # (H, W) foreground counts per pixel

    def add(self, proba: np.ndarray) -> None:
        """Add a batch of (B, K, H, W) probabilities (foreground = argmax ≠ 0).

        Raises:
            ConfigError: the image size changed between batches.
        """
        p = np.asarray(proba)
        foreground = p.argmax(axis=1) != 0  # (B, H, W)
        counts = foreground.sum(axis=0, dtype=np.int64)
        if self.pixel_sum is None:
            self.pixel_sum = counts
        elif self.pixel_sum.shape != counts.shape:
            raise ConfigError(
                f"prediction size changed from {self.pixel_sum.shape} to {counts.shape}; "
                "the guard needs target images of one size"
            )
        else:
            self.pixel_sum += counts
        self.count += int(foreground.shape[0])
        self.with_foreground += int(foreground.reshape(foreground.shape[0], -1).any(axis=1).sum())

    def profile(self) -> PredictionProfile:
        """The profile of everything added so far."""
        if self.pixel_sum is None or self.count == 0:
            return PredictionProfile(0, math.nan, math.nan, math.nan)
        n = self.count
        per_pixel = self.pixel_sum / n  # P(foreground) at each pixel over the images
        fraction = float(per_pixel.mean())
        total_variance = fraction * (1.0 - fraction)
        # For a binary variable the variance across images at pixel x is q(x)·(1 − q(x)); the
        # n / (n − 1) factor removes the small-sample bias. One image says nothing about how
        # predictions vary between images: NaN, never a flag.
        dependence = (
            float((per_pixel * (1.0 - per_pixel)).mean() * n / (n - 1) / total_variance)
            if total_variance > 0 and n >= 2
            else math.nan
        )
        return PredictionProfile(
            n_images=self.count,
            foreground_fraction=fraction,
            images_with_foreground=self.with_foreground / self.count,
            input_dependence=dependence,
        )


@dataclass(frozen=True)
class DegenerateGuard:
    """Thresholds that flag a model as degenerate from its :class:`PredictionProfile`.

    Attributes:
        max_foreground: flag "all foreground" above this share of foreground pixels.
        min_foreground: flag "all background" below this share of foreground pixels.
        min_input_dependence: flag "input-independent" below this share of across-image
            variance (a fixed mask gives 0; lungs on chest X-rays give about 0.1–0.3).
    """

    max_foreground: float = 0.95
    min_foreground: float = 0.001
    min_input_dependence: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_foreground < self.max_foreground <= 1.0:
            raise ConfigError(
                "degenerate guard: need 0 <= min_foreground < max_foreground <= 1, got "
                f"{self.min_foreground}, {self.max_foreground}"
            )
        if not 0.0 <= self.min_input_dependence < 1.0:
            raise ConfigError(
                f"degenerate guard: min_input_dependence must be in [0, 1), got "
                f"{self.min_input_dependence}"
            )

    def check(self, profile: PredictionProfile) -> str | None:
        """The reason a model is degenerate, or None when it is not.

        Args:
            profile: the model's clean-prediction profile on the target images.
        """
        if profile.n_images == 0:
            return None
        fraction = profile.foreground_fraction
        if fraction > self.max_foreground:
            return f"all foreground ({100 * fraction:.1f} % of target pixels)"
        if fraction < self.min_foreground:
            return f"all background ({100 * fraction:.2f} % of target pixels foreground)"
        dependence = profile.input_dependence
        if math.isfinite(dependence) and dependence < self.min_input_dependence:
            return (
                f"input-independent (the same mask for every image: {100 * dependence:.1f} % "
                "of the foreground variance is across images)"
            )
        return None
