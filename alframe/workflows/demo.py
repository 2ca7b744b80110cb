"""``alframe demo``: a short, offline active-learning experiment on 2 CPU cores.

The product's default strategy (XSSR with alframe's recommended parameters) against random
sampling, two rounds, one seed, plus the full-data reference:

1. a small convolutional MAE is trained on the unlabelled **source** domain only;
2. XSSR selects from the MAE embeddings of the target pool (random needs nothing);
3. each round trains a small U-Net on the labelled images for a fixed number of steps and
   evaluates it; the learning curves, a table and every round go to the run folder and MLflow.

Its headline is what our benchmarks support: how close a few labels get to the full-data
Dice. The strategy comparison is printed with what one seed on a tiny pool can and cannot say
(our chest X-ray benchmarks find XSSR within seed noise of random on single-site pools; see
docs/strategy_guide.md). A full-data reference below the subset models (too short a training)
gets no percentage.

By default the data are a seeded synthetic two-domain data set (so a fresh install needs nothing
else); when ``ALFRAME_DATA`` points at the shared chest X-ray data the demo uses Montgomery as
source and a 60-image subset of the Shenzhen pool at 64² instead. Results go to MLflow
(``sqlite:///<out>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise), and every file the
demo writes stays under ``--out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alframe.config import recipe_from_dict
from alframe.errors import DataError

DEMO_STEPS_PER_EPOCH = 10
"""Optimisation steps per round for each unit of ``--epochs``."""

DEMO_DEFAULT_STEPS = 40
"""Optimisation steps per round without ``--epochs`` (the reference trains twice as many)."""

DEMO_MAE_EPOCHS = 4
"""MAE epochs without ``--epochs``."""


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
    steps = DEMO_STEPS_PER_EPOCH * epochs if epochs else DEMO_DEFAULT_STEPS
    from alframe.strategies.defaults import DEFAULT_STRATEGY, recommended_params

    default = {"name": DEFAULT_STRATEGY, "params": recommended_params(DEFAULT_STRATEGY)}
    return {
        "strategies": [default, {"name": "random"}],
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
        "train": {"batch_size": 8, "lr": 2e-3, "early_stopping_patience": 0, "progress": True},
        "embed": {
            "mae": {
                "encoder": "resnet18",
                "max_epochs": epochs or DEMO_MAE_EPOCHS,
                "batch_size": 16,
            }
        },
        "experiment": {**demo_experiment(epochs, [8, 16]), "pool_size": 60},
    }


def synthetic_demo_recipe_dict(data_dir: Path, seed: int, epochs: int | None) -> dict[str, Any]:
    """The synthetic experiment: 48 source and 48 target images at 64² (36-image pool)."""
    from alframe.data.synthetic import synthetic_recipe_dict

    raw = synthetic_recipe_dict(data_dir, image_size=64)
    raw["seed"] = seed
    raw["model"]["extra"] = {"decoder_channels": [32, 16, 8]}
    raw["train"].update({"batch_size": 8, "lr": 2e-3, "progress": True})
    raw["embed"] = {
        "mae": {"encoder": "resnet18", "max_epochs": epochs or DEMO_MAE_EPOCHS, "batch_size": 16}
    }
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
            active-learning round and twice that for the full-data reference (default:
            :data:`DEMO_MAE_EPOCHS` MAE epochs, :data:`DEMO_DEFAULT_STEPS` steps per round).
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
            "alframe demo: the default strategy (XSSR) vs random on real chest X-rays (MAE on Montgomery, a 60-image "
            "Shenzhen pool, Shenzhen test), 64²"
        )
    else:
        from alframe.data.synthetic import write_synthetic_dataset

        data_dir = work / "data"
        write_synthetic_dataset(data_dir, n_images=48, seed=seed, image_size=64)
        raw = synthetic_demo_recipe_dict(data_dir, seed, epochs)
        print(
            "alframe demo: the default strategy (XSSR) vs random on a synthetic two-domain data "
            f"set ({data_dir})"
        )
    raw["output_dir"] = str(work / "run")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # Everything the demo makes stays in its folder (git status stays clean elsewhere).
        raw["tracking"] = {"uri": f"sqlite:///{(work / 'mlflow.db').resolve()}"}
    recipe = recipe_from_dict(raw, source="demo")
    # A demo is rerun as is: start over instead of refusing the previous run's folder.
    result = run_experiment(recipe, resume=False, out_dir=_fresh(work / "run"), track=track)
    for line in headline(result.table, primary_set(recipe)):
        print(line)
    return result


def primary_set(recipe: Any) -> str:
    """The evaluation set the demo's headline reads (the experiment's primary set)."""
    experiment = recipe.experiment
    if experiment is not None and experiment.primary_set:
        return str(experiment.primary_set)
    return str(next(iter(recipe.data.evaluate)))


def headline(table: Any, eval_set: str, baseline: str = "random") -> list[str]:
    """The demo's conclusions in plain words, from its summary table.

    Only what the run supports: the best percentage of full-data Dice that the largest budget
    reached (withheld when the reference is below the subset models), then the default strategy
    against ``baseline`` at that budget with a caution that one seed on a small pool does not
    rank strategies.

    Args:
        table: :func:`alframe.loop.summary.summary_table` output.
        eval_set: the evaluation set to read.
        baseline: the comparison label.

    Returns:
        Lines to print.
    """
    from alframe.loop.summary import REFERENCE_LABEL

    part = table[table["eval_set"] == eval_set]
    reference = part[part["label"] == REFERENCE_LABEL]
    curves = part[part["label"] != REFERENCE_LABEL]
    if curves.empty:
        return []
    largest = int(curves["n_labelled"].max())
    at_largest = curves[curves["n_labelled"] == largest].set_index("label")
    lines = ["", f"In short ({eval_set}):"]
    if not reference.empty:
        ref = reference.iloc[0]
        pct = at_largest["pct_of_full"].dropna()
        if len(pct):
            pool = int(ref["n_labelled"])
            lines.append(
                f"- {largest} of {pool} pool images labelled reach {pct.max():.1f} % of the "
                f"full-data Dice ({ref['dice_mean']:.3f}); labelling the other {pool - largest} "
                f"would buy the remaining {100 - pct.max():.1f} %."
            )
        else:
            lines.append(
                f"- the full-data reference (Dice {ref['dice_mean']:.3f}) trained too briefly to "
                "beat the subset models, so no percentage of full data is given; rerun with more "
                "--epochs for a real ceiling."
            )
    others = [label for label in at_largest.index if label != baseline]
    if baseline in at_largest.index and others:
        base = at_largest.loc[baseline, "dice_mean"]
        for label in others:
            gap = 100 * (at_largest.loc[label, "dice_mean"] - base)
            n_seeds = int(at_largest.loc[label, "n_seeds"])
            lines.append(
                f"- {label} vs {baseline} at {largest} labels: {gap:+.1f} Dice points on "
                f"{n_seeds} seed(s). One seed on a pool this small does not rank strategies; "
                "our 3-seed chest X-ray benchmarks find no consistent winner between them "
                "(docs/strategy_guide.md says where each pays)."
            )
    return lines


def _fresh(folder: Path) -> Path:
    """Empty ``folder`` of a previous demo run (only alframe's own run files are removed)."""
    import shutil

    if (folder / "experiment.json").is_file():
        shutil.rmtree(folder)
    return folder
