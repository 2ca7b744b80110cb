"""Train a :class:`SegmentationTask` from a recipe, and restore trained tasks from checkpoints.

:func:`fit_segmentation` is the training entry point: it is the one place that seeds the global
RNGs (``L.seed_everything(recipe.seed, workers=True)``), so two fits of the same recipe on the same
data and hardware give identical weights when ``train.deterministic`` is on.

Files written under ``out_dir``: ``checkpoints/best.ckpt`` (highest ``val/dice``) and whatever the
passed logger writes. Nothing is written to the working directory: without a logger, Lightning's
default ``lightning_logs/`` logger is disabled.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from alframe.config.schema import Recipe
from alframe.errors import ConfigError, ModelError, StateError
from alframe.models.task import SegmentationTask

__all__ = ["BEST_CHECKPOINT_NAME", "TrainResult", "fit_segmentation", "load_task"]

BEST_CHECKPOINT_NAME = "best"
MONITOR = "val/dice"
_HPARAM_KEYS = ("model_cfg", "train_cfg", "num_classes")


@dataclass
class TrainResult:
    """Outcome of :func:`fit_segmentation`.

    Attributes:
        best_checkpoint: ``out_dir/checkpoints/best.ckpt`` (load it with :func:`load_task`).
        best_val_dice: the highest ``val/dice`` seen (NaN if validation never ran).
        epochs_run: completed training epochs (fewer than ``max_epochs`` after early stopping).
        wall_time_s: seconds spent in ``Trainer.fit``.
        history: one dict per epoch: ``epoch`` and the epoch-level metrics (``train/loss``,
            ``train/lr``, ``val/loss``, ``val/dice``, ``val/iou``, ...) as floats.
    """

    best_checkpoint: Path
    best_val_dice: float
    epochs_run: int
    wall_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)


class _HistoryCallback(Callback):
    """Collects the epoch-level metrics after every training epoch (validation included)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, float] = {"epoch": int(trainer.current_epoch)}
        for name, value in sorted(trainer.callback_metrics.items()):
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                row[name] = float(value.detach().cpu())
            elif isinstance(value, int | float):
                row[name] = float(value)
        self.history.append(row)


