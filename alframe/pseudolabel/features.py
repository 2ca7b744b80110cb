"""Per-pixel feature sources for label transfer: decoder features, frozen encoders, intensities.

A feature source maps a batch of preprocessed images (B, C, H, W) to feature maps (B, D, h, w)
(``h, w`` may be smaller than ``H, W``; labels are transferred at (h, w) and resized back).
Sources are called without gradient tracking unless stated otherwise.

* :class:`DecoderFeatures`: the input of an smp model's ``segmentation_head`` (the decoder output,
  "just before the final classifier" of the RPG paper), captured with a forward hook that is
  removed after every call; works for every smp architecture.
* :class:`EncoderFeatures`: a frozen multi-stage encoder such as the XSSR MAE
  (:func:`alframe.embed.encoder_from_mae`): the stages at stride 4-16, upsampled to the finest of
  them, each L2-normalised, concatenated.
* :class:`IntensityFeatures`: no model at all — multi-scale Gaussian intensity, gradient magnitude
  and Laplacian-of-Gaussian responses, standardised with the reference images' statistics.
  Rotation- and flip-equivariant; a baseline for offline pseudo-labels before any training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from alframe.errors import ModelError

__all__ = [
    "DecoderFeatures",
    "EncoderFeatures",
    "FeatureSource",
    "IntensityFeatures",
    "capture_decoder_features",
    "segmentation_head_of",
]


@runtime_checkable
class FeatureSource(Protocol):
    """Images (B, C, H, W) → per-pixel features (B, D, h, w); may also define ``fit(images)``."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def segmentation_head_of(model: nn.Module) -> nn.Module:
    """The ``segmentation_head`` of an smp model (or of a module wrapping one as ``.model``).

    Raises:
        ModelError: no segmentation head found.
    """
    for candidate in (model, getattr(model, "model", None)):
        head = getattr(candidate, "segmentation_head", None)
        if isinstance(head, nn.Module):
            return head
    raise ModelError(
        f"{type(model).__name__} has no segmentation_head; decoder features need an "
        "segmentation_models_pytorch model (or an alframe SegmentationTask)"
    )


