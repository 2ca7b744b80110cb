"""Train-and-evaluate and evaluate-a-checkpoint workflows shared by the CLI, the demo and benchmarks.

These glue the packages together (data → models → tracking); the CLI only parses and prints.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alframe._atomic import atomic_write_text
from alframe._dist import is_global_zero
from alframe.config import Recipe, dump_recipe, recipe_from_dict, recipe_to_dict
from alframe.config.schema import DatasetConfig
from alframe.errors import DataError


@dataclass
class TrainEvalResult:
    """What one ``alframe train`` produced.

    Attributes:
        out_dir: the run folder (checkpoint, per-image CSVs, summary JSON, resolved recipe).
        checkpoint: the best checkpoint by validation Dice.
        best_val_dice: validation Dice of that checkpoint.
        epochs_run: epochs actually trained (early stopping may end sooner).
        train_seconds: wall time of training alone.
        evaluations: per evaluation set, the per-image table (id, dice, iou, ...).
        summary: per evaluation set, mean/std of every metric.
        mlflow_run_id: the MLflow run, when tracking was on.
        tracking_uri: where that run lives.
    """

    out_dir: Path
    checkpoint: Path
    best_val_dice: float
    epochs_run: int
    train_seconds: float
    evaluations: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None


def run_dir_for(recipe: Recipe, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """The output folder of a run: ``out_dir`` or the recipe's ``output_dir`` template."""
    if out_dir is not None:
        return Path(out_dir)
    return Path(recipe.output_dir.replace("{name}", recipe.name))


def evaluate_sets(
    task: Any, loaders: dict[str, Any], num_classes: int, out_dir: Path | None, progress: bool
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, float]]]:
    """Evaluate ``task`` on every named loader; write ``eval_<name>.csv`` when out_dir is given."""
    from alframe.models import evaluate_segmentation, summarize, write_evaluation

    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, dict[str, float]] = {}
    for name, loader in loaders.items():
        table = evaluate_segmentation(task, loader, num_classes, name, progress=progress)
        tables[name] = table
        summary[name] = summarize(table)
        if out_dir is not None:
            write_evaluation(table, out_dir / f"eval_{name}.csv")
    return tables, summary


def preflight_check(recipe: Recipe, datamodule: Any) -> None:
    """Read every training, validation and evaluation item once before anything is started.

    A bad mask found in epoch 7 would waste the run and leave a failed MLflow run behind; one pass
    over the files costs about a second per thousand 256² images.

    Raises:
        DataError: naming the first broken file (and how many more there are).
    """
    from alframe.data import validate_samples

    datamodule.setup()
    catalog = datamodule.catalog
    groups = [("training", recipe.data.train.dataset, datamodule.train_samples)]
    val_dataset = (recipe.data.val or recipe.data.train).dataset
    groups.append(("validation", val_dataset, datamodule.val_samples))
    for name, ref in recipe.data.evaluate.items():
        groups.append((f"evaluation set {name}", ref.dataset, catalog.samples(ref)))
    for _, dataset, samples in groups:
        problems = validate_samples(
            list(samples),
            recipe.data.in_channels,
            dict(recipe.data.classes),
            catalog.mask_format(dataset),
        )
        if problems:
            more = f" (and {len(problems) - 1} more broken files)" if len(problems) > 1 else ""
            raise DataError(problems[0] + more)