def _trainer_devices(value: int | str) -> int | str:
    # Recipes written by hand or via --set may hold "2" for two devices.
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def fit_segmentation(
    recipe: Recipe,
    datamodule: Any,
    out_dir: str | os.PathLike[str],
    logger: Logger | Iterable[Logger] | None = None,
    callbacks: Iterable[Callback] = (),
    overwrite: bool = False,
    task_factory: Callable[[], SegmentationTask] | None = None,
) -> TrainResult:
    """Train a segmentation model as the recipe says and keep the best checkpoint.

    Args:
        recipe: the resolved recipe (``model``, ``train``, ``data.classes``,
            ``data.in_channels``, ``seed``).
        datamodule: a ``LightningDataModule`` or any object with ``train_dataloader()`` and
            ``val_dataloader()`` yielding ``{"image", "mask", "id", "index"}`` batches.
        out_dir: run folder; the checkpoint goes to ``out_dir/checkpoints/best.ckpt``.
        logger: Lightning logger(s), e.g. a ``CSVLogger(out_dir)`` or an MLflow logger. None:
            no logger (nothing is written outside ``out_dir``).
        callbacks: extra Lightning callbacks.
        overwrite: replace an existing ``best.ckpt`` in ``out_dir`` instead of refusing.
        task_factory: builds the Lightning task (called after seeding, so its random
            initialisation is reproducible); default ``SegmentationTask.from_recipe(recipe)``.
            Variants such as semi-supervised training pass their own task and batches.

    Returns:
        The best checkpoint, its validation Dice, epochs run, wall time and per-epoch history.

    Raises:
        StateError: ``out_dir`` already holds a best checkpoint and ``overwrite`` is False.
        ConfigError / ModelError: the model cannot be built from the recipe, or
            ``train.deterministic`` is on and the model uses an operation without a
            deterministic implementation on the device (CUDA bilinear upsampling).
    """
    out = Path(out_dir)
    checkpoint_dir = out / "checkpoints"
    best_path = checkpoint_dir / f"{BEST_CHECKPOINT_NAME}.ckpt"
    if best_path.exists():
        if not overwrite:
            raise StateError(
                f"{best_path} already exists; use a new output folder or pass overwrite=True "
                "to replace it"
            )
        # Otherwise ModelCheckpoint would write best-v1.ckpt next to the stale file.
        best_path.unlink()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    L.seed_everything(recipe.seed, workers=True, verbose=False)
    # Built after seeding so that the random initialisation is reproducible.
    task = task_factory() if task_factory is not None else SegmentationTask.from_recipe(recipe)

    cfg = recipe.train
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=BEST_CHECKPOINT_NAME,
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        # Weights + hyper-parameters only: the optimiser state would triple the file (170 MB for
        # a ResNet-18 U-Net) and nothing resumes a fit from it.
        save_weights_only=True,
    )
    history = _HistoryCallback()
    all_callbacks: list[Callback] = [checkpoint, history]
    if cfg.early_stopping_patience > 0:
        all_callbacks.append(
            EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.early_stopping_patience)
        )
    all_callbacks.extend(callbacks)

    started = time.perf_counter()
    try:
        with torch_flags_restored():
            trainer = make_trainer(recipe, out, logger, all_callbacks)
            with warnings.catch_warnings():
                # Small data sets trigger Lightning's "few batches / no workers" advice every run.
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=".*number of training batches.*")
                if isinstance(datamodule, L.LightningDataModule):
                    trainer.fit(task, datamodule=datamodule)
                else:
                    trainer.fit(
                        task,
                        train_dataloaders=datamodule.train_dataloader(),
                        val_dataloaders=datamodule.val_dataloader(),
                    )
    except RuntimeError as err:
        if "deterministic" in str(err) and cfg.deterministic:
            # e.g. bilinear upsampling backward on CUDA (DeepLabV3+, PSPNet, Segformer, ...).
            raise ConfigError(
                f"train.deterministic = true, but {recipe.model.arch} uses an operation without a "
                f"deterministic implementation on this device ({str(err).splitlines()[0]}); set "
                "train.deterministic=false or use an architecture such as Unet or FPN"
            ) from None
        raise
    wall_time = time.perf_counter() - started

    best_score = checkpoint.best_model_score
    if checkpoint.best_model_path:
        best_checkpoint = Path(checkpoint.best_model_path)
        best_dice = float(best_score) if best_score is not None else math.nan
    else:
        # Validation never ran (e.g. max_steps shorter than an epoch): keep the final weights
        # so that callers always get a checkpoint.
        warnings.warn(
            f"no {MONITOR} was logged; saving the final weights as {best_path}",
            UserWarning,
            stacklevel=2,
        )
        trainer.save_checkpoint(best_path, weights_only=True)
        best_checkpoint, best_dice = best_path, math.nan
    return TrainResult(
        best_checkpoint=best_checkpoint,
        best_val_dice=best_dice,
        epochs_run=int(trainer.current_epoch),
        wall_time_s=wall_time,
        history=history.history,
    )


