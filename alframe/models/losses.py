"""Dice + cross-entropy segmentation loss with ignored pixels.

Masks hold class indices ``0 .. K-1``; :data:`IGNORE_INDEX` (-1) marks pixels without a label
(e.g. regions an annotator has not labelled yet in a later round). Ignored pixels contribute
nothing to either term and receive zero gradient. -1 rather than 255 was chosen because 255 is a
common *class value* in mask files (``{background: 0, lung: 255}``) before values are mapped to
indices, and -1 can never be a valid index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alframe.errors import ConfigError, DataError

__all__ = ["IGNORE_INDEX", "SegmentationLoss", "check_mask"]

IGNORE_INDEX = -1


def check_mask(mask: torch.Tensor, num_classes: int) -> None:
    """Refuse masks whose values are not class indices (or :data:`IGNORE_INDEX`).

    Args:
        mask: (B, H, W) integer class indices.
        num_classes: K.

    Raises:
        DataError: wrong dtype, or values outside ``{-1, 0, ..., K-1}``.
    """
    if mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise DataError(
            f"masks must be integer class indices (torch.long), got {mask.dtype}; map mask "
            "values to indices with data.classes"
        )
    if mask.numel() == 0:
        return
    low, high = int(mask.min()), int(mask.max())
    if low < IGNORE_INDEX or high >= num_classes:
        raise DataError(
            f"mask values must be class indices 0..{num_classes - 1} or {IGNORE_INDEX} (ignored), "
            f"got values in [{low}, {high}]; map raw mask values (e.g. 255) to indices with "
            "data.classes"
        )


class SegmentationLoss(nn.Module):
    """``dice_weight * soft Dice loss + ce_weight * cross-entropy``, ignoring :data:`IGNORE_INDEX`.

    Binary problems (one logit channel) use sigmoid probabilities, binary cross-entropy and the
    Dice loss of the foreground. Multi-class problems (K channels) use softmax, cross-entropy and
    the mean Dice loss over all K classes. The Dice terms are computed over the whole batch
    (one sum per class over B, H, W) with additive smoothing 1, so a batch without foreground
    still has a finite loss that pushes foreground probabilities towards 0.

    Args:
        num_classes: K (2 = binary).
        dice_weight: weight of the Dice term (>= 0).
        ce_weight: weight of the (binary) cross-entropy term (>= 0).
        smooth: additive smoothing of the Dice ratio.
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight <= 0:
            raise ConfigError(
                f"train.dice_weight ({dice_weight}) and train.ce_weight ({ce_weight}) must be "
                ">= 0 and not both 0"
            )
        self.num_classes = num_classes
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of one batch.

        Args:
            logits: (B, 1, H, W) for binary or (B, K, H, W) for multi-class problems.
            mask: (B, H, W) long class indices, :data:`IGNORE_INDEX` where unlabelled.

        Returns:
            Scalar loss; 0 (still attached to the graph) when every pixel is ignored.
        """
        # Losses in float32 even under mixed precision: sums over many pixels overflow fp16.
        logits = logits.float()
        valid = mask != IGNORE_INDEX
        n_valid = valid.sum().clamp_min(1)
        valid_f = valid.unsqueeze(1).float()
        if self.num_classes == 2:
            logit = logits[:, :1]
            target = (mask == 1).unsqueeze(1).float()
            bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
            ce = (bce * valid_f).sum() / n_valid
            probs = torch.sigmoid(logit) * valid_f
            dice = self._dice_loss(probs, target * valid_f)
        else:
            ce_map = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX, reduction="none")
            ce = ce_map.sum() / n_valid
            probs = torch.softmax(logits, dim=1) * valid_f
            one_hot = F.one_hot(mask.clamp_min(0), self.num_classes).permute(0, 3, 1, 2).float()
            dice = self._dice_loss(probs, one_hot * valid_f)
        return self.dice_weight * dice + self.ce_weight * ce

    def _dice_loss(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> one Dice per channel over the batch, then the mean over channels.
        dims = (0, 2, 3)
        intersection = (probs * target).sum(dims)
        cardinality = probs.sum(dims) + target.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        return 1 - dice.mean()
