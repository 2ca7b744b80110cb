"""What the active-learning loop needs from training: the :class:`Learner` protocol.

The loop only calls ``fit``, ``predict_proba``, ``evaluate``, ``reset`` and ``restore``; the
Lightning implementation, :class:`LightningLearner`, is the only place that knows about
Lightning (through :func:`alframe.models.fit_segmentation`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np

from alframe.config import Recipe
from alframe.errors import StateError


@dataclass
class FitInfo:
    """What one :meth:`Learner.fit` produced.

    Attributes:
        checkpoint: the weights to evaluate and to predict with.
        n_train: items trained on (the labelled set minus any validation hold-out).
        n_val: validation items held out of the labelled set.
        epochs: epochs run.
        steps: optimisation steps run (None when unknown).
        train_seconds: wall time of the fit.
        best_val_dice: validation Dice of the kept weights (NaN without validation).
        extra: implementation-specific details (JSON-friendly).
    """

    checkpoint: Path
    n_train: int
    n_val: int
    epochs: int
    steps: int | None
    train_seconds: float
    best_val_dice: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """A segmentation model the loop can train, query and evaluate."""

    def fit(self, train_ids: Sequence[str], out_dir: Path, seed: int) -> FitInfo:
        """Train on the labelled ``train_ids`` (from scratch unless a model is loaded).

        Args:
            train_ids: global ids of the labelled pool items.
            out_dir: folder for the checkpoint and logs (created).
            seed: seed of every random choice of the fit.
        """
        ...

    def predict_proba(self, ids: Sequence[str]) -> np.ndarray:
        """(N, K, H, W) float32 class probabilities of the current model for pool ``ids``."""
        ...

    def evaluate(self, out_dir: Path | None = None) -> dict[str, dict[str, float]]:
        """Per evaluation set, mean/std of Dice and IoU (writes ``eval_<set>.csv`` to out_dir)."""
        ...

    def pseudo_label(self, labelled_ids: Sequence[str], out_dir: Path) -> dict[str, Any] | None:
        """Pseudo-label the unlabelled pool from ``labelled_ids`` with the current model, store
        them in ``out_dir`` apart from human labels, and return their summary (None: the learner
        does not pseudo-label)."""
        ...

    def reset(self) -> None:
        """Forget the current model: the next :meth:`fit` starts from scratch."""
        ...

    def restore(self, checkpoint: Path) -> None:
        """Make ``checkpoint`` the current model (resume, fine-tuning)."""
        ...

    @property
    def checkpoint(self) -> Path | None:
        """The current model's checkpoint, None before the first fit."""
        ...


def round_recipe(recipe: Recipe, seed: int, init_weights: Path | None = None) -> Recipe:
    """The recipe of one fit: its seed, and optionally the weights to start from.

    Only the ``seed`` (training randomness: initialisation, shuffling, augmentation, validation
    hold-out) changes; data splits keep coming from the experiment's catalog.
    """
    update: dict[str, Any] = {"seed": int(seed)}
    if init_weights is not None:
        update["model"] = recipe.model.model_copy(update={"weights": str(init_weights)})
    return recipe.model_copy(update=update)


_TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "loops")


def slim_checkpoint(path: Path) -> bool:
    """Drop optimiser / scheduler / loop state from a Lightning checkpoint (atomically).

    Without validation, :func:`~alframe.models.fit_segmentation` saves the final weights with
    ``trainer.save_checkpoint``, which also stores the AdamW moments: three times the weights.
    Nothing resumes a fit from them, and an experiment keeps one checkpoint per round.

    Args:
        path: a ``.ckpt`` file.

    Returns:
        Whether the file was rewritten.
    """
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not any(k in checkpoint for k in _TRAINING_STATE_KEYS):
        return False
    for key in _TRAINING_STATE_KEYS:
        checkpoint.pop(key, None)
    temp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, temp)
    os.replace(temp, path)
    return True


class _StepCounter(L.Callback):
    """Records the optimisation steps of a fit."""

    def __init__(self) -> None:
        self.steps: int | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = int(trainer.global_step)


