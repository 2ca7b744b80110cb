"""`round train`: train on the project's labels (plus pseudo-labels when asked) and evaluate.

The run is written to ``train/.staging-NNN/``, renamed to ``train/NNN`` when complete, and then
recorded in the state store; a killed run leaves only a staging folder (or an unrecorded folder),
which recovery removes.

Every run also measures the label-free stopping signal of :mod:`alframe.loop.pool_agreement`
against the previous run: the mean foreground Dice between the previous and the new model's
argmax predictions on the items that have no human label when the new model is trained (pending
and pseudo-labelled items included). The new model's predictions on those items are kept in
``train/NNN/pool_predictions.npz`` (inside the staging folder, so committed with the run) for the
next run to compare with; when that file is missing (a run trained by an earlier alframe) the
previous run's checkpoint predicts again. The value is recorded in ``summary.json`` and in the
run's row of the state store (``metrics.pool_agreement``), in the same transaction as the run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alframe._atomic import atomic_write_bytes, fsync_folder
from alframe.annotate.faults import checkpoint
from alframe.annotate.formats import read_label_png
from alframe.annotate.project import OPEN_RUNS_KEY, STORED_IGNORE, Project
from alframe.annotate.pseudo import pseudo_label_paths
from alframe.annotate.store import StateStore, now
from alframe.config import Recipe, dump_recipe, recipe_from_dict, recipe_to_dict
from alframe.config.loading import apply_overrides
from alframe.data.samples import Sample
from alframe.errors import DataError, StateError
from alframe.loop.pool_agreement import (
    POOL_PREDICTIONS_FILE,
    label_agreement,
    predict_label_maps,
    read_pool_predictions,
    write_pool_predictions,
)


@dataclass
class RoundTraining:
    """What `round train` produced.

    Attributes:
        run: the training's number.
        folder: ``train/NNN``.
        checkpoint: the best checkpoint.
        n_labelled: human-labelled items used (training + validation).
        n_pseudo: pseudo-labelled items used.
        best_val_dice: validation Dice of the checkpoint (NaN without validation).
        evaluation: per evaluation set, mean metrics.
        pool_agreement: the stopping signal against the previous run (see
            :func:`model_agreement`): ``value`` (None for the first run or when nothing is left
            unlabelled), ``n_items``, ``previous_run``, ``previous_n_labelled``, ``note``.
        pictures: kind (``learning_curve``, ``picked``) → PNG written after the commit
            (:mod:`alframe.annotate.pictures`).
        notes: pictures that could not be drawn or logged.
    """

    run: int
    folder: Path
    checkpoint: Path
    n_labelled: int
    n_pseudo: int
    best_val_dice: float
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    pool_agreement: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _label_dataset_class() -> Any:
    from alframe.data.dataset import IGNORE_INDEX, SegmentationDataset
    from alframe.data.io import read_image
    from alframe.data.transforms import normalize_intensity

    class ProjectLabelDataset(SegmentationDataset):
        """A SegmentationDataset whose project items read their masks from stored label files."""

        label_files: frozenset[Path] = frozenset()

        def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
            sample = self.samples[index]
            if sample.mask_path is None or sample.mask_path not in self.label_files:
                return super().load(index)
            image = read_image(sample, self.data_cfg.in_channels)
            stored = read_label_png(sample.mask_path)
            if stored.shape != image.shape[:2]:
                raise DataError(
                    f"stored label {sample.mask_path} is {stored.shape} but image "
                    f"{sample.image_path} is {image.shape[:2]}; import the item again with "
                    "--replace"
                )
            mask = stored.astype(np.int64)
            mask[stored == STORED_IGNORE] = IGNORE_INDEX
            return normalize_intensity(image, self.data_cfg.normalization), mask

    return ProjectLabelDataset


def make_datamodule(recipe: Recipe, samples: dict[str, Sample], labels: dict[str, Path]) -> Any:
    """A SegmentationDataModule over labelled project items (masks from the label files).

    Validation is ``data.val`` when the recipe sets it, else a seeded ``data.val_fraction`` of
    the labelled groups; evaluation sets are the recipe's ``data.evaluate``.
    """
    from alframe.data.datamodule import SegmentationDataModule

    dataset_class = _label_dataset_class()
    files = frozenset(labels.values())

    class ProjectDataModule(SegmentationDataModule):
        def setup(self, stage: str | None = None) -> None:
            if self._ready:
                return
            self._split_validation(
                [replace(samples[i], mask_path=labels[i]) for i in sorted(labels)]
            )

        def _dataset(self, items: Sequence[Sample], train: bool) -> Any:
            steps = self.recipe.augment.train if train else self.recipe.augment.eval
            dataset = dataset_class(items, self.recipe.data, steps, train, seed=self.recipe.seed)
            dataset.label_files = files
            return dataset

    return ProjectDataModule(recipe, train_ids=sorted(labels))


def _predictor(recipe: Recipe, task: Any, samples: dict[str, Sample]) -> Any:
    """ids → (n, K, H, W) float32 probabilities of ``task`` on project items (eval transforms)."""

    def predict_proba(ids: Sequence[str]) -> np.ndarray:
        import torch
        from torch.utils.data import DataLoader

        from alframe.data import SegmentationDataset

        dataset = SegmentationDataset(
            [samples[i] for i in ids], recipe.data, recipe.augment.eval, train=False
        )
        loader = DataLoader(dataset, batch_size=recipe.train.batch_size, shuffle=False)
        with torch.no_grad():
            chunks = [task.predict_proba(batch["image"]).cpu().numpy() for batch in loader]
        return np.concatenate(chunks).astype(np.float32)

    return predict_proba


def model_agreement(
    project: Project,
    recipe: Recipe,
    task: Any,
    labelled_ids: Iterable[str],
    out_dir: Path,
) -> dict[str, Any]:
    """The new model's predictions on the unlabelled items, and their agreement with the
    previous `round train` run's model (the latest one the state store records).

    Writes ``out_dir/pool_predictions.npz`` (the new model's label maps) when anything is
    unlabelled.

    Args:
        project: the open project.
        recipe: the recipe of the new run (data and eval transforms for prediction).
        task: the new model (a :class:`~alframe.models.SegmentationTask`).
        labelled_ids: items with a human label (the rest of the pool is measured).
        out_dir: the new run's (staging) folder.

    Returns:
        ``value`` (mean Dice, None when there is no previous run or nothing unlabelled),
        ``n_items``, ``previous_run``, ``previous_n_labelled``, ``predictions_sha256``,
        ``seconds`` and ``note`` (why there is no value).
    """
    from alframe.loop.state import sha256_file

    started = time.perf_counter()
    labelled = set(labelled_ids)
    unlabelled = [i for i in project.item_ids() if i not in labelled]
    rows = project.store.query(
        "SELECT run, folder, checkpoint, checkpoint_sha256, n_labelled, metrics FROM trainings "
        "ORDER BY run DESC LIMIT 1"
    )
    previous = rows[0] if rows else None
    record: dict[str, Any] = {
        "value": None,
        "n_items": 0,
        "previous_run": int(previous["run"]) if previous is not None else None,
        "previous_n_labelled": int(previous["n_labelled"]) if previous is not None else None,
        "predictions_sha256": None,
        "note": None,
    }
    if not unlabelled:
        record["note"] = "every item is labelled"
        return record
    samples = project.samples()
    labels, num_classes = predict_label_maps(_predictor(recipe, task, samples), unlabelled)
    stored = write_pool_predictions(
        out_dir / POOL_PREDICTIONS_FILE, unlabelled, labels, num_classes
    )
    record["predictions_sha256"] = sha256_file(stored)
    if previous is None:
        record["note"] = "needs two trained rounds"
    else:
        before = _previous_labels(project, recipe, previous, unlabelled, samples)
        if before is None:
            record["note"] = (
                f"the checkpoint of run {int(previous['run'])} is missing or changed since it "
                "was trained; it cannot be compared"
            )
        else:
            scores = label_agreement(before, labels, num_classes)
            record.update(value=float(scores.mean()), n_items=len(unlabelled))
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _previous_labels(
    project: Project,
    recipe: Recipe,
    previous: Any,
    ids: Sequence[str],
    samples: dict[str, Sample],
) -> np.ndarray | None:
    """(len(ids), H, W) the previous run's label maps: stored, else predicted again from its
    checkpoint (runs trained by an earlier alframe, or a file changed since); None when
    neither is possible (the checkpoint is gone or no longer has its recorded sha256)."""
    from alframe.loop.state import sha256_file

    recorded = (json.loads(previous["metrics"] or "{}").get("pool_agreement") or {}).get(
        "predictions_sha256"
    )
    path = project.path(previous["folder"]) / POOL_PREDICTIONS_FILE
    if recorded and path.is_file() and sha256_file(path) == recorded:
        stored = read_pool_predictions(path)
        labels = stored.subset(ids) if stored is not None else None
        if labels is not None:
            return labels
    checkpoint_file = project.path(previous["checkpoint"])
    if (
        not checkpoint_file.is_file()
        or sha256_file(checkpoint_file) != previous["checkpoint_sha256"]
    ):
        return None
    from alframe.models import load_task

    task = load_task(checkpoint_file)
    labels, _ = predict_label_maps(_predictor(recipe, task, samples), ids)
    return labels


def _remember_open_run(project: Project, uri: str, run_id: str, run: int) -> None:
    """Record an MLflow run this process has open, so that a later command can end it (as
    KILLED) if this process is killed before it does (see :meth:`Project.recover`)."""
    with project.store.transaction() as conn:
        runs = [r for r in project.store.get_json(OPEN_RUNS_KEY, []) if r["run_id"] != run_id]
        runs.append({"run_id": run_id, "uri": uri, "training": run, "started": now()})
        StateStore.set_json(conn, OPEN_RUNS_KEY, runs)


def _forget_open_run(project: Project, run_id: str) -> None:
    with project.store.transaction() as conn:
        runs = [r for r in project.store.get_json(OPEN_RUNS_KEY, []) if r["run_id"] != run_id]
        StateStore.set_json(conn, OPEN_RUNS_KEY, runs)


def train_round(
    project: Project,
    include_pseudo: bool = False,
    track: bool = True,
    overrides: Iterable[str] = (),
) -> RoundTraining:
    """Train a model on everything labelled so far and evaluate it on ``data.evaluate``.

    Args:
        project: the open project.
        include_pseudo: also train on stored pseudo-labels of items without a human label
            (see :mod:`alframe.annotate.pseudo`).
        track: log to MLflow when the recipe's tracking is enabled.
        overrides: ``KEY=VALUE`` recipe overrides for this run only (e.g. ``train.max_epochs=5``).

    Returns:
        The :class:`RoundTraining`.

    Raises:
        StateError: nothing is labelled (or no pseudo-labels when asked for them).
    """
    from alframe.models import fit_segmentation, load_task
    from alframe.workflows.training import evaluate_sets

    recipe = project.recipe
    overrides = list(overrides)
    if overrides:
        recipe = recipe_from_dict(apply_overrides(recipe_to_dict(recipe), overrides), "--set")
    labels = project.label_files()
    if not labels:
        raise StateError(
            "nothing is labelled yet; import masks with `alframe round import DIR --from PATH` "
            "before training"
        )
    pseudo: dict[str, Path] = {}
    if include_pseudo:
        pseudo = pseudo_label_paths(project)
        if not pseudo:
            raise StateError(
                "--pseudo-labels: the project has no pseudo-labels for unlabelled items; record "
                "some first (alframe.annotate.pseudo.record_pseudo_labels) or train without "
                "the flag"
            )
    training_labels = {**pseudo, **labels}
    samples = project.samples()
    run = 1 + max(
        (int(r["run"]) for r in project.store.query("SELECT run FROM trainings")), default=0
    )
    staging = project.train_dir / f".staging-{run:03d}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        atomic_write_bytes(staging / "recipe.resolved.yaml", dump_recipe(recipe).encode("utf-8"))
        datamodule = make_datamodule(recipe, samples, training_labels)
        tracker = None
        run_id = None
        callbacks: list[Any] = []
        if track and recipe.tracking.enabled:
            from alframe.tracking import Tracker, make_epoch_logger

            tracker = Tracker(recipe.tracking.experiment or recipe.name, recipe.tracking.uri)
            run_id = tracker.start_run(
                f"{recipe.name}-labels-{run:03d}", tags={"alframe.kind": "round-train"}
            )
            _remember_open_run(project, tracker.uri, run_id, run)
            tracker.log_params(run_id, recipe_to_dict(recipe))
            callbacks.append(make_epoch_logger(tracker, run_id))
        status = "FAILED"
        try:
            started = time.perf_counter()
            fit = fit_segmentation(recipe, datamodule, staging, callbacks=callbacks)
            seconds = time.perf_counter() - started
            checkpoint("train:fitted")
            evaluation: dict[str, dict[str, float]] = {}
            task = load_task(fit.best_checkpoint)
            if recipe.data.evaluate:
                _, evaluation = evaluate_sets(
                    task, datamodule.eval_dataloaders(), recipe.num_classes, staging, False
                )
            agreement = model_agreement(project, recipe, task, labels, staging)
            summary = {
                "run": run,
                "created": now(),
                "n_labelled": len(labels),
                "n_pseudo": len(pseudo),
                "n_train": len(datamodule.train_samples),
                "n_val": len(datamodule.val_samples),
                "best_val_dice": fit.best_val_dice,
                "epochs_run": fit.epochs_run,
                "train_seconds": round(seconds, 2),
                "evaluation": evaluation,
                "pool_agreement": agreement,
            }
            atomic_write_bytes(
                staging / "summary.json",
                (json.dumps(summary, indent=2, default=float) + "\n").encode("utf-8"),
            )
            if tracker is not None and run_id is not None:
                metrics = {
                    "best_val_dice": float(fit.best_val_dice),
                    "n_labelled": float(len(labels)),
                }
                for name, stats in evaluation.items():
                    metrics.update({f"{name}_{k}": float(v) for k, v in stats.items()})
                if agreement["value"] is not None:
                    metrics["pool_agreement"] = float(agreement["value"])
                    metrics["pool_agreement_items"] = float(agreement["n_items"])
                tracker.log_metrics(run_id, metrics)
            status = "FINISHED"
        finally:
            if tracker is not None and run_id is not None:
                tracker.end_run(run_id, status)
                _forget_open_run(project, run_id)
    except BaseException:
        # A failed run leaves nothing behind (a killed one leaves the folder to recovery).
        shutil.rmtree(staging, ignore_errors=True)
        raise
    from alframe.loop.state import sha256_file

    fsync_folder(staging)
    checkpoint("train:staged")
    folder = project.train_dir / f"{run:03d}"
    os.replace(staging, folder)
    fsync_folder(project.train_dir)
    checkpoint("train:renamed")
    best = folder / Path(fit.best_checkpoint).resolve().relative_to(staging.resolve())
    with project.store.transaction() as conn:
        conn.execute(
            "INSERT INTO trainings(run, created, folder, checkpoint, checkpoint_sha256, "
            "n_labelled, n_pseudo, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run,
                summary["created"],
                folder.relative_to(project.root).as_posix(),
                best.relative_to(project.root).as_posix(),
                sha256_file(best),
                len(labels),
                len(pseudo),
                json.dumps(
                    {
                        "best_val_dice": fit.best_val_dice,
                        "evaluation": evaluation,
                        "pool_agreement": agreement,
                    },
                    default=float,
                ),
            ),
        )
        StateStore.log_event(conn, "train", {"run": run, "n_labelled": len(labels)})
    # After the commit: a picture that cannot be drawn is a note, never a lost run.
    from alframe.annotate.pictures import guarded, write_training_pictures

    pictures, notes = guarded(
        f"run {run} pictures",
        lambda: write_training_pictures(project, run, folder, task, tracker, run_id),
    )
    return RoundTraining(
        run=run,
        folder=folder,
        checkpoint=best,
        n_labelled=len(labels),
        n_pseudo=len(pseudo),
        best_val_dice=float(fit.best_val_dice),
        evaluation=evaluation,
        pool_agreement=agreement,
        pictures=pictures,
        notes=notes,
    )
