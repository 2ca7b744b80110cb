"""Lightning module for 2-D semantic segmentation with an smp model.

Hyperparameters are saved as plain dicts / lists / numbers (``model_cfg``, ``train_cfg``,
``num_classes``, ``class_names``, ``in_channels`` and optionally the whole resolved ``recipe``),
so a checkpoint restores with ``torch.load(weights_only=True)`` and without alframe's pydantic
classes being pickled.

Batches are dicts ``{"image": (B, C, H, W) float, "mask": (B, H, W) long, "id": list[str],
"index": (B,) long}``; mask value :data:`~alframe.models.losses.IGNORE_INDEX` (-1) marks unlabelled
pixels, which are ignored by the loss and the metrics.

Logged metrics: ``train/loss`` (epoch mean), ``train/lr``, ``val/loss``, ``val/dice`` and
``val/iou`` (mean over the foreground classes of the Dice / IoU accumulated over all validation
pixels), and for multi-class problems ``val/dice_<class name>`` per foreground class.

The learning rate follows AdamW with an optional linear warm-up over ``train.warmup_epochs``
followed by a cosine decay to 0 at the last step, updated **per optimisation step** (smoother
than per epoch for the short runs of active-learning rounds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import torch
from pydantic import ValidationError
from torch import nn
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from alframe.config.schema import ModelConfig, Recipe, TrainConfig
from alframe.errors import ConfigError, ModelError
from alframe.models.factory import build_model, model_output_channels
from alframe.models.losses import IGNORE_INDEX, SegmentationLoss, check_mask

__all__ = ["SegmentationTask", "logits_to_proba"]


def _as_config(value: Any, cls: type[ModelConfig] | type[TrainConfig], key: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{key} must be a {cls.__name__} or a mapping, got {type(value).__name__}"
        )
    try:
        return cls.model_validate(dict(value))
    except ValidationError as err:
        problems = "; ".join(
            f"{key}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(problems) from None


def logits_to_proba(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class probabilities from model logits.

    Args:
        logits: (B, 1, H, W) for binary (``num_classes`` == 2) or (B, K, H, W).
        num_classes: K.

    Returns:
        (B, K, H, W) probabilities summing to 1 over dim 1 (binary: [1 - p, p]).
    """
    logits = logits.float()
    if num_classes == 2 and logits.shape[1] == 1:
        fg = torch.sigmoid(logits)
        return torch.cat([1 - fg, fg], dim=1)
    if logits.shape[1] != num_classes:
        raise ModelError(
            f"the model predicts {logits.shape[1]} channels but num_classes is {num_classes}"
        )
    return torch.softmax(logits, dim=1)


