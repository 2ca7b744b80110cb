"""Seeded synthetic two-domain segmentation data, for demos, tests and smoke runs.

Each image shows one to three bright ellipses (the foreground) on a smooth textured background.
Domains differ in brightness, contrast, noise level, texture strength and object size, so a model
trained on one domain loses accuracy on the other: a small but real domain shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class _DomainStyle:
    background: float  # mean background intensity (0-255)
    contrast: float  # foreground minus background
    noise: float  # std of the pixel noise
    texture: float  # amplitude of the smooth background texture
    radius: tuple[float, float]  # ellipse semi-axes as fractions of the image size


_STYLES: tuple[_DomainStyle, ...] = (
    _DomainStyle(background=70.0, contrast=110.0, noise=6.0, texture=25.0, radius=(0.10, 0.22)),
    _DomainStyle(background=110.0, contrast=55.0, noise=16.0, texture=40.0, radius=(0.06, 0.14)),
)


def _style(domain_index: int, n_domains: int) -> _DomainStyle:
    if n_domains <= 2:
        return _STYLES[min(domain_index, 1)]
    # More than two domains: interpolate between the two reference styles.
    t = domain_index / (n_domains - 1)
    a, b = _STYLES
    return _DomainStyle(
        background=(1 - t) * a.background + t * b.background,
        contrast=(1 - t) * a.contrast + t * b.contrast,
        noise=(1 - t) * a.noise + t * b.noise,
        texture=(1 - t) * a.texture + t * b.texture,
        radius=(
            (1 - t) * a.radius[0] + t * b.radius[0],
            (1 - t) * a.radius[1] + t * b.radius[1],
        ),
    )


def _smooth_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    # Bilinear upsampling of a coarse random grid gives blotchy, low-frequency texture.
    coarse_n = 6
    coarse = rng.standard_normal((coarse_n, coarse_n))
    positions = np.linspace(0, coarse_n - 1, size)
    rows = np.array([np.interp(positions, np.arange(coarse_n), row) for row in coarse])
    field = np.array([np.interp(positions, np.arange(coarse_n), col) for col in rows.T]).T
    return (field / (np.abs(field).max() + 1e-8)).astype(np.float64)


def synthetic_image(
    rng: np.random.Generator, style_index: int = 0, n_domains: int = 2, image_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its mask.

    Args:
        rng: the generator to draw from.
        style_index: domain index (0-based) selecting the intensity / size style.
        n_domains: number of domains (styles are interpolated when more than two).
        image_size: side length in pixels.

    Returns:
        ``(image, mask)``: uint8 (S, S) grayscale and uint8 (S, S) with values {0, 255}.
    """
    style = _style(style_index, n_domains)
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    foreground = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, size=2) * size
        ry, rx = rng.uniform(*style.radius, size=2) * size
        angle = rng.uniform(0, np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        u = ((xx - cx) * cos + (yy - cy) * sin) / rx
        v = (-(xx - cx) * sin + (yy - cy) * cos) / ry
        foreground |= u**2 + v**2 <= 1.0
    gradient = rng.uniform(-10, 10) * (xx / size - 0.5) + rng.uniform(-10, 10) * (yy / size - 0.5)
    image = (
        style.background
        + style.texture * _smooth_texture(rng, size)
        + gradient
        + style.contrast * foreground
        + style.noise * rng.standard_normal((size, size))
    )
    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image_u8, foreground.astype(np.uint8) * 255


def write_synthetic_dataset(
    root: Path,
    n_images: int = 24,
    domains: tuple[str, ...] = ("source", "target"),
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/<domain>/{images,masks}/<domain>_<i:03d>.png`` for every domain.

    Images are 8-bit grayscale, masks 8-bit {0, 255}. The output depends only on the arguments.

    Args:
        root: output folder (created if needed).
        n_images: images per domain.
        domains: domain names; the first gets the "source" style, the last the "target" style.
        image_size: side length in pixels.
        seed: seed of the drawing.

    Returns:
        ``root``.
    """
    root = Path(root)
    for domain_index, domain in enumerate(domains):
        rng = np.random.default_rng([seed, domain_index])
        image_dir = root / domain / "images"
        mask_dir = root / domain / "masks"
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            image, mask = synthetic_image(rng, domain_index, len(domains), image_size)
            name = f"{domain}_{i:03d}.png"
            Image.fromarray(image).save(image_dir / name)
            Image.fromarray(mask).save(mask_dir / name)
    return root


def synthetic_recipe_dict(root: Path, image_size: int = 64) -> dict[str, Any]:
    """A raw recipe mapping for data written by :func:`write_synthetic_dataset`.

    Two data sets (``source``, ``target``) with seeded 0.75 / 0.25 train / test splits; training
    on ``target/train``, evaluation on ``target/test`` and all of ``source``; ``source`` is also
    the unlabelled source domain. A small U-Net (resnet18, depth 3) trains for 3 epochs.

    Args:
        root: the folder passed to :func:`write_synthetic_dataset`.
        image_size: model input size (a multiple of 32).

    Returns:
        A plain dict that :func:`alframe.config.recipe_from_dict` accepts.
    """
    split = {"kind": "random", "fractions": {"train": 0.75, "test": 0.25}}
    return {
        "name": "synthetic_demo",
        "seed": 0,
        "data": {
            "root": str(Path(root)),
            "datasets": {
                "source": {"path": "source", "split": dict(split)},
                "target": {"path": "target", "split": dict(split)},
            },
            "classes": {"background": 0, "foreground": 255},
            "image_size": [image_size, image_size],
            "in_channels": 1,
            "normalization": {"method": "percentile", "low": 0.5, "high": 99.5},
            "train": {"dataset": "target", "split": "train"},
            "val_fraction": 0.2,
            "evaluate": {
                "target_test": {"dataset": "target", "split": "test"},
                "source": {"dataset": "source"},
            },
            "source": {"dataset": "source"},
        },
        "model": {
            "arch": "Unet",
            "encoder": "resnet18",
            "encoder_depth": 3,
            # smp needs one decoder stage per encoder stage.
            "extra": {"decoder_channels": [64, 32, 16]},
        },
        "train": {
            "max_epochs": 3,
            "batch_size": 8,
            "num_workers": 0,
            "early_stopping_patience": 0,
            "progress": False,
        },
    }
