"""Segmentation models: smp/timm factory, Lightning task, training entry point and evaluation.

Nothing here downloads weights: encoders start from random initialisation unless
``model.encoder_weights`` names a local file. Masks use class indices with ``IGNORE_INDEX`` (-1)
for unlabelled pixels.
"""

from __future__ import annotations

import os

# Before timm / smp pull in huggingface_hub (see ../shared/ENVIRONMENT.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from alframe.models.evaluation import (
    evaluate_segmentation,
    format_table,
    summarize,
    write_evaluation,
)
from alframe.models.factory import (
    WeightsReport,
    architecture_names,
    build_model,
    encoder_feature_channels,
    encoder_names,
    load_encoder_weights,
    load_model_weights,
    model_output_channels,
    read_state_dict,
)
from alframe.models.losses import IGNORE_INDEX, SegmentationLoss, check_mask
from alframe.models.metrics import foreground_mean, per_image_dice_iou
from alframe.models.task import SegmentationTask, logits_to_proba
from alframe.models.training import TrainResult, fit_segmentation, load_task

__all__ = [
    "IGNORE_INDEX",
    "SegmentationLoss",
    "SegmentationTask",
    "TrainResult",
    "WeightsReport",
    "architecture_names",
    "build_model",
    "check_mask",
    "encoder_feature_channels",
    "encoder_names",
    "evaluate_segmentation",
    "fit_segmentation",
    "foreground_mean",
    "format_table",
    "load_encoder_weights",
    "load_model_weights",
    "load_task",
    "logits_to_proba",
    "model_output_channels",
    "per_image_dice_iou",
    "read_state_dict",
    "summarize",
    "write_evaluation",
]
