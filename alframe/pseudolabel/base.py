"""The pseudo-labeller contract and its registry.

A pseudo-labeller is built from reference images + masks (:meth:`PseudoLabeller.fit`) and returns
labels and a confidence for new images (:meth:`PseudoLabeller.predict`). Images are preprocessed
tensors (normalised, resized as the feature source expects); labels are class indices with
:data:`~alframe.pseudolabel.matching.IGNORE_LABEL` (-1) for pixels left without a pseudo-label.

Adding a pseudo-labeller = its module + its test + ``@PSEUDOLABELLERS.register("name")``.
Third-party ones are found through the entry-point group ``alframe.pseudolabellers``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from alframe.errors import DataError
from alframe.registry import Registry

__all__ = ["PSEUDOLABELLERS", "PseudoLabeller", "PseudoLabels", "as_image_list"]

PSEUDOLABELLERS: Registry[Any] = Registry("pseudolabellers")
"""Name → pseudo-labeller class (``"rpg"``, ...)."""


@dataclass(frozen=True)
class PseudoLabels:
    """Pseudo-labels of a batch of images.

    Attributes:
        labels: (B, H, W) int64 class indices; -1 where no pseudo-label is given.
        confidence: (B, H, W) float32, higher = more trustworthy (meaning depends on the method).
        similarity: (B, H, W) float32 match score, or the confidence again for methods without one.
    """

    labels: torch.Tensor
    confidence: torch.Tensor
    similarity: torch.Tensor


def as_image_list(images: torch.Tensor | Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    """(B, C, H, W) tensor or a sequence of (C, H, W) / (1, C, H, W) tensors → list of (1, C, H, W).

    Raises:
        DataError: a tensor has another rank, or the list is empty.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise DataError(f"{what} must be (B, C, H, W), got shape {tuple(images.shape)}")
        items = [images[i : i + 1] for i in range(images.shape[0])]
    else:
        items = []
        for image in images:
            if image.ndim == 3:
                image = image[None]
            if image.ndim != 4 or image.shape[0] != 1:
                raise DataError(f"each of the {what} must be (C, H, W), got {tuple(image.shape)}")
            items.append(image)
    if not items:
        raise DataError(f"no {what} given")
    return items


class PseudoLabeller(ABC):
    """Built from references, labels new images.

    Subclasses set :attr:`name` and implement :meth:`fit` and :meth:`predict`.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def fit(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor],
    ) -> PseudoLabeller:
        """Learns from reference images and their masks.

        Args:
            images: (N, C, H, W), or N tensors (C, H, W) of possibly different sizes.
            masks: (N, H, W) int64 class indices (-1 = unlabelled pixel), or N (H, W) tensors.

        Returns:
            self.

        Raises:
            DataError: no references, sizes that do not match, or no labelled pixel.
        """

    @abstractmethod
    def predict(self, images: torch.Tensor) -> PseudoLabels:
        """Pseudo-labels of new images (B, C, H, W) at their own resolution.

        Raises:
            StateError: :meth:`fit` was not called.
        """
