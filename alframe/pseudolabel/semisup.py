"""Semi-supervised training with RPG pseudo-labels (docs/methods/rpg.md, training).

Loss of one step: ``L = L_sup(labelled batch) + λ(t) · L_pl(unlabelled batch, ŷ)`` where ŷ are
RPG pseudo-labels of the unlabelled batch, computed without gradient from the model's *current*
decoder features: the labelled batch's features and masks form the reference bank, and the
unlabelled batch's features from the same forward pass that receives the loss are matched
against it — so ŷ is computed on the same augmented view that gets the loss, with one forward
pass per view. λ(t) is 0 during a supervised warm-up (default 5 % of the optimisation steps),
then follows the sigmoid ramp ``λ_max · exp(-5 (1 - t)²)`` (t from 0 to 1 over ``ramp_fraction``
of the steps), then stays at λ_max.

The unlabelled batch's ``mask`` is never used for training. When it holds labels (a simulation
with hidden ground truth), the pseudo-labels' pixel accuracy against it is logged as
``train/pl_accuracy`` and kept in the step history — never used for model selection.

Checkpoints are ordinary :class:`~alframe.models.SegmentationTask` checkpoints (plus a
``pseudo_cfg`` hyper-parameter), so :func:`alframe.models.load_task` restores them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader

from alframe.config.schema import Recipe
from alframe.data.samples import Sample
from alframe.errors import ConfigError, DataError
from alframe.models.losses import IGNORE_INDEX, check_mask
from alframe.models.task import SegmentationTask
from alframe.models.training import TrainResult, fit_segmentation
from alframe.pseudolabel.features import capture_decoder_features
from alframe.pseudolabel.matching import ReferenceBankBuilder
from alframe.pseudolabel.rpg import RPGOptions, compact_bank, transfer_labels

__all__ = [
    "SemiSupervisedOptions",
    "SemiSupervisedResult",
    "SemiSupervisedTask",
    "fit_semisupervised",
    "sigmoid_rampup",
]


def sigmoid_rampup(step: int, warmup_steps: int, ramp_steps: int, max_weight: float = 1.0) -> float:
    """The pseudo-label loss weight λ at optimisation step ``step``.

    0 before ``warmup_steps``; then ``max_weight · exp(-5 (1 - t)²)`` with
    ``t = (step - warmup_steps) / ramp_steps`` clipped to [0, 1]; ``max_weight`` after the ramp
    (immediately when ``ramp_steps`` is 0).

    Args:
        step: 0-based optimisation step.
        warmup_steps: steps with λ = 0 (supervised only).
        ramp_steps: length of the sigmoid ramp.
        max_weight: λ_max.

    Returns:
        λ(step) as a float.
    """
    if step < warmup_steps:
        return 0.0
    if ramp_steps <= 0:
        return float(max_weight)
    t = min(max((step - warmup_steps) / ramp_steps, 0.0), 1.0)
    return float(max_weight * math.exp(-5.0 * (1.0 - t) ** 2))


@dataclass(frozen=True)
class SemiSupervisedOptions:
    """Options of :func:`fit_semisupervised`.

    Attributes:
        warmup_fraction: share of the optimisation steps trained on labels only.
        ramp_fraction: share of the steps over which λ ramps (sigmoid) from 0 to ``lambda_max``.
        lambda_max: final weight of the pseudo-label loss.
        unlabelled_batch_size: unlabelled images per step (default: ``train.batch_size``).
        rpg: label-transfer options (top-k, cap per class, filter, spatial prior, ...); the bank's
            sampling seed is ``rpg.seed + step``.
    """

    warmup_fraction: float = 0.05
    ramp_fraction: float = 0.25
    lambda_max: float = 1.0
    unlabelled_batch_size: int | None = None
    rpg: RPGOptions = field(default_factory=RPGOptions)

    def __post_init__(self) -> None:
        for name in ("warmup_fraction", "ramp_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if not self.lambda_max >= 0:
            raise ConfigError(f"lambda_max must be >= 0, got {self.lambda_max!r}")
        size = self.unlabelled_batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"unlabelled_batch_size must be a positive integer, got {size!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and tracking)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SemiSupervisedOptions:
        """Inverse of :meth:`to_dict`; unknown keys are refused.

        Raises:
            ConfigError: unknown or invalid keys.
        """
        values = dict(data)
        rpg = values.pop("rpg", None)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown semi-supervised option(s) {unknown}; accepted: "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        if isinstance(rpg, Mapping):
            bad = sorted(set(rpg) - set(RPGOptions.__dataclass_fields__))
            if bad:
                raise ConfigError(
                    f"unknown rpg option(s) {bad}; accepted: {', '.join(RPGOptions.__dataclass_fields__)}"
                )
            rpg = RPGOptions(**rpg)
        return cls(**values, rpg=rpg if isinstance(rpg, RPGOptions) else RPGOptions())


class SemiSupervisedTask(SegmentationTask):
    """A :class:`SegmentationTask` whose training batches also carry unlabelled images.

    Training batches are ``{"labelled": batch, "unlabelled": batch}`` (each in the
    :class:`SegmentationTask` format); a plain labelled batch trains supervised only. Validation
    is the parent's.

    Args:
        pseudo_cfg: :class:`SemiSupervisedOptions` or its dict.
        *args, **kwargs: :class:`SegmentationTask` arguments.

    Attributes:
        step_history: one dict per training step: ``step``, ``lambda``, ``sup_loss``,
            ``pl_loss`` and, with hidden ground truth, ``pl_accuracy``.
    """

    def __init__(
        self,
        *args: Any,
        pseudo_cfg: SemiSupervisedOptions | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        options = (
            pseudo_cfg
            if isinstance(pseudo_cfg, SemiSupervisedOptions)
            else SemiSupervisedOptions.from_dict(pseudo_cfg or {})
        )
        self.pseudo_options = options
        self.hparams["pseudo_cfg"] = options.to_dict()
        self.warmup_steps = 0
        self.ramp_steps = 0
        self.step_history: list[dict[str, float]] = []

    @classmethod
    def from_recipe_with_options(
        cls, recipe: Recipe, options: SemiSupervisedOptions, load_weights: bool = True
    ) -> SemiSupervisedTask:
        """A task for ``recipe`` (like :meth:`SegmentationTask.from_recipe`) with ``options``."""
        from alframe.config.loading import recipe_to_dict

        return cls(
            model_cfg=recipe.model,
            train_cfg=recipe.train,
            num_classes=recipe.num_classes,
            class_names=list(recipe.data.classes),
            in_channels=recipe.data.in_channels,
            recipe=recipe_to_dict(recipe),
            load_weights=load_weights,
            pseudo_cfg=options,
        )

    def on_train_start(self) -> None:
        """Fix the warm-up and ramp lengths from the run's total number of steps."""
        total, _ = self._schedule_lengths()
        if total is None:
            warnings.warn(
                "the number of training steps is unknown; the pseudo-label loss starts after "
                "100 warm-up steps with a 500-step ramp",
                UserWarning,
                stacklevel=2,
            )
            self.warmup_steps, self.ramp_steps = 100, 500
            return
        self.warmup_steps = round(self.pseudo_options.warmup_fraction * total)
        self.ramp_steps = round(self.pseudo_options.ramp_fraction * total)

    def current_lambda(self) -> float:
        """λ at the current optimisation step."""
        return sigmoid_rampup(
            int(self.global_step),
            self.warmup_steps,
            self.ramp_steps,
            self.pseudo_options.lambda_max,
        )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Supervised loss + λ(t) · pseudo-label loss (see the module docstring)."""
        if "labelled" in batch:
            labelled: Mapping[str, Any] = batch["labelled"]
            unlabelled: Mapping[str, Any] | None = batch.get("unlabelled")
        else:
            labelled, unlabelled = batch, None
        images, masks = labelled["image"], labelled["mask"]
        check_mask(masks, self.num_classes)
        lam = self.current_lambda()
        use_pseudo = unlabelled is not None and lam > 0 and bool((masks >= 0).any())
        row: dict[str, float] = {"step": float(self.global_step), "lambda": lam}
        with capture_decoder_features(self.model) as captured:
            sup_loss = self.loss_fn(self(images), masks)
            pl_loss = torch.zeros((), device=sup_loss.device)
            if use_pseudo and unlabelled is not None:
                unlabelled_images = unlabelled["image"]
                logits = self(unlabelled_images)
                with torch.no_grad():
                    rpg = self.pseudo_options.rpg
                    builder = ReferenceBankBuilder(
                        self.num_classes, rpg.max_per_class, seed=rpg.seed + int(self.global_step)
                    )
                    builder.add(captured[0].detach(), masks)
                    pseudo = transfer_labels(
                        captured[1].detach(),
                        compact_bank(builder.build(), rpg),
                        (int(unlabelled_images.shape[-2]), int(unlabelled_images.shape[-1])),
                        rpg,
                    )
                pl_loss = self.loss_fn(logits, pseudo.labels)
                hidden = unlabelled.get("mask")
                if isinstance(hidden, torch.Tensor) and bool((hidden >= 0).any()):
                    scored = (hidden >= 0) & (pseudo.labels != IGNORE_INDEX)
                    correct = (pseudo.labels == hidden) & scored
                    accuracy = correct.sum().float() / scored.sum().clamp_min(1).float()
                    row["pl_accuracy"] = float(accuracy)
                    self.log(
                        "train/pl_accuracy",
                        accuracy,
                        on_step=False,
                        on_epoch=True,
                        batch_size=int(unlabelled_images.shape[0]),
                    )
        loss = sup_loss + lam * pl_loss
        batch_size = int(images.shape[0])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train/sup_loss", sup_loss, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train/pl_loss", pl_loss, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train/lambda", lam, on_step=False, on_epoch=True, batch_size=batch_size)
        row["sup_loss"] = float(sup_loss.detach())
        row["pl_loss"] = float(pl_loss.detach())
        self.step_history.append(row)
        return loss


@dataclass
class SemiSupervisedResult(TrainResult):
    """:class:`~alframe.models.TrainResult` plus the per-step λ / loss history.

    Attributes:
        steps: :attr:`SemiSupervisedTask.step_history`.
        warmup_steps: optimisation steps with λ = 0.
        ramp_steps: length of the sigmoid ramp.
    """

    steps: list[dict[str, float]] = field(default_factory=list)
    warmup_steps: int = 0
    ramp_steps: int = 0


@dataclass
class _Batches:
    """The train / validation loaders in the shape :func:`fit_segmentation` takes."""

    train: Any
    val: Any | None

    def train_dataloader(self) -> Any:
        return self.train

    def val_dataloader(self) -> Any | None:
        return self.val


def _loader(
    dataset: Any, batch_size: int, shuffle: bool, recipe: Recipe, seed: int
) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=recipe.train.num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=recipe.train.num_workers > 0,
    )


def fit_semisupervised(
    recipe: Recipe,
    labelled: Sequence[Sample],
    unlabelled: Sequence[Sample],
    out_dir: str | os.PathLike[str],
    options: SemiSupervisedOptions | None = None,
    val_samples: Sequence[Sample] | None = None,
    logger: Logger | Iterable[Logger] | None = None,
    callbacks: Iterable[Callback] = (),
    overwrite: bool = False,
) -> SemiSupervisedResult:
    """Train the recipe's model on labelled samples plus RPG pseudo-labels of unlabelled ones.

    Like :func:`alframe.models.fit_segmentation` (seeding, checkpointing on ``val/dice``, early
    stopping, hardware settings), with an epoch = one pass over the unlabelled samples (the
    labelled loader cycles).

    Args:
        recipe: the resolved recipe (``model``, ``train``, ``augment``, ``data``, ``seed``).
        labelled: samples with masks (the references and the supervised set).
        unlabelled: samples whose masks (if any) are never used for training; when present they
            give the logged pseudo-label accuracy.
        out_dir: run folder; the checkpoint goes to ``out_dir/checkpoints/best.ckpt``.
        options: warm-up, ramp, λ_max and RPG options (defaults: docs/methods/rpg.md).
        val_samples: validation samples; default a seeded ``data.val_fraction`` of the labelled
            groups (removed from training); none when only one group is labelled.
        logger: Lightning logger(s) or None.
        callbacks: extra Lightning callbacks.
        overwrite: replace an existing ``best.ckpt``.

    Returns:
        The checkpoint, best validation Dice, history and the per-step λ / loss history.

    Raises:
        DataError: no labelled sample, a labelled sample without mask, or no unlabelled sample.
        StateError: ``best.ckpt`` exists and ``overwrite`` is False.
    """
    from alframe.data.dataset import SegmentationDataset
    from alframe.data.splits import grouped_holdout

    opts = options or SemiSupervisedOptions()
    labelled_list = list(labelled)
    if not labelled_list:
        raise DataError("fit_semisupervised needs at least one labelled sample")
    without_mask = [s.id for s in labelled_list if not s.labelled]
    if without_mask:
        raise DataError(
            f"{len(without_mask)} labelled samples have no mask (e.g. {without_mask[0]}); pass "
            "them as unlabelled"
        )
    unlabelled_list = list(unlabelled)
    if not unlabelled_list:
        raise DataError(
            "fit_semisupervised got no unlabelled samples; use alframe.models.fit_segmentation"
        )
    if val_samples is None:
        train_samples, val_list = grouped_holdout(
            labelled_list, recipe.data.val_fraction, recipe.seed
        )
    else:
        train_samples, val_list = labelled_list, list(val_samples)

    data_cfg, cfg = recipe.data, recipe.train
    labelled_set = SegmentationDataset(
        train_samples, data_cfg, recipe.augment.train, train=True, seed=recipe.seed
    )
    unlabelled_set = SegmentationDataset(
        unlabelled_list, data_cfg, recipe.augment.train, train=True, seed=recipe.seed + 1
    )
    train_loader = CombinedLoader(
        {
            "labelled": _loader(labelled_set, cfg.batch_size, True, recipe, recipe.seed),
            "unlabelled": _loader(
                unlabelled_set,
                opts.unlabelled_batch_size or cfg.batch_size,
                True,
                recipe,
                recipe.seed + 1,
            ),
        },
        mode="max_size_cycle",
    )
    val_loader = _loader(
        SegmentationDataset(val_list, data_cfg, recipe.augment.eval, train=False, seed=recipe.seed),
        cfg.batch_size,
        False,
        recipe,
        recipe.seed,
    )
    built: list[SemiSupervisedTask] = []

    def make_task() -> SemiSupervisedTask:
        built.append(SemiSupervisedTask.from_recipe_with_options(recipe, opts))
        return built[-1]

    # The supervised trainer does the rest (seeding, checkpointing on val/dice, early stopping,
    # hardware settings, keeping the final weights when nothing is validated).
    result = fit_segmentation(
        recipe,
        _Batches(train_loader, val_loader if val_list else None),
        out_dir,
        logger=logger,
        callbacks=callbacks,
        overwrite=overwrite,
        task_factory=make_task,
    )
    task = built[-1]
    return SemiSupervisedResult(
        best_checkpoint=result.best_checkpoint,
        best_val_dice=result.best_val_dice,
        epochs_run=result.epochs_run,
        wall_time_s=result.wall_time_s,
        history=result.history,
        steps=task.step_history,
        warmup_steps=task.warmup_steps,
        ramp_steps=task.ramp_steps,
    )