def train_and_evaluate(
    recipe: Recipe,
    out_dir: str | os.PathLike[str] | None = None,
    track: bool = True,
    train_ids: list[str] | None = None,
    run_name: str | None = None,
) -> TrainEvalResult:
    """Train on ``recipe.data.train`` (optionally only ``train_ids``), evaluate every set.

    Args:
        recipe: the validated recipe.
        out_dir: run folder; defaults to the recipe's ``output_dir``.
        track: log params, per-epoch metrics, evaluation metrics and artifacts to MLflow.
        train_ids: restrict training to these global sample ids (label-efficiency runs).
        run_name: MLflow run name (default: the recipe name).

    Returns:
        A :class:`TrainEvalResult`; files are written under ``out_dir``.
    """
    from alframe.data import SegmentationDataModule
    from alframe.models import fit_segmentation, load_task

    datamodule = SegmentationDataModule(recipe, train_ids=train_ids)
    preflight_check(recipe, datamodule)  # before anything is written
    folder = run_dir_for(recipe, out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "recipe.resolved.yaml", dump_recipe(recipe))
    tracker = None
    run_id = None
    callbacks: list[Any] = []
    lead = is_global_zero()  # under DDP every process runs this; one of them reports
    if track and recipe.tracking.enabled and lead:
        from alframe.tracking import Tracker, make_epoch_logger

        tracker = Tracker(recipe.tracking.experiment or recipe.name, recipe.tracking.uri)
        run_id = tracker.start_run(run_name or recipe.name, tags={"alframe.kind": "train"})
        tracker.log_params(run_id, recipe_to_dict(recipe))
        callbacks.append(make_epoch_logger(tracker, run_id))

    status = "FAILED"
    try:
        started = time.perf_counter()
        fit = fit_segmentation(recipe, datamodule, folder, callbacks=callbacks)
        train_seconds = time.perf_counter() - started
        tables: dict[str, Any] = {}
        summary: dict[str, dict[str, float]] = {}
        if lead:
            task = load_task(fit.best_checkpoint)
            tables, summary = evaluate_sets(
                task,
                datamodule.eval_dataloaders(),
                recipe.num_classes,
                folder,
                recipe.train.progress,
            )
        result = TrainEvalResult(
            out_dir=folder,
            checkpoint=Path(fit.best_checkpoint),
            best_val_dice=float(fit.best_val_dice),
            epochs_run=int(fit.epochs_run),
            train_seconds=train_seconds,
            evaluations=tables,
            summary=summary,
            mlflow_run_id=run_id,
            tracking_uri=tracker.uri if tracker else None,
        )
        summary_doc = {
            "recipe": recipe.name,
            "checkpoint": str(result.checkpoint),
            "best_val_dice": result.best_val_dice,
            "epochs_run": result.epochs_run,
            "train_seconds": round(train_seconds, 2),
            "n_train": len(datamodule.train_samples),
            "image_size": list(recipe.data.image_size),
            "evaluation": summary,
        }
        if lead:
            atomic_write_text(folder / "summary.json", json.dumps(summary_doc, indent=2))
        if tracker is not None and run_id is not None:
            metrics: dict[str, float] = {
                "best_val_dice": result.best_val_dice,
                "train_seconds": train_seconds,
                "n_train": float(len(datamodule.train_samples)),
            }
            for set_name, stats in summary.items():
                for key, value in stats.items():
                    metrics[f"{set_name}_{key}"] = value
            tracker.log_metrics(run_id, metrics)
            tracker.log_artifact(run_id, folder / "recipe.resolved.yaml")
            tracker.log_artifact(run_id, folder / "summary.json")
            for set_name in tables:
                tracker.log_artifact(run_id, folder / f"eval_{set_name}.csv", "evaluation")
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None and run_id is not None:
            tracker.end_run(run_id, status)


def folder_dataset_config(folder: Path, like: DatasetConfig | None = None) -> DatasetConfig:
    """A dataset entry for an ad-hoc ``images/`` + ``masks/`` folder given on the command line."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; pass a folder with images/ and masks/")
    mask_format = like.mask_format if like is not None else "binary"
    masks = "masks" if (folder / "masks").is_dir() else None
    if masks is None:
        raise DataError(
            f"{folder}: no masks/ folder; evaluation needs ground truth (images/ + masks/)"
        )
    return DatasetConfig(path=str(folder.resolve()), mask_format=mask_format)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str,
    out_csv: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, float]]]:
    """Evaluate a trained checkpoint on a folder or on a named evaluation set of its recipe.

    Args:
        checkpoint: an alframe checkpoint (``.ckpt``) written by ``alframe train``.
        data: a folder with ``images/`` and ``masks/`` (preprocessed exactly as the checkpoint's
            recipe says), or the name of one of the recipe's ``data.evaluate`` sets, or ``all``.
        out_csv: where to write the per-image table (one set) or a folder (several sets).
        progress: show a progress bar.

    Returns:
        Per-set per-image tables and their summaries.
    """
    from alframe.data import SegmentationDataModule
    from alframe.models import load_task

    task = load_task(checkpoint)
    raw = getattr(task, "hparams", {}).get("recipe")
    if not raw:
        raise DataError(
            f"{checkpoint}: the checkpoint carries no recipe, so its preprocessing is unknown; "
            "use a checkpoint written by `alframe train`"
        )
    recipe = recipe_from_dict(dict(raw), source=f"{checkpoint} (embedded recipe)")
    folder = Path(data)
    if folder.exists() or os.sep in data or data.startswith("."):
        from torch.utils.data import DataLoader

        from alframe.data import SegmentationDataset, discover_samples

        entry = folder_dataset_config(folder, like=recipe.data.datasets[recipe.data.train.dataset])
        name = folder.resolve().name or "data"
        # The folder becomes one more data set of (a copy of) the checkpoint's data config, so it
        # is read and preprocessed exactly like the data the model was trained on.
        data_cfg = recipe.data.model_copy(
            update={"datasets": {**recipe.data.datasets, name: entry}}
        )
        samples = discover_samples(name, entry, folder.parent)
        dataset = SegmentationDataset(samples, data_cfg, recipe.augment.eval, train=False)
        loaders: dict[str, Any] = {name: DataLoader(dataset, batch_size=recipe.train.batch_size)}
    else:
        loaders = SegmentationDataModule(recipe).eval_dataloaders()
        if data != "all":
            if data not in loaders:
                raise DataError(
                    f"--data {data!r}: not a folder and not an evaluation set of the checkpoint's "
                    f"recipe ({', '.join(sorted(loaders)) or 'none'}); pass a folder with "
                    "images/ and masks/ or one of those names"
                )
            loaders = {data: loaders[data]}
    tables, summary = evaluate_sets(task, loaders, recipe.num_classes, None, progress)
    if out_csv is not None:
        from alframe.models import write_evaluation

        target = Path(out_csv)
        if len(tables) == 1 and target.suffix == ".csv":
            write_evaluation(next(iter(tables.values())), target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            for name, table in tables.items():
                write_evaluation(table, target / f"eval_{name}.csv")
    return tables, summary
