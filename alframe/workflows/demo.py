"""``alframe demo``: a few-minute, offline active-learning experiment on 2 CPU cores.

XSSR against random sampling, two rounds, one seed, plus the full-data reference:

1. a small convolutional MAE is trained on the unlabelled **source** domain only;
2. XSSR selects from the MAE embeddings of the target pool (random needs nothing);
3. each round trains a small U-Net on the labelled images for a fixed number of steps and
   evaluates it; the learning curves, a table and every round go to the run folder and MLflow.

By default the data are a seeded synthetic two-domain data set (so a fresh install needs nothing
else); when ``ALFRAME_DATA`` points at the shared chest X-ray data the demo uses Montgomery as
source and a 60-image subset of the Shenzhen pool at 64² instead. Results go to MLflow
(``sqlite:///mlflow.db`` in the working directory unless ``MLFLOW_TRACKING_URI`` says otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alframe.config import recipe_from_dict
from alframe.errors import DataError

DEMO_STEPS_PER_EPOCH = 10
"""Optimisation steps per round for each unit of ``--epochs``."""


def real_data_available() -> bool:
    """True when ``$ALFRAME_DATA/cxr_lungs`` exists."""
    root = os.environ.get("ALFRAME_DATA")
    return bool(root) and (Path(str(root)) / "cxr_lungs" / "shenzhen").is_dir()


def demo_experiment(epochs: int | None, budgets: list[int]) -> dict[str, Any]:
    """The demo's ``experiment`` section: XSSR vs random, one schedule, the full-data reference.

    Args:
        epochs: None for the defaults; otherwise a scale for every training (see
            :func:`run_demo`).
        budgets: cumulative labelled-set sizes per round.
    """
    steps = DEMO_STEPS_PER_EPOCH * epochs if epochs else 40
    return {
        "strategies": [{"name": "xssr", "params": {"alpha": "auto"}}, {"name": "random"}],
        "schedules": [{"name": "demo", "cumulative": budgets}],
        "full_reference": True,
        "cold_start": "random",
        "steps_per_round": steps,
        # The reference sees the whole pool: twice the steps, best weights on validation.
        "reference_train": {"max_steps": 2 * steps, "max_epochs": 1000},
    }


def real_demo_recipe_dict(seed: int, epochs: int | None) -> dict[str, Any]:
    """A small real-data experiment: Montgomery → a 60-image Shenzhen pool at 64², two rounds."""
    split = {"kind": "csv", "csv": "splits.csv"}
    return {
        "name": "demo_cxr",
        "seed": seed,
        "data": {
            "root": "${ALFRAME_DATA}/cxr_lungs",
            "classes": {"background": 0, "lung": 255},
            "image_size": [64, 64],
            "datasets": {
                "shenzhen": {
                    "path": "shenzhen",
                    "split": {**split, "filter": {"source": "shenzhen"}},
                },
                "montgomery": {"path": "montgomery"},
            },
            "train": {"dataset": "shenzhen", "split": "train"},
            "source": {"dataset": "montgomery"},
            "evaluate": {"shenzhen_test": {"dataset": "shenzhen", "split": "test"}},
        },
        "model": {
            "arch": "Unet",
            "encoder": "resnet18",
            "encoder_depth": 3,
            "extra": {"decoder_channels": [32, 16, 8]},
        },
        "train": {"batch_size": 8, "lr": 2e-3, "early_stopping_patience": 0, "progress": False},
        "embed": {"mae": {"encoder": "resnet18", "max_epochs": epochs or 6, "batch_size": 16}},
        "experiment": {**demo_experiment(epochs, [8, 16]), "pool_size": 60},
    }


def synthetic_demo_recipe_dict(data_dir: Path, seed: int, epochs: int | None) -> dict[str, Any]:
    """The synthetic experiment: 48 source and 48 target images at 64² (36-image pool)."""
    from alframe.data.synthetic import synthetic_recipe_dict

    raw = synthetic_recipe_dict(data_dir, image_size=64)
    raw["seed"] = seed
    raw["model"]["extra"] = {"decoder_channels": [32, 16, 8]}
    raw["train"].update({"batch_size": 8, "lr": 2e-3, "progress": False})
    raw["embed"] = {"mae": {"encoder": "resnet18", "max_epochs": epochs or 6, "batch_size": 16}}
    raw["experiment"] = demo_experiment(epochs, [4, 8])
    return raw


def run_demo(
    data: str = "auto",
    out: str | os.PathLike[str] = "alframe_demo",
    seed: int = 0,
    epochs: int | None = None,
    track: bool = True,
) -> Any:
    """Run the demo experiment and print its progress, the results and how to open them.

    Args:
        data: ``auto``, ``synthetic`` or ``real``.
        out: work folder for generated data, the MAE, checkpoints and results.
        seed: seed for data generation, selection and training.
        epochs: scales every training: MAE epochs, ``10 × epochs`` optimisation steps per
            active-learning round and twice that for the full-data reference (default: 6 MAE
            epochs, 40 and 80 steps).
        track: log to MLflow.

    Returns:
        The :class:`~alframe.loop.ExperimentResult`.
    """
    from alframe.loop import run_experiment

    work = Path(out)
    use_real = data == "real" or (data == "auto" and real_data_available())
    if data == "real" and not real_data_available():
        raise DataError(
            "demo --data real: ALFRAME_DATA is not set to a folder containing cxr_lungs/; "
            "export ALFRAME_DATA=/path/to/shared/data or use --data synthetic"
        )
    if use_real:
        raw = real_demo_recipe_dict(seed, epochs)
        print(
            "alframe demo: XSSR vs random on real chest X-rays (MAE on Montgomery, a 60-image "
            "Shenzhen pool, Shenzhen test), 64²"
        )
    else:
        from alframe.data.synthetic import write_synthetic_dataset

        data_dir = work / "data"
        write_synthetic_dataset(data_dir, n_images=48, seed=seed, image_size=64)
        raw = synthetic_demo_recipe_dict(data_dir, seed, epochs)
        print(f"alframe demo: XSSR vs random on a synthetic two-domain data set ({data_dir})")
    raw["output_dir"] = str(work / "run")
    recipe = recipe_from_dict(raw, source="demo")
    # A demo is rerun as is: start over instead of refusing the previous run's folder.
    result = run_experiment(recipe, resume=False, out_dir=_fresh(work / "run"), track=track)
    return result


def _fresh(folder: Path) -> Path:
    """Empty ``folder`` of a previous demo run (only alframe's own run files are removed)."""
    import shutil

    if (folder / "experiment.json").is_file():
        shutil.rmtree(folder)
    return folder