@contextmanager
def capture_decoder_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the segmentation head's input on every forward pass while the block runs.

    The hook is removed on exit, also after an exception, so the model is left as it was.

    Args:
        model: an smp model or a module holding one as ``.model`` (e.g. a SegmentationTask).

    Yields:
        A list that receives one (B, D, h, w) tensor per forward pass (not detached: callers that
        do not need gradients run the forward under ``torch.no_grad()``).
    """
    head = segmentation_head_of(model)
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        captured.append(inputs[0])

    handle = head.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _device_of(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


class DecoderFeatures:
    """Decoder features of a segmentation model (stride 1 for U-Net, 4 for FPN / DeepLabV3+).

    Args:
        model: an smp model or an alframe ``SegmentationTask``; run in eval mode for each call
            (its previous mode is restored).
    """

    def __init__(self, model: nn.Module) -> None:
        segmentation_head_of(model)  # fail early
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, D, h, w) float32 on the model's device (no gradient)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), capture_decoder_features(self.model) as captured:
                self.model(images.to(_device_of(self.model)))
        finally:
            self.model.train(was_training)
        return captured[-1].float()


class EncoderFeatures:
    """Multi-scale features of a frozen encoder (e.g. the XSSR MAE encoder).

    Args:
        encoder: a module mapping images to a list of feature maps, shallow to deep (an smp
            encoder), or an :class:`alframe.embed.Embedder`.
        min_stride: shallowest stage used (stride relative to the input).
        max_stride: deepest stage used; when no stage falls in [min_stride, max_stride] the
            deepest stage is used alone.
    """

    def __init__(self, encoder: Any, min_stride: int = 4, max_stride: int = 16) -> None:
        module = getattr(encoder, "module", encoder)
        if not isinstance(module, nn.Module):
            raise ModelError(f"EncoderFeatures needs a torch module, got {type(encoder).__name__}")
        self.module = module
        self.min_stride = int(min_stride)
        self.max_stride = int(max_stride)
        self.in_channels = int(getattr(encoder, "in_channels", 0) or 0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, D, H/s, W/s) float32, s the shallowest stride used (no gradient)."""
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                out = self.module(images.to(_device_of(self.module)))
        finally:
            self.module.train(was_training)
        maps = [out] if isinstance(out, torch.Tensor) else list(out)
        maps = [m for m in maps if isinstance(m, torch.Tensor) and m.ndim == 4]
        height = images.shape[-2]
        chosen = [
            m for m in maps if self.min_stride <= height / m.shape[-2] <= self.max_stride
        ] or maps[-1:]
        if not chosen:
            raise ModelError("the encoder returned no 4-D feature map")
        size = tuple(chosen[0].shape[-2:])
        resized = [
            F.normalize(
                F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
                if tuple(m.shape[-2:]) != size
                else m.float(),
                dim=1,
            )
            for m in chosen
        ]
        return torch.cat(resized, dim=1)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (flip-equivariant)."""
    kernel = _gaussian_kernel(sigma).to(images.device)
    radius = kernel.numel() // 2
    channels = images.shape[1]
    pad_h = min(radius, images.shape[-2] - 1)
    pad_w = min(radius, images.shape[-1] - 1)
    x = images
    if pad_w == radius:
        x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    else:
        x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect" if pad_h == radius else "replicate")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


class IntensityFeatures:
    """Hand-crafted multi-scale features; no model needed.

    Per image channel: the intensity, and for each σ in ``sigmas`` the Gaussian-smoothed
    intensity, its gradient magnitude (σ-normalised) and the Laplacian of Gaussian (σ²-normalised):
    ``C · (1 + 3·len(sigmas))`` channels at full resolution. :meth:`fit` standardises every channel
    with the mean / standard deviation over the reference images, so the cosine similarity compares
    deviations from the typical reference pixel rather than raw brightness.

    Args:
        sigmas: Gaussian scales in pixels.
    """

    def __init__(self, sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0)) -> None:
        if not sigmas or any(s <= 0 for s in sigmas):
            raise ModelError(f"sigmas must be positive numbers, got {list(sigmas)}")
        self.sigmas = tuple(float(s) for s in sigmas)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """Unstandardised features (B, C·(1 + 3·S), H, W) float32."""
        x = images.float()
        channels = [x]
        for sigma in self.sigmas:
            smooth = _blur(x, sigma)
            dy = torch.zeros_like(smooth)
            dx = torch.zeros_like(smooth)
            dy[..., 1:-1, :] = (smooth[..., 2:, :] - smooth[..., :-2, :]) / 2
            dx[..., :, 1:-1] = (smooth[..., :, 2:] - smooth[..., :, :-2]) / 2
            laplacian = torch.zeros_like(smooth)
            laplacian[..., 1:-1, 1:-1] = (
                smooth[..., 2:, 1:-1]
                + smooth[..., :-2, 1:-1]
                + smooth[..., 1:-1, 2:]
                + smooth[..., 1:-1, :-2]
                - 4 * smooth[..., 1:-1, 1:-1]
            )
            channels += [smooth, sigma * torch.sqrt(dx**2 + dy**2), sigma**2 * laplacian]
        return torch.cat(channels, dim=1)

    def fit(self, images: torch.Tensor | Sequence[torch.Tensor]) -> IntensityFeatures:
        """Per-channel mean / std over the reference images; returns self.

        Args:
            images: (B, C, H, W), or a sequence of (C, H, W) / (1, C, H, W) images of any sizes.
        """
        batches = [images] if isinstance(images, torch.Tensor) and images.ndim == 4 else images
        total = 0
        sums: torch.Tensor | None = None
        squares: torch.Tensor | None = None
        for item in batches:
            batch = item if item.ndim == 4 else item[None]
            features = self.raw(batch).double()
            count = features.shape[0] * features.shape[2] * features.shape[3]
            s1, s2 = features.sum(dim=(0, 2, 3)), (features**2).sum(dim=(0, 2, 3))
            sums = s1 if sums is None else sums + s1
            squares = s2 if squares is None else squares + s2
            total += count
        if sums is None or squares is None or total == 0:
            raise ModelError("IntensityFeatures.fit needs at least one image")
        mean = sums / total
        variance = (squares / total - mean**2).clamp_min(0.0)
        self.mean = mean.float().view(1, -1, 1, 1)
        self.std = variance.sqrt().float().clamp_min(1e-6).view(1, -1, 1, 1)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised features (B, D, H, W) float32 (unstandardised before :meth:`fit`)."""
        features = self.raw(images)
        if self.mean is None or self.std is None:
            return features
        return (features - self.mean.to(features.device)) / self.std.to(features.device)