class SegmentationTask(L.LightningModule):
    """An smp segmentation model with its loss, metrics and optimiser.

    Args:
        model_cfg: the recipe's ``model`` section (a :class:`ModelConfig` or its dict).
        train_cfg: the recipe's ``train`` section (a :class:`TrainConfig` or its dict).
        num_classes: K classes including background (2 = binary, one sigmoid channel).
        class_names: K names, background first; default ``class0 .. class{K-1}``.
        in_channels: image channels C.
        recipe: the whole resolved recipe as plain data, stored in the checkpoint for provenance.
        load_weights: load ``model_cfg.encoder_weights`` / ``model_cfg.weights`` files. Restoring
            from a checkpoint passes False: the checkpoint has the trained weights, and the
            original files need not exist any more.
    """

    def __init__(
        self,
        model_cfg: ModelConfig | Mapping[str, Any],
        train_cfg: TrainConfig | Mapping[str, Any],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        in_channels: int = 1,
        recipe: Mapping[str, Any] | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        model_config: ModelConfig = _as_config(model_cfg, ModelConfig, "model")
        train_config: TrainConfig = _as_config(train_cfg, TrainConfig, "train")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        names = (
            [str(n) for n in class_names]
            if class_names is not None
            else [f"class{i}" for i in range(num_classes)]
        )
        if len(names) != num_classes:
            raise ConfigError(f"{len(names)} class names {names} for {num_classes} classes")
        # Plain data only, so that checkpoints load with weights_only=True.
        self.save_hyperparameters(
            {
                "model_cfg": model_config.model_dump(mode="json"),
                "train_cfg": train_config.model_dump(mode="json"),
                "num_classes": int(num_classes),
                "class_names": names,
                "in_channels": int(in_channels),
                "recipe": dict(recipe) if recipe is not None else None,
            }
        )
        self.model_config = model_config
        self.train_config = train_config
        self.num_classes = int(num_classes)
        self.class_names = names
        self.in_channels = int(in_channels)
        build_cfg = (
            model_config
            if load_weights
            else model_config.model_copy(update={"encoder_weights": None, "weights": None})
        )
        self.model: nn.Module = build_model(build_cfg, self.in_channels, self.num_classes)
        self.loss_fn = SegmentationLoss(
            self.num_classes, train_config.dice_weight, train_config.ce_weight
        )
        # Dice == F1 per class; global accumulation over all validation pixels. A class absent
        # from both predictions and targets scores 1 (see alframe.models.metrics).
        self.val_dice = MulticlassF1Score(
            num_classes=self.num_classes,
            average="none",
            ignore_index=IGNORE_INDEX,
            zero_division=1.0,
        )
        self.val_iou = MulticlassJaccardIndex(
            num_classes=self.num_classes,
            average="none",
            ignore_index=IGNORE_INDEX,
            zero_division=1.0,
        )

    @classmethod
    def from_recipe(cls, recipe: Recipe, load_weights: bool = True) -> SegmentationTask:
        """A task for ``recipe`` (model, train, classes, in_channels and the recipe itself)."""
        from alframe.config.loading import recipe_to_dict

        return cls(
            model_cfg=recipe.model,
            train_cfg=recipe.train,
            num_classes=recipe.num_classes,
            class_names=list(recipe.data.classes),
            in_channels=recipe.data.in_channels,
            recipe=recipe_to_dict(recipe),
            load_weights=load_weights,
        )

    @property
    def out_channels(self) -> int:
        """Logit channels: 1 for binary problems, K otherwise."""
        return model_output_channels(self.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits.

        Args:
            images: (B, C, H, W); H and W multiples of the encoder stride (32 at depth 5).

        Returns:
            (B, 1, H, W) logits for binary problems, (B, K, H, W) otherwise.
        """
        return self.model(images)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities in evaluation mode (the previous train/eval mode is restored).

        Args:
            images: (B, C, H, W), on any device (moved to the model's device).

        Returns:
            (B, K, H, W) float32 probabilities on the model's device; binary problems give two
            channels [background, foreground].
        """
        was_training = self.training
        self.eval()
        try:
            logits = self(images.to(self.device))
        finally:
            self.train(was_training)
        return logits_to_proba(logits, self.num_classes)

    # ------------------------------------------------------------------ training loop hooks

    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        check_mask(masks, self.num_classes)
        logits = self(images)
        return self.loss_fn(logits, masks), logits

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss of one training batch (see the module docstring for the batch format)."""
        loss, _ = self._step(batch)
        batch_size = int(batch["image"].shape[0])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def on_train_epoch_start(self) -> None:
        """Log the learning rate the epoch starts with (the callbacks' epoch-end history sees it)."""
        if self._trainer is not None and self.trainer.optimizers:
            lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])
            self.log("train/lr", lr, on_step=False, on_epoch=True)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Validation loss; predictions feed the Dice / IoU accumulators."""
        loss, logits = self._step(batch)
        preds = logits_to_proba(logits, self.num_classes).argmax(dim=1)
        self.val_dice.update(preds, batch["mask"])
        self.val_iou.update(preds, batch["mask"])
        batch_size = int(batch["image"].shape[0])
        # sync_dist: with several devices each process sees a shard of the validation set.
        self.log(
            "val/loss", loss, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True
        )
        return loss

    def on_validation_epoch_end(self) -> None:
        """Log foreground-mean Dice and IoU (and per-class Dice for multi-class problems)."""
        dice = self.val_dice.compute()
        iou = self.val_iou.compute()
        self.val_dice.reset()
        self.val_iou.reset()
        self.log("val/dice", dice[1:].mean(), prog_bar=True)
        self.log("val/iou", iou[1:].mean())
        if self.num_classes > 2:
            for index, name in enumerate(self.class_names[1:], start=1):
                self.log(f"val/dice_{name}", dice[index])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep checkpoints loadable with ``weights_only=True``.

        Lightning also stores the data module's hyperparameters, which may be arbitrary objects
        (a pydantic recipe, paths): they would make ``torch.load(weights_only=True)`` fail.
        A data module is never restored from a checkpoint (the ``recipe`` hparam has it all), so
        they are dropped.
        """
        data_module = L.LightningDataModule
        for key in (
            data_module.CHECKPOINT_HYPER_PARAMS_KEY,
            data_module.CHECKPOINT_HYPER_PARAMS_NAME,
            data_module.CHECKPOINT_HYPER_PARAMS_TYPE,
        ):
            checkpoint.pop(key, None)

    def configure_optimizers(self) -> Any:
        """AdamW with linear warm-up and per-step cosine decay (see the module docstring)."""
        cfg = self.train_config
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total_steps, steps_per_epoch = self._schedule_lengths()
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        if total_steps is not None:
            # Warm-up never takes the whole run (max_steps may be shorter than the warm-up).
            warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            if total_steps is None:
                return 1.0
            span = max(total_steps - warmup_steps, 1)
            progress = min((step - warmup_steps) / span, 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _schedule_lengths(self) -> tuple[int | None, int]:
        """(total optimisation steps or None when unknown, steps per epoch)."""
        if self._trainer is None:
            return None, 1
        estimated = self.trainer.estimated_stepping_batches
        total = int(estimated) if math.isfinite(estimated) and estimated > 0 else None
        batches = self.trainer.num_training_batches
        accumulate = max(int(self.trainer.accumulate_grad_batches), 1)
        if isinstance(batches, int | float) and math.isfinite(batches) and batches > 0:
            per_epoch = max(math.ceil(batches / accumulate), 1)
        elif total is not None and self.trainer.max_epochs:
            per_epoch = max(total // self.trainer.max_epochs, 1)
        else:
            per_epoch = 1
        return total, per_epoch