@contextmanager
def torch_flags_restored() -> Iterator[None]:
    """Restore torch's process-wide determinism / cudnn flags that ``L.Trainer`` sets.

    Lightning's Trainer sets them from ``deterministic``; without this, code running later in the
    same process (another fit, a test) silently inherits them.
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark_before = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)
        torch.backends.cudnn.benchmark = benchmark_before


def make_trainer(
    recipe: Recipe,
    out: Path,
    logger: Logger | Iterable[Logger] | None,
    callbacks: list[Callback],
    max_epochs: int | None = None,
    checkpointing: bool = True,
    progress_label: str = "training",
) -> L.Trainer:
    """A ``L.Trainer`` with the recipe's hardware settings (shared by every alframe training).

    With ``train.progress`` the run shows one bar over all its steps with the time left
    (:class:`alframe.models.progress.RunProgress`) instead of Lightning's per-epoch bar and model
    summary.

    Args:
        recipe: ``train.*`` gives accelerator, devices, strategy, nodes, precision, determinism.
        out: Lightning's ``default_root_dir``.
        logger: logger(s) or None for none (nothing written to the working directory).
        callbacks: Lightning callbacks.
        max_epochs: overrides ``train.max_epochs`` (e.g. the MAE's own epoch count).
        checkpointing: let Lightning add its default checkpoint callback when none is given.
        progress_label: the progress bar's label (e.g. ``"MAE"``).

    Raises:
        ConfigError: Lightning rejects the hardware settings.
    """
    cfg = recipe.train
    strategy = cfg.strategy
    if strategy == "ddp" and recipe.model.encoder_depth < 5:
        # A shallow smp encoder still owns its deeper stages; their parameters get no gradient,
        # and plain DDP stops at the first step. Let DDP look for unused parameters instead.
        strategy = "ddp_find_unused_parameters_true"
    if cfg.progress:
        from alframe.models.progress import RunProgress

        callbacks = [*callbacks, RunProgress(progress_label)]
    try:
        return L.Trainer(
            accelerator=cfg.accelerator,
            devices=_trainer_devices(cfg.devices),
            strategy=strategy,
            num_nodes=cfg.num_nodes,
            precision=cfg.precision,  # type: ignore[arg-type]  # validated by Lightning
            max_epochs=max_epochs if max_epochs is not None else cfg.max_epochs,
            enable_checkpointing=checkpointing,
            max_steps=cfg.max_steps,
            deterministic=cfg.deterministic,
            enable_progress_bar=False,  # RunProgress above, when train.progress
            enable_model_summary=False,
            # No logger: Lightning would otherwise create lightning_logs/ in the working directory.
            logger=list(logger) if isinstance(logger, Iterable) else (logger or False),
            callbacks=callbacks,
            default_root_dir=out,
            log_every_n_steps=1,
        )
    except (ValueError, TypeError, MisconfigurationException) as err:
        raise ConfigError(
            f"train: Lightning rejects accelerator={cfg.accelerator!r}, devices={cfg.devices!r}, "
            f"strategy={cfg.strategy!r}, num_nodes={cfg.num_nodes}, precision={cfg.precision!r} "
            f"({err}); fix these train.* keys (e.g. accelerator: cpu on a machine without a GPU)"
        ) from None


def load_task(
    checkpoint_path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> SegmentationTask:
    """Restore a trained :class:`SegmentationTask` from a Lightning checkpoint.

    The file is read with ``torch.load(weights_only=True)``: no pickled code runs. The model is
    rebuilt from the stored hyperparameters without reading the original ``encoder_weights`` /
    ``weights`` files (the checkpoint already holds the trained weights).

    Args:
        checkpoint_path: a ``.ckpt`` written by :func:`fit_segmentation` (or by a Trainer
            fitting a SegmentationTask).
        map_location: device for the weights.

    Returns:
        The task in evaluation mode.

    Raises:
        ModelError: the file is missing, unreadable, not an alframe segmentation checkpoint, or
            its weights do not fit the stored model configuration.
    """
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; check the path (or the run folder)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt zips, pickles with code, truncated files, ...
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise ModelError(
            f"checkpoint {path} cannot be read safely ({type(err).__name__}: {first_line}); "
            "it is corrupt or not a PyTorch checkpoint written by alframe"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if (
        not isinstance(hparams, Mapping)
        or not isinstance(state, Mapping)
        or any(key not in hparams for key in _HPARAM_KEYS)
    ):
        raise ModelError(
            f"checkpoint {path} is not an alframe segmentation checkpoint (it needs "
            f"'state_dict' and hyper_parameters {', '.join(_HPARAM_KEYS)}); for plain weights "
            "files use model.weights in the recipe"
        )
    try:
        task = SegmentationTask(
            model_cfg=hparams["model_cfg"],
            train_cfg=hparams["train_cfg"],
            num_classes=int(hparams["num_classes"]),
            class_names=hparams.get("class_names"),
            in_channels=int(hparams.get("in_channels", 1)),
            recipe=hparams.get("recipe"),
            load_weights=False,
        )
        task.load_state_dict(dict(state), strict=True)
    except (RuntimeError, KeyError, ConfigError, ModelError) as err:
        # ConfigError: hyperparameters that this alframe version no longer accepts.
        raise ModelError(
            f"checkpoint {path}: its weights do not fit the stored model configuration ({err})"
        ) from None
    task.to(map_location)
    task.eval()
    return task
