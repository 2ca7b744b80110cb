"""Seeded perturbations for consistency-based ranking (CTE).

Input perturbations act on **normalised** images (after :func:`alframe.data.normalize_intensity`)
and are **not clipped**; each image gets its own random draw, taken in image order from one
generator, so the perturbation an image receives does not depend on the batch size and every
model sees exactly the same perturbed inputs.

Strengths are **relative** by default: the noise σ and the brightness shift are fractions of the
image's own robust spread (:func:`robust_spread`), and gamma acts on the image divided by its
robust range. One default then serves bright X-rays and dark fluorescence alike, and a perturbed
image scales with its image (perturbing ``0.1·x`` gives ``0.1·`` the perturbed ``x``). The
paper's absolute strengths on [0, 1] inputs stay available with ``scale="absolute"``.

Feature perturbations (grey-box) zero a fixed proportion of the channels of chosen feature maps
through forward hooks, so any smp / timm model works unchanged and nothing remains attached after
scoring (see :func:`channel_dropout`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from alframe.errors import ConfigError, ModelError

__all__ = [
    "FEATURE_PERTURBATIONS",
    "INPUT_PERTURBATIONS",
    "PERTURBATIONS",
    "SCALES",
    "ChannelDropout",
    "InputPerturbation",
    "channel_dropout",
    "make_perturbation",
    "robust_range",
    "robust_spread",
]

INPUT_PERTURBATIONS = ("gauss", "brightness", "contrast", "gamma")
"""Black-box perturbations: they only change the input."""

FEATURE_PERTURBATIONS = ("dropout", "dropout-all")
"""Grey-box perturbations: channel dropout at the bottleneck, or at every encoder/decoder level."""

PERTURBATIONS = INPUT_PERTURBATIONS + FEATURE_PERTURBATIONS

SCALES = ("relative", "absolute")
"""How input-perturbation strengths are read: fractions of each image's spread, or raw values."""

# Absolute strengths of the CTE spec (docs/methods/cte.md): sigma ~ U[0.1, 0.2] on [0, 1] input.
_ABSOLUTE_RANGES: dict[str, tuple[float, float]] = {
    "gauss": (0.1, 0.2),
    "brightness": (-0.2, 0.2),
    "contrast": (0.7, 1.3),
    "gamma": (0.7, 1.4),
}
# Relative strengths: sigma and the brightness shift as fractions of the image's robust spread.
# A percentile-normalised chest X-ray has a spread of about 0.25-0.3, so the spec's absolute
# sigma of 0.1-0.2 is roughly 0.35-0.7 spreads there; on dark fluorescence (spread 0.1 or less)
# the same absolute noise buries the nuclei. 0.2-0.4 spreads (about half the spec's strength on
# an X-ray) was set once, not tuned; docs/benchmarks/ranking_suite.md compares it with the
# absolute form on five targets. Contrast and gamma are scale-free already.
_RELATIVE_RANGES: dict[str, tuple[float, float]] = {
    "gauss": (0.2, 0.4),
    "brightness": (-0.5, 0.5),
    "contrast": (0.7, 1.3),
    "gamma": (0.7, 1.4),
}


def robust_spread(image: np.ndarray) -> float:
    """Standard deviation of an image after clipping it to its 1st-99th percentiles.

    Clipping keeps a few hot pixels from inflating the spread, while the contrast between sparse
    bright objects and a dark background still counts (an interquartile range would see only
    the background of a sparse fluorescence image).

    Args:
        image: an array of any shape (one image, all channels).

    Returns:
        The spread (>= 0; 0 only for a constant image, which relative noise leaves unchanged).
    """
    x = np.asarray(image, dtype=np.float64).ravel()
    low, high = np.percentile(x, [1.0, 99.0])
    spread = float(np.clip(x, low, high).std())
    # Objects on fewer than 1 % of the pixels fall outside the percentiles: then the plain
    # standard deviation, so a sparse image is still perturbed.
    return spread if spread > 0.0 else float(x.std())


def robust_range(image: np.ndarray) -> float:
    """The 99th percentile of ``|image|`` (its maximum when fewer than 1 % of the pixels are
    non-zero): the scale gamma is applied at; 0 for a zero image."""
    magnitude = np.abs(np.asarray(image, dtype=np.float64))
    reach = float(np.percentile(magnitude, 99.0))
    return reach if reach > 0.0 else float(magnitude.max(initial=0.0))