class LightningLearner:
    """The :class:`Learner` built on :func:`alframe.models.fit_segmentation`.

    Args:
        recipe: the recipe of the fits (``train``, ``model``, ``data``); its ``seed`` is replaced
            by the seed given to :meth:`fit`.
        catalog: the experiment's :class:`~alframe.data.DataCatalog` (its splits use the
            experiment seed; default: a new catalog of ``recipe``).
        callbacks: extra Lightning callbacks for every fit (e.g. progress, tests).
        finetune: start every fit from the current model's weights instead of from scratch.

    With ``pseudolabel.enabled`` in the recipe, every fit is semi-supervised (human labels + RPG
    pseudo-labels of the rest of the pool) and :meth:`pseudo_label` labels the pool afterwards.
    """

    def __init__(
        self,
        recipe: Recipe,
        catalog: Any | None = None,
        callbacks: Sequence[Any] = (),
        finetune: bool = False,
    ) -> None:
        from alframe.data import DataCatalog

        self.recipe = recipe
        self.catalog = catalog if catalog is not None else DataCatalog(recipe)
        self.callbacks = list(callbacks)
        self.finetune = finetune
        self.semi_supervised = bool(recipe.pseudolabel.enabled)
        self._checkpoint: Path | None = None
        self._task: Any | None = None

    @property
    def checkpoint(self) -> Path | None:
        """The current model's checkpoint, None before the first fit."""
        return self._checkpoint

    def reset(self) -> None:
        """Forget the current model."""
        self._checkpoint = None
        self._task = None

    def restore(self, checkpoint: Path) -> None:
        """Make ``checkpoint`` the current model.

        Raises:
            StateError: the file does not exist.
        """
        path = Path(checkpoint)
        if not path.is_file():
            raise StateError(f"checkpoint {path} does not exist; redo the round that wrote it")
        self._checkpoint = path
        self._task = None

    def _current_task(self) -> Any:
        from alframe.models import load_task

        if self._checkpoint is None:
            raise StateError("the learner has no model yet; call fit() first")
        if self._task is None:
            self._task = load_task(self._checkpoint)
        return self._task

    def _datamodule(self, recipe: Recipe, train_ids: Sequence[str] | None) -> Any:
        from alframe.data import SegmentationDataModule

        return SegmentationDataModule(recipe, train_ids=train_ids, catalog=self.catalog)

    def fit(self, train_ids: Sequence[str], out_dir: Path, seed: int) -> FitInfo:
        """Train on ``train_ids`` with ``seed``; the best (or, without validation, final) weights
        become the current model.

        Args:
            train_ids: global ids of labelled ``data.train`` items.
            out_dir: the fit's folder (``checkpoints/best.ckpt`` goes there).
            seed: the fit's seed.

        Returns:
            The :class:`FitInfo`.
        """
        from alframe.models import fit_segmentation

        init = self._checkpoint if self.finetune else None
        out = Path(out_dir)
        if init is not None and init.resolve().is_relative_to(out.resolve()):
            raise StateError(
                f"cannot fine-tune from {init} into the same folder {out} (the fit replaces it); "
                "give every fit its own out_dir"
            )
        recipe = round_recipe(self.recipe, seed, init)
        datamodule = self._datamodule(recipe, list(train_ids))
        datamodule.setup()
        out.mkdir(parents=True, exist_ok=True)
        unlabelled = self._unlabelled_samples(train_ids) if self.semi_supervised else []
        extra: dict[str, Any] = {}
        started = time.perf_counter()
        with warnings.catch_warnings():
            # Without a validation set the final weights are kept on purpose (fixed step budget).
            warnings.filterwarnings("ignore", message=r".*no val/dice was logged.*")
            warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
            warnings.filterwarnings("ignore", message=r".*val_dataloader.*")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*across ranks is zero.*")
            counter = _StepCounter()
            result: Any
            if unlabelled:
                from alframe.pseudolabel import fit_semisupervised, options_from_config

                semi = fit_semisupervised(
                    recipe,
                    datamodule.train_samples,
                    unlabelled,
                    out,
                    options=options_from_config(recipe.pseudolabel),
                    val_samples=datamodule.val_samples,
                    callbacks=[counter, *self.callbacks],
                    overwrite=True,
                )
                result = semi
                accuracy = [row["pl_accuracy"] for row in semi.steps if "pl_accuracy" in row]
                extra = {
                    "semi_supervised": True,
                    "n_unlabelled": len(unlabelled),
                    "warmup_steps": semi.warmup_steps,
                    "ramp_steps": semi.ramp_steps,
                    # Training-time pseudo-labels (augmented views) vs hidden ground truth,
                    # over the last quarter of the steps: bookkeeping only.
                    "train_pl_accuracy": float(np.mean(accuracy[-max(len(accuracy) // 4, 1) :]))
                    if accuracy
                    else None,
                }
            else:
                result = fit_segmentation(
                    recipe, datamodule, out, callbacks=[counter, *self.callbacks], overwrite=True
                )
        seconds = time.perf_counter() - started
        self._checkpoint = Path(result.best_checkpoint)
        slim_checkpoint(self._checkpoint)
        self._task = None
        return FitInfo(
            checkpoint=self._checkpoint,
            n_train=len(datamodule.train_samples),
            n_val=len(datamodule.val_samples),
            epochs=int(result.epochs_run),
            steps=counter.steps,
            train_seconds=seconds,
            best_val_dice=float(result.best_val_dice),
            extra={"init_weights": str(init) if init is not None else None, **extra},
        )

    def _pool(self) -> Any:
        from alframe.data import Pool

        return Pool(self.catalog.samples(self.recipe.data.train))

    def _unlabelled_samples(self, labelled_ids: Sequence[str]) -> list[Any]:
        labelled = set(labelled_ids)
        return [s for s in self._pool().samples if s.id not in labelled]

    def pseudo_label(self, labelled_ids: Sequence[str], out_dir: Path) -> dict[str, Any] | None:
        """Pseudo-label the unlabelled pool from the labelled items with the current model.

        Writes ``pseudolabels.npz`` and ``pseudolabels.csv`` into ``out_dir``, apart from the
        human labels; the pool's hidden ground truth only measures them.

        Args:
            labelled_ids: the human-labelled pool ids (the references).
            out_dir: the round's folder.

        Returns:
            Summary (items, references, Dice / pixel accuracy against the hidden ground truth,
            coverage, seconds), or None when the recipe does not ask for stored pseudo-labels.
        """
        cfg = self.recipe.pseudolabel
        if not (cfg.enabled and cfg.store):
            return None
        from alframe.pseudolabel import pseudo_label_samples, write_pool_pseudolabels

        started = time.perf_counter()
        pool = self._pool()
        references = pool.subset(list(labelled_ids)).samples
        result = pseudo_label_samples(
            self._current_task(),
            references,
            self._unlabelled_samples(labelled_ids),
            self.recipe.data,
            self.recipe.num_classes,
            cfg,
            batch_size=self.recipe.train.batch_size,
            eval_transforms=self.recipe.augment.eval,
        )
        path = write_pool_pseudolabels(result, out_dir)
        return {
            **result.summary(),
            "file": path.name,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def predict_proba(self, ids: Sequence[str]) -> np.ndarray:
        """(N, K, H, W) float32 probabilities of the current model for pool items ``ids``.

        Raises:
            StateError: no model yet.
            DataError: an id is not in ``data.train``.
        """
        import torch
        from torch.utils.data import DataLoader

        from alframe.data import SegmentationDataset

        task = self._current_task()
        samples = self._pool().subset(list(ids)).samples if ids else []
        if not samples:
            size = tuple(self.recipe.data.image_size)
            return np.zeros((0, self.recipe.num_classes, *size), dtype=np.float32)
        dataset = SegmentationDataset(
            samples, self.recipe.data, self.recipe.augment.eval, train=False
        )
        loader = DataLoader(dataset, batch_size=self.recipe.train.batch_size, shuffle=False)
        chunks = []
        with torch.no_grad():
            for batch in loader:
                chunks.append(task.predict_proba(batch["image"]).cpu().numpy().astype(np.float32))
        return np.concatenate(chunks)

    def true_labels(self, ids: Sequence[str]) -> tuple[np.ndarray, int]:
        """The ground truth of pool items as the model sees it (eval transforms, model size).

        The simulated oracle's effort model compares it with the previous model's prediction
        (:mod:`alframe.loop.effort`); nothing trains on it here.

        Returns:
            ((N, H, W) int64 class indices, -1 where unlabelled; K).
        """
        from alframe.data import SegmentationDataset

        samples = self._pool().subset(list(ids)).samples if ids else []
        size = tuple(self.recipe.data.image_size)
        if not samples:
            return np.zeros((0, *size), dtype=np.int64), self.recipe.num_classes
        dataset = SegmentationDataset(
            samples, self.recipe.data, self.recipe.augment.eval, train=False
        )
        masks = [np.asarray(dataset[k]["mask"], dtype=np.int64) for k in range(len(dataset))]
        return np.stack(masks), self.recipe.num_classes

    def evaluate(self, out_dir: Path | None = None) -> dict[str, dict[str, float]]:
        """Mean/std Dice and IoU of the current model on every ``data.evaluate`` set.

        Args:
            out_dir: where to write ``eval_<set>.csv`` (per-image scores); None: nowhere.

        Returns:
            Set name → ``{"n", "dice_mean", "dice_std", "iou_mean", "iou_std", ...}``.
        """
        from alframe.workflows.training import evaluate_sets

        task = self._current_task()
        loaders = self._datamodule(self.recipe, None).eval_dataloaders()
        _, summary = evaluate_sets(task, loaders, self.recipe.num_classes, out_dir, False)
        return summary
