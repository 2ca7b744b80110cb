"""Intensity normalisation and the albumentations pipelines built from a recipe.

Order of operations for one item: read raw intensities → :func:`normalize_intensity` (per image)
→ the pipeline from :func:`build_transforms` (resize to ``data.image_size``, then the recipe's
augmentation steps). Normalising first means intensity augmentations (brightness, contrast,
gamma) act on data in about [0, 1] whatever the file's bit depth.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from alframe.config.schema import AugmentStep, NormalizationConfig
from alframe.errors import ConfigError

if TYPE_CHECKING:
    import albumentations

_TINY = 1e-8  # spreads below this are treated as a constant image


def normalize_intensity(image: np.ndarray, cfg: NormalizationConfig) -> np.ndarray:
    """Normalise one image's intensities; statistics are taken over all pixels and channels.

    - ``minmax``: ``(x - min) / (max - min)``.
    - ``percentile``: clip to the ``low`` / ``high`` percentiles, then map them to [0, 1]; when
      the two percentiles coincide (a mostly flat image) min / max are used instead.
    - ``zscore``: ``(x - mean) / std``.
    - ``none``: divide by 255 when every value lies in [0, 255] (8-bit range), else unchanged.

    A constant image becomes all zeros (never a division by zero).

    Args:
        image: intensities, shape (H, W, C) or (H, W), any real dtype.
        cfg: ``data.normalization``.

    Returns:
        float32 array of the input's shape.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    method = cfg.method
    if method == "none":
        low, high = float(x.min()), float(x.max())
        return x / np.float32(255.0) if low >= 0.0 and high <= 255.0 else x.copy()
    if method == "zscore":
        # float64 statistics: float32 sums lose precision on large 16-bit images.
        mean = float(x.mean(dtype=np.float64))
        std = float(x.std(dtype=np.float64))
        if std < _TINY:
            return np.zeros_like(x)
        return ((x - mean) / std).astype(np.float32)
    if method == "percentile":
        low, high = (float(v) for v in np.percentile(x, [cfg.low, cfg.high]))
        if high - low < _TINY:
            low, high = float(x.min()), float(x.max())
        x = np.clip(x, low, high)
    elif method == "minmax":
        low, high = float(x.min()), float(x.max())
    else:
        raise ConfigError(
            f"data.normalization.method = {method!r}: expected minmax, percentile, zscore or none"
        )
    if high - low < _TINY:
        return np.zeros_like(x)
    return ((x - low) / (high - low)).astype(np.float32)


def _step_kwargs(step: AugmentStep) -> dict[str, Any]:
    extra = dict(step.model_extra or {})
    # YAML has no tuples; albumentations accepts lists for ranges in 2.x, but tuples are the
    # documented form, so convert two-element lists.
    return {k: tuple(v) if isinstance(v, list) and len(v) == 2 else v for k, v in extra.items()}


def _transform_names(module: Any) -> list[str]:
    base = module.BasicTransform
    return sorted(
        name
        for name in dir(module)
        if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), base)
    )


def build_step(step: AugmentStep, where: str = "augment") -> albumentations.BasicTransform:
    """Instantiate one albumentations transform from a recipe step.

    Args:
        step: ``{name: <albumentations class>, **kwargs}``.
        where: the recipe key for error messages, e.g. ``augment.train[1]``.

    Raises:
        ConfigError: unknown transform name (with close matches) or invalid arguments.
    """
    import albumentations as A

    names = _transform_names(A)
    if step.name not in names:
        close = difflib.get_close_matches(step.name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"{where}.name = {step.name!r} is not an albumentations transform{hint} "
            "(see https://albumentations.ai/docs for the list)"
        )
    kwargs = _step_kwargs(step)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transform = getattr(A, step.name)(**kwargs)
    except (TypeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{where} ({step.name}) with {kwargs}: invalid arguments ({first_line}); check the "
            f"albumentations documentation of {step.name}"
        ) from None
    for warning in caught:
        text = str(warning.message)
        # albumentations only warns about unknown keyword arguments; a typo in a recipe must not
        # be silently ignored, so it is an error here.
        if "not valid for transform" in text:
            raise ConfigError(
                f"{where} ({step.name}): {text.split(' are not valid')[0]} not accepted by "
                f"{step.name}; check the spelling against the albumentations documentation"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return transform


def build_transforms(
    augment_steps: Sequence[AugmentStep],
    image_size: tuple[int, int],
    train: bool,
    seed: int | None = None,
) -> albumentations.Compose:
    """The albumentations pipeline for one split: resize, then the recipe's steps.

    The image is resized with linear interpolation (area averaging when shrinking, so that thin
    structures do not alias), the mask with nearest neighbour so labels stay labels.

    Args:
        augment_steps: ``augment.train`` or ``augment.eval``.
        image_size: (height, width) after resizing.
        train: whether this is the training pipeline (only used in error messages; pass the
            eval steps for evaluation).
        seed: seed of the pipeline's own random generator (``None``: fresh entropy).

    Returns:
        A Compose that takes ``image`` (H, W, C) float32 and optionally ``mask`` (H, W).

    Raises:
        ConfigError: an unknown transform name or invalid transform arguments.
    """
    import albumentations as A
    import cv2

    height, width = (int(v) for v in image_size)
    where = "augment.train" if train else "augment.eval"
    steps: list[Any] = [
        A.Resize(
            height,
            width,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            area_for_downscale="image",
        )
    ]
    steps += [build_step(step, f"{where}[{i}]") for i, step in enumerate(augment_steps)]
    return A.Compose(steps, seed=seed)
