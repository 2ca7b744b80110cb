"""``alframe demo``: a few-minute, offline, end-to-end run on 2 CPU cores.

By default it generates a seeded synthetic two-domain segmentation data set (so a fresh install
needs nothing else); when ``ALFRAME_DATA`` points at the shared chest X-ray data it uses a small
real Shenzhen subset at 128² instead. Results go to MLflow (``sqlite:///mlflow.db`` in the working
directory unless ``MLFLOW_TRACKING_URI`` says otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alframe.config import recipe_from_dict
from alframe.errors import DataError


def real_data_available() -> bool:
    """True when ``$ALFRAME_DATA/cxr_lungs`` exists."""
    root = os.environ.get("ALFRAME_DATA")
    return bool(root) and (Path(str(root)) / "cxr_lungs" / "shenzhen").is_dir()


def real_demo_recipe_dict(seed: int, epochs: int) -> dict[str, Any]:
    """A small real-data recipe: 64 Shenzhen training images at 128², evaluated on two sites."""
    split = {"kind": "csv", "csv": "splits.csv"}
    return {
        "name": "demo_cxr",
        "seed": seed,
        "data": {
            "root": "${ALFRAME_DATA}/cxr_lungs",
            "classes": {"background": 0, "lung": 255},
            "image_size": [128, 128],
            "datasets": {
                "shenzhen": {
                    "path": "shenzhen",
                    "split": {**split, "filter": {"source": "shenzhen"}},
                },
                "montgomery": {
                    "path": "montgomery",
                    "split": {**split, "filter": {"source": "montgomery"}},
                },
            },
            "train": {"dataset": "shenzhen", "split": "train"},
            "evaluate": {
                "shenzhen_test": {"dataset": "shenzhen", "split": "test"},
                "montgomery_test": {"dataset": "montgomery", "split": "test"},
            },
        },
        "model": {"arch": "Unet", "encoder": "resnet18"},
        "train": {"max_epochs": epochs, "batch_size": 8, "lr": 2e-3, "early_stopping_patience": 0},
    }


def run_demo(
    data: str = "auto",
    out: str | os.PathLike[str] = "alframe_demo",
    seed: int = 0,
    epochs: int | None = None,
    track: bool = True,
) -> Any:
    """Run the demo and print what it did, the results and how to open them.

    Args:
        data: ``auto``, ``synthetic`` or ``real``.
        out: work folder for generated data, checkpoints and CSVs.
        seed: seed for data generation, splits and training.
        epochs: override the number of training epochs.
        track: log to MLflow.

    Returns:
        The :class:`~alframe.workflows.training.TrainEvalResult`.
    """
    from alframe.models import format_table
    from alframe.workflows.training import train_and_evaluate

    work = Path(out)
    use_real = data == "real" or (data == "auto" and real_data_available())
    if data == "real" and not real_data_available():
        raise DataError(
            "demo --data real: ALFRAME_DATA is not set to a folder containing cxr_lungs/; "
            "export ALFRAME_DATA=/path/to/shared/data or use --data synthetic"
        )
    if use_real:
        raw = real_demo_recipe_dict(seed, epochs or 6)
        # Keep the real demo to a few minutes: a 64-image labelled subset of the Shenzhen pool.
        print("alframe demo: real chest X-rays (Shenzhen → Shenzhen test and Montgomery), 128²")
    else:
        from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset

        data_dir = work / "data"
        write_synthetic_dataset(data_dir, n_images=48, seed=seed, image_size=64)
        raw = synthetic_recipe_dict(data_dir, image_size=64)
        raw["seed"] = seed
        raw.setdefault("train", {})["max_epochs"] = epochs or 8
        print(f"alframe demo: synthetic two-domain data set written to {data_dir}")
    raw["output_dir"] = str(work / "run")
    recipe = recipe_from_dict(raw, source="demo")

    train_ids = None
    if use_real:
        from alframe.data import DataCatalog

        pool = DataCatalog(recipe).samples(recipe.data.train)
        train_ids = [s.id for s in pool[:64]]
    result = train_and_evaluate(recipe, track=track, train_ids=train_ids, run_name="demo")
    print()
    print(
        f"trained {recipe.model.arch}/{recipe.model.encoder} on {len(train_ids or []) or 'all'} "
        f"images for {result.epochs_run} epochs ({result.train_seconds:.0f} s); "
        f"validation Dice {result.best_val_dice:.3f}"
    )
    print(format_table(result.evaluations))
    print(f"run folder: {result.out_dir}")
    if result.tracking_uri:
        print(f"open the results: mlflow ui --backend-store-uri {result.tracking_uri}")
    return result
