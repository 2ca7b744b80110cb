"""Per-image Dice and IoU with an explicit formula.

For image b and class c, with P = predicted pixels of c and G = ground-truth pixels of c (both
restricted to labelled pixels, i.e. mask != -1):

    Dice = 2 |P ∩ G| / (|P| + |G|)        IoU = |P ∩ G| / |P ∪ G|

and both are **1.0 when P and G are both empty**: a model that correctly predicts "nothing of
class c here" is right, and counting it as 0 would punish images without the structure. When only
one of them is empty the formulas give 0. The foreground score of an image is the mean over the
foreground classes 1..K-1 (for binary problems: class 1).
"""

from __future__ import annotations

import torch

from alframe.models.losses import IGNORE_INDEX

__all__ = ["foreground_mean", "per_image_dice_iou"]


def per_image_dice_iou(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of every image and class.

    Args:
        pred: (B, H, W) predicted class indices.
        target: (B, H, W) ground-truth class indices, :data:`IGNORE_INDEX` for unlabelled pixels.
        num_classes: K.

    Returns:
        ``(dice, iou)``, each (B, K) float64 on the input device.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and target must both be (B, H, W), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    valid = target != IGNORE_INDEX
    classes = torch.arange(num_classes, device=pred.device).view(1, num_classes, 1, 1)
    # (B, K, H, W) membership masks; fine for the image sizes we evaluate (<= 1024², K small).
    p = (pred.unsqueeze(1) == classes) & valid.unsqueeze(1)
    g = (target.unsqueeze(1) == classes) & valid.unsqueeze(1)
    inter = (p & g).sum(dim=(2, 3)).double()
    p_sum = p.sum(dim=(2, 3)).double()
    g_sum = g.sum(dim=(2, 3)).double()
    union = p_sum + g_sum - inter
    one = torch.ones_like(inter)
    dice = torch.where(p_sum + g_sum > 0, 2 * inter / (p_sum + g_sum).clamp_min(1), one)
    iou = torch.where(union > 0, inter / union.clamp_min(1), one)
    return dice, iou


def foreground_mean(per_class: torch.Tensor) -> torch.Tensor:
    """Mean over the foreground classes of a (B, K) per-class score: (B,)."""
    return per_class[:, 1:].mean(dim=1)