@dataclass(frozen=True)
class InputPerturbation:
    """One of the input-space perturbations, with its strength range.

    With ``s`` = :func:`robust_spread` and ``r`` = :func:`robust_range` of the image when
    ``scale="relative"`` (both 1 when ``scale="absolute"``):

    - ``gauss``: x + N(0, (σ·s)²), σ ~ U[low, high] drawn once per image;
    - ``brightness``: x + b·s, b ~ U[low, high];
    - ``contrast``: mean(x) + c·(x − mean(x)), c ~ U[low, high] (mean over the whole image);
    - ``gamma``: r·sign(x/r)·|x/r|^γ, γ ~ U[low, high] (defined for the negative values of
      z-scored inputs too).

    Attributes:
        kind: one of :data:`INPUT_PERTURBATIONS`.
        low: lower end of the strength range.
        high: upper end of the strength range.
        scale: ``"relative"`` (strengths are fractions of each image's spread) or
            ``"absolute"`` (the spec's raw values on normalised input).
    """

    kind: str
    low: float
    high: float
    scale: str = "relative"

    def __post_init__(self) -> None:
        if self.kind not in INPUT_PERTURBATIONS:
            raise ConfigError(
                f"unknown input perturbation {self.kind!r}; choose one of "
                f"{', '.join(INPUT_PERTURBATIONS)}"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ConfigError(
                f"perturbation {self.kind}: the range [{self.low}, {self.high}] must be finite "
                "with low <= high"
            )
        if self.scale not in SCALES:
            raise ConfigError(
                f"perturbation scale {self.scale!r}: choose relative (fractions of each image's "
                "spread) or absolute"
            )
        if self.kind == "gauss" and self.low < 0:
            raise ConfigError(f"perturbation gauss: sigma must be >= 0, got low={self.low}")
        if self.kind == "gamma" and self.low <= 0:
            raise ConfigError(f"perturbation gamma: gamma must be > 0, got low={self.low}")

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Perturb a batch, one random draw per image (in order).

        Args:
            images: (B, C, H, W) float32 normalised images.
            rng: the generator; draws are consumed image by image, so splitting the same images
                into other batches gives the same result.

        Returns:
            (B, C, H, W) float32 perturbed images (not clipped).
        """
        x = np.asarray(images, dtype=np.float32)
        out = np.empty_like(x)
        for index in range(x.shape[0]):
            strength = float(rng.uniform(self.low, self.high))
            image = x[index]
            relative = self.scale == "relative"
            if self.kind == "gauss":
                noise = rng.standard_normal(image.shape, dtype=np.float32)
                sigma = strength * (robust_spread(image) if relative else 1.0)
                out[index] = image + np.float32(sigma) * noise
            elif self.kind == "brightness":
                out[index] = image + np.float32(
                    strength * (robust_spread(image) if relative else 1.0)
                )
            elif self.kind == "contrast":
                mean = np.float32(image.mean(dtype=np.float64))
                out[index] = mean + np.float32(strength) * (image - mean)
            else:  # gamma
                reach = robust_range(image) if relative else 1.0
                if reach <= 0.0:
                    out[index] = image
                    continue
                unit = image / np.float32(reach)
                out[index] = (
                    np.float32(reach) * np.sign(unit) * np.abs(unit) ** np.float32(strength)
                )
        return out


@dataclass(frozen=True)
class ChannelDropout:
    """Fixed-proportion channel dropout on feature maps (grey-box).

    k = ceil(p·C) channels of each hooked (B, C, h, w) feature map are zeroed — the same channels
    for every image of a batch — and the remaining ones are scaled by 1 / (1 − p).

    Attributes:
        p: the proportion in [0, 1).
        where: ``"bottleneck"`` (the deepest encoder feature map) or ``"all"`` (every encoder
            feature map and every decoder block output).
    """

    p: float = 0.2
    where: Literal["bottleneck", "all"] = "bottleneck"

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ConfigError(f"channel dropout p must be in [0, 1), got {self.p}")
        if self.where not in ("bottleneck", "all"):
            raise ConfigError(f"channel dropout where={self.where!r}: expected bottleneck or all")

    @property
    def kind(self) -> str:
        """The perturbation name: ``dropout`` or ``dropout-all``."""
        return "dropout" if self.where == "bottleneck" else "dropout-all"


Perturbation = InputPerturbation | ChannelDropout


def make_perturbation(
    kind: str,
    low: float | None = None,
    high: float | None = None,
    p: float | None = None,
    scale: str = "relative",
) -> Perturbation:
    """Build a perturbation by name with the default strengths.

    Args:
        kind: one of :data:`PERTURBATIONS`.
        low: lower strength (input perturbations); default per ``scale``.
        high: upper strength (input perturbations); default per ``scale``.
        p: dropout proportion (feature perturbations); default 0.2 at the bottleneck and 0.03 at
            every level (the authors' mito setting).
        scale: ``"relative"`` (default: σ and brightness as fractions of each image's robust
            spread) or ``"absolute"`` (the CTE spec's values, σ ~ U[0.1, 0.2] on [0, 1] input).
            Ignored by feature perturbations.

    Raises:
        ConfigError: unknown name, scale or invalid strength.
    """
    if scale not in SCALES:
        raise ConfigError(
            f"perturbation scale {scale!r}: choose relative (fractions of each image's spread) "
            "or absolute"
        )
    if kind in INPUT_PERTURBATIONS:
        ranges = _RELATIVE_RANGES if scale == "relative" else _ABSOLUTE_RANGES
        default_low, default_high = ranges[kind]
        return InputPerturbation(
            kind,
            default_low if low is None else float(low),
            default_high if high is None else float(high),
            scale,
        )
    if kind == "dropout":
        return ChannelDropout(0.2 if p is None else float(p), "bottleneck")
    if kind == "dropout-all":
        return ChannelDropout(0.03 if p is None else float(p), "all")
    raise ConfigError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")


# ------------------------------------------------------------------------- feature hooks


class _SharedDraws:
    """Channel draws shared by the replicas of one model on several devices.

    The n-th forward call of a replica asks for key ``(n, site, position)``; the first replica
    to ask draws from the generator, the others reuse the draw. Every replica asks for its keys
    in the same order, so the draws leave the generator in the order one model would take them:
    results are the same on one device or many.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.lock = threading.Lock()
        self.drawn: dict[tuple[int, int, int], np.ndarray] = {}

    def channels(self, key: tuple[int, int, int], channels: int, k: int) -> np.ndarray:
        with self.lock:
            if key not in self.drawn:
                self.drawn[key] = self.rng.choice(channels, size=k, replace=False)
            return self.drawn[key]


def _drop_channels(
    features: Any, dropout: ChannelDropout, draws: _SharedDraws, key: tuple[int, int, int]
) -> Any:
    """Zero k = ceil(p·C) channels of a (B, C, h, w) tensor (same channels for the batch)."""
    import torch

    if not isinstance(features, torch.Tensor) or features.ndim < 2:
        return features
    channels = int(features.shape[1])
    k = math.ceil(dropout.p * channels)
    if k == 0:
        return features
    dropped = draws.channels(key, channels, k)
    keep = torch.ones(channels, dtype=features.dtype, device=features.device)
    keep[torch.as_tensor(dropped, device=features.device)] = 0
    shape = [1, channels] + [1] * (features.ndim - 2)
    return features * keep.view(shape) / (1.0 - dropout.p)


def feature_sites(module: Any) -> tuple[Any, list[Any]]:
    """The smp encoder and the decoder blocks of a model (or of a task wrapping one).

    Args:
        module: an smp model or a module with a ``.model`` attribute holding one.

    Returns:
        ``(encoder, decoder_blocks)``; ``decoder_blocks`` may be empty.

    Raises:
        ModelError: the module has no smp-style ``encoder``.
    """
    from torch import nn

    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Module) and not hasattr(module, "encoder"):
        module = inner
    encoder = getattr(module, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ModelError(
            f"{type(module).__name__} has no .encoder: feature perturbations need an smp model "
            "(alframe checkpoint); use an input perturbation such as gauss for black-box models"
        )
    decoder = getattr(module, "decoder", None)
    blocks = getattr(decoder, "blocks", None)
    decoder_blocks: list[Any] = list(blocks) if isinstance(blocks, nn.ModuleList) else []
    return encoder, decoder_blocks


@contextmanager
def channel_dropout(
    module: Any, dropout: ChannelDropout, rng: np.random.Generator
) -> Iterator[None]:
    """Attach channel-dropout forward hooks for the duration of the ``with`` block.

    The encoder's output list is rewritten (its deepest map only for ``bottleneck``; every map
    but the input itself for ``all``); with ``all`` each decoder block's output is too. Each
    forward call draws its channels from ``rng`` (seeded once by the caller). The hooks are
    removed on exit, also after an exception; parameters and buffers are never touched.

    Args:
        module: an smp model or a task wrapping one — or a list of them (``Predictor.modules``),
            copies of one model whose n-th calls then drop the same channels.
        dropout: the proportion and placement.
        rng: the generator of the dropped channels.

    Raises:
        ModelError: the module is not an smp-style model.
    """
    replicas = list(module) if isinstance(module, list | tuple) else [module]
    draws = _SharedDraws(rng)
    handles = []
    for replica in replicas:
        encoder, decoder_blocks = feature_sites(replica)
        calls = [-1]  # this replica's forward-call counter, advanced by the encoder hook

        def encoder_hook(_module: Any, _inputs: Any, output: Any, calls: list[int] = calls) -> Any:
            calls[0] += 1
            n = calls[0]
            if not isinstance(output, Sequence) or isinstance(output, str):
                return _drop_channels(output, dropout, draws, (n, 0, 0))
            features = list(output)
            if dropout.where == "bottleneck":
                features[-1] = _drop_channels(features[-1], dropout, draws, (n, 0, 0))
            else:
                # Entry 0 of an smp encoder's list is the input image itself: not a feature.
                features[1:] = [
                    _drop_channels(f, dropout, draws, (n, 0, j)) for j, f in enumerate(features[1:])
                ]
            return type(output)(features) if isinstance(output, tuple) else features

        def block_hook(
            _module: Any, _inputs: Any, output: Any, site: int = 0, calls: list[int] = calls
        ) -> Any:
            return _drop_channels(output, dropout, draws, (calls[0], site, 0))

        handles.append(encoder.register_forward_hook(encoder_hook))
        if dropout.where == "all":
            handles.extend(
                block.register_forward_hook(partial(block_hook, site=i + 1))
                for i, block in enumerate(decoder_blocks)
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
