"""RPG: reference-guided pseudo-labels (Seibold et al., AAAI 2022; docs/methods/rpg.md).

Every pixel of a new image takes the label of the most similar reference pixel in feature space
(cosine of L2-normalised features), or a similarity-weighted vote of the k most similar. The
reference bank holds at most ``max_per_class`` pixels per class (seeded sample), so rare classes
are not swamped by background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from alframe.errors import ConfigError, DataError, StateError

if TYPE_CHECKING:
    from alframe.inference import Hardware
from alframe.pseudolabel.base import PSEUDOLABELLERS, PseudoLabeller, PseudoLabels, as_image_list
from alframe.pseudolabel.matching import (
    DEFAULT_BANK_BLOCK,
    Backend,
    ReferenceBank,
    ReferenceBankBuilder,
    filter_by_similarity,
    grid_positions,
    match_labels,
    prototype_bank,
)

__all__ = ["RPGOptions", "RPGPseudoLabeller", "compact_bank", "transfer_labels"]


@dataclass(frozen=True)
class RPGOptions:
    """Matching options of RPG (defaults: docs/methods/rpg.md).

    Attributes:
        top_k: 1 = nearest reference pixel; k > 1 = similarity-weighted vote of the k best.
        temperature: τ of the vote weights ``softmax(score / τ)``.
        max_per_class: M, reference pixels kept per class.
        filter_percentile: pixels whose best score is below this percentile (of the pixels of one
            call) get label -1; None = off.
        spatial_weight: w of the spatial penalty ``w·||p_u - p_j||²`` on normalised (y, x)
            positions in [0, 1]; 0 = off. Useful for roughly aligned anatomy (chest X-rays).
        match_stride: features are average-pooled by this factor before matching and the labels
            resized back (nearest): stride² fewer matches, coarser labels. 1 = off.
        prototypes_per_class: compress the bank to this many spherical k-means prototypes per
            class before matching (approximate, much faster); None = exact nearest pixel.
        chunk_size: query pixels per block (None: automatic, see
            :func:`~alframe.pseudolabel.matching.match_labels`).
        bank_block: reference pixels per block.
        backend: ``"auto"``, ``"torch"`` or ``"faiss"`` (see :func:`~alframe.pseudolabel.matching.resolve_backend`).
        seed: seed of the class-balanced reference sample.
    """

    top_k: int = 1
    temperature: float = 0.1
    max_per_class: int = 5000
    filter_percentile: float | None = None
    spatial_weight: float = 0.0
    match_stride: int = 1
    prototypes_per_class: int | None = None
    chunk_size: int | None = None
    bank_block: int = DEFAULT_BANK_BLOCK
    backend: Backend = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "max_per_class", "match_stride", "chunk_size", "bank_block"):
            value = getattr(self, name)
            if name == "chunk_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        protos = self.prototypes_per_class
        if protos is not None and (
            isinstance(protos, bool) or not isinstance(protos, int) or protos < 1
        ):
            raise ConfigError(
                f"prototypes_per_class must be a positive integer or None, got {protos!r}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if self.filter_percentile is not None and not 0 <= self.filter_percentile < 100:
            raise ConfigError(
                f"filter_percentile must be in [0, 100) or None, got {self.filter_percentile!r}"
            )
        if not self.spatial_weight >= 0:
            raise ConfigError(f"spatial_weight must be >= 0, got {self.spatial_weight!r}")
        if self.backend not in ("auto", "torch", "faiss"):
            raise ConfigError(f"backend must be 'auto', 'torch' or 'faiss', got {self.backend!r}")


def compact_bank(bank: ReferenceBank, options: RPGOptions) -> ReferenceBank:
    """``bank`` as matched under ``options``: prototypes when asked for, else unchanged."""
    if options.prototypes_per_class is None:
        return bank
    return prototype_bank(bank, options.prototypes_per_class, seed=options.seed)


def _pool(features: torch.Tensor, stride: int) -> torch.Tensor:
    if stride == 1:
        return features
    return F.avg_pool2d(features, kernel_size=stride, stride=stride, ceil_mode=True)


def transfer_labels(
    features: torch.Tensor,
    bank: ReferenceBank,
    out_size: tuple[int, int] | None = None,
    options: RPGOptions | None = None,
) -> PseudoLabels:
    """RPG pseudo-labels of feature maps against a reference bank.

    Args:
        features: (B, D, h, w) query features (any scale; normalised per pixel here).
        bank: the reference bank (same feature source).
        out_size: (H, W) of the returned maps (nearest-neighbour resize); default (h, w).
        options: matching options (``max_per_class`` and ``seed`` are not used here).

    Returns:
        Labels (B, H, W) int64 (-1 where filtered), confidence and similarity (B, H, W) float32,
        on the features' device.
    """
    opts = options or RPGOptions()
    if features.ndim != 4:
        raise DataError(f"features must be (B, D, h, w), got {tuple(features.shape)}")
    batch, dim, height, width = features.shape
    target = out_size or (height, width)
    pooled = _pool(features.float(), opts.match_stride)
    ph, pw = pooled.shape[-2:]
    queries = pooled.permute(0, 2, 3, 1).reshape(-1, dim)
    positions = grid_positions(ph, pw, queries.device).repeat(batch, 1)
    result = match_labels(
        queries,
        bank,
        top_k=opts.top_k,
        temperature=opts.temperature,
        query_positions=positions if opts.spatial_weight else None,
        spatial_weight=opts.spatial_weight,
        chunk_size=opts.chunk_size,
        bank_block=opts.bank_block,
        backend=opts.backend,
    )
    labels = result.labels.view(batch, ph, pw)
    confidence = result.confidence.view(batch, ph, pw)
    similarity = result.similarity.view(batch, ph, pw)
    if opts.filter_percentile:
        labels = torch.stack(
            [
                filter_by_similarity(labels[i], similarity[i], opts.filter_percentile)
                for i in range(batch)
            ]
        )
    if (ph, pw) != tuple(target):
        stacked = torch.stack([labels.float(), confidence, similarity], dim=1)
        stacked = F.interpolate(stacked, size=tuple(target), mode="nearest")
        labels = stacked[:, 0].round().long()
        confidence, similarity = stacked[:, 1].contiguous(), stacked[:, 2].contiguous()
    return PseudoLabels(labels, confidence, similarity)


def _masks_list(masks: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(masks, torch.Tensor):
        if masks.ndim != 3:
            raise DataError(f"reference masks must be (N, H, W), got shape {tuple(masks.shape)}")
        return [masks[i : i + 1] for i in range(masks.shape[0])]
    out = []
    for mask in masks:
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or mask.shape[0] != 1:
            raise DataError(f"each reference mask must be (H, W), got {tuple(mask.shape)}")
        out.append(mask)
    return out


@PSEUDOLABELLERS.register("rpg")
class RPGPseudoLabeller(PseudoLabeller):
    """Reference-guided pseudo-labels (nearest reference pixel in feature space).

    Args:
        features: the feature source (:class:`~alframe.pseudolabel.features.DecoderFeatures`,
            :class:`~alframe.pseudolabel.features.EncoderFeatures`,
            :class:`~alframe.pseudolabel.features.IntensityFeatures` or any callable images →
            (B, D, h, w)); when it has a ``fit(images)`` method, :meth:`fit` calls it first with
            the reference images.
        num_classes: K (classes of the reference masks, background included).
        options: matching options, or None for the defaults.
        batch_size: images per feature-extraction call (images of equal size are batched).
        **overrides: any :class:`RPGOptions` field (e.g. ``top_k=5``), applied over ``options``.

    Example:
        >>> labeller = PSEUDOLABELLERS.create("rpg", features=IntensityFeatures(), num_classes=2)
        >>> pseudo = labeller.fit(ref_images, ref_masks).predict(new_images)  # doctest: +SKIP
    """

    name = "rpg"

    def __init__(
        self,
        features: Any,
        num_classes: int,
        options: RPGOptions | None = None,
        batch_size: int = 8,
        **overrides: Any,
    ) -> None:
        if not callable(features):
            raise ConfigError(
                f"features must be callable (images → maps), got {type(features).__name__}"
            )
        base = options or RPGOptions()
        unknown = sorted(set(overrides) - set(RPGOptions.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"rpg got unknown option(s) {unknown}; accepted: "
                f"{', '.join(RPGOptions.__dataclass_fields__)}, features, num_classes, batch_size"
            )
        fields = {name: getattr(base, name) for name in RPGOptions.__dataclass_fields__}
        self.options = RPGOptions(**{**fields, **overrides})
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.features = features
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.bank: ReferenceBank | None = None

    def fit(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor],
    ) -> RPGPseudoLabeller:
        """Builds the class-balanced reference bank (see :class:`PseudoLabeller.fit`)."""
        image_list = as_image_list(images, "reference images")
        mask_list = _masks_list(masks)
        if len(image_list) != len(mask_list):
            raise DataError(f"{len(image_list)} reference images but {len(mask_list)} masks")
        for index, (image, mask) in enumerate(zip(image_list, mask_list)):
            if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
                raise DataError(
                    f"reference {index}: image is {tuple(image.shape[-2:])} (H, W) but its mask "
                    f"is {tuple(mask.shape[-2:])}; masks must have their image's size"
                )
        fit = getattr(self.features, "fit", None)
        if callable(fit):
            fit(image_list)
        builder = ReferenceBankBuilder(
            self.num_classes, self.options.max_per_class, seed=self.options.seed
        )
        for batch_images, batch_masks in _batches(image_list, mask_list, self.batch_size):
            maps = self.features(batch_images)
            builder.add(maps, batch_masks.to(maps.device))
        self.bank = compact_bank(builder.build(), self.options)
        return self

    def predict(self, images: torch.Tensor, hardware: Hardware | None = None) -> PseudoLabels:
        """Pseudo-labels (B, H, W) of images (B, C, H, W) (see :class:`PseudoLabeller.predict`).

        Args:
            images: (B, C, H, W) images.
            hardware: run the feature extraction and matching in Lightning's predict loop on
                this hardware (:class:`alframe.inference.Hardware`; several processes each take
                whole batches, rank 0 puts the labels back in order: the same labels as one
                process). None: here, on the feature model's device.
        """
        if self.bank is None:
            raise StateError("the rpg pseudo-labeller has no references yet; call fit() first")
        if images.ndim != 4:
            raise DataError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if hardware is not None:
            return self.predict_dataset(images, hardware)
        parts = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size]
            maps = self.features(batch)
            parts.append(
                transfer_labels(
                    maps, self.bank, (int(batch.shape[-2]), int(batch.shape[-1])), self.options
                )
            )
        return PseudoLabels(
            torch.cat([p.labels for p in parts]),
            torch.cat([p.confidence for p in parts]),
            torch.cat([p.similarity for p in parts]),
        )

    def predict_dataset(
        self, images: torch.Tensor | Dataset[torch.Tensor], hardware: Hardware
    ) -> PseudoLabels:
        """Pseudo-labels (N, H, W) of N images in Lightning's predict loop on ``hardware``.

        Args:
            images: (N, C, H, W) images, or a map-style dataset of N (C, H, W) images of one
                size, read item by item in the processes (a pool need not be in memory).
            hardware: where to run (:class:`alframe.inference.Hardware`); several processes
                each take whole batches of ``batch_size`` images, rank 0 puts the labels back
                in order: the same labels as one process.

        Returns:
            The N images' :class:`PseudoLabels` (in memory on every process).
        """
        if self.bank is None:
            raise StateError("the rpg pseudo-labeller has no references yet; call fit() first")
        from alframe.inference import predict_rows

        step = partial(_label_rows, labeller=self)
        rows, _ = predict_rows(
            _feature_module(self.features), step, images, hardware, batch_size=self.batch_size
        )
        out = torch.from_numpy(rows)
        return PseudoLabels(out[:, 0].long(), out[:, 1].contiguous(), out[:, 2].contiguous())


def _feature_module(features: Any) -> nn.Module:
    """The module inside a feature source (what the predict loop moves to each device)."""
    for name in ("model", "module"):
        inner = getattr(features, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return nn.Identity()


def _label_rows(_net: nn.Module, batch: torch.Tensor, labeller: RPGPseudoLabeller) -> torch.Tensor:
    """One batch (b, C, H, W) → (b, 3, H, W): labels, confidence, similarity (a predict step).

    ``labeller.features`` holds the module the predict loop placed (the same object), so the
    features are computed on this process's device.
    """
    if labeller.bank is None:
        raise StateError("the rpg pseudo-labeller has no references yet; call fit() first")
    maps = labeller.features(batch)
    labels = transfer_labels(
        maps, labeller.bank, (int(batch.shape[-2]), int(batch.shape[-1])), labeller.options
    )
    # Class indices (and -1) are exact in float32.
    return torch.stack(
        [labels.labels.float(), labels.confidence.float(), labels.similarity.float()], dim=1
    )


def _batches(
    images: list[torch.Tensor], masks: list[torch.Tensor], batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive runs of equally sized images, at most ``batch_size`` each."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    run_images: list[torch.Tensor] = []
    run_masks: list[torch.Tensor] = []
    for image, mask in zip(images, masks):
        if run_images and (
            len(run_images) == batch_size or run_images[0].shape[1:] != image.shape[1:]
        ):
            out.append((torch.cat(run_images), torch.cat(run_masks)))
            run_images, run_masks = [], []
        run_images.append(image)
        run_masks.append(mask.long())
    if run_images:
        out.append((torch.cat(run_images), torch.cat(run_masks)))
    return out
