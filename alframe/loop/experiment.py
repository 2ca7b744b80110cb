"""Budget experiments: strategies × budget schedules × seeds, plus a full-data reference per seed.

``alframe experiment --recipe R [--resume]`` runs :func:`run_experiment`. Files under the run
directory (``output_dir`` of the recipe)::

    experiment.json            what was planned (arms, pool size), written once
    recipe.resolved.yaml       the recipe as given (after --set)
    recipe.rounds.yaml         the recipe of the active-learning fits (experiment.train applied)
    recipe.reference.yaml      the recipe of the full-data reference fits
    mae/, embeddings/          the source-domain MAE and the embedding cache (when needed)
    runs/<label>__<schedule>__seed<k>/rounds/NNN/...   one folder per run and round
    experiment_results.csv     one row per run × round × evaluation set
    summary_table.csv          mean ± std over seeds, % of full data, AULC, pool agreement
    summary.md, learning_curve.png

Training budget per round: with a handful of labels an epoch is one or two optimisation steps,
so epochs are not comparable across budgets. ``experiment.steps_per_round`` gives every round the
same number of optimisation steps (and the same cosine learning-rate schedule), so budgets differ
only in how many distinct images those steps see. Rounds train on every labelled image
(``experiment.val_fraction`` 0) and keep the final weights: holding out 2 of 22 labels for
checkpoint selection would cost more than it gives. The full-data reference uses the recipe's own
``train`` section (epochs, early stopping on ``data.val_fraction``) — the standard supervised
result that label efficiency is measured against.

Every round from the second on also records ``pool_agreement``, the mean Dice between the
previous and the current round's predictions on the still-unlabelled pool
(:mod:`alframe.loop.pool_agreement`): a stopping signal that needs no labels, shown in the
progress lines, MLflow, ``summary_table.csv`` and ``summary.md`` beside the learning curve it
is meant to predict. ``experiment.pool_agreement: false`` skips it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alframe.config import Recipe, TrainConfig, dump_recipe, recipe_to_dict
from alframe.errors import ConfigError, StateError
from alframe.loop.active import (
    MODEL_REQUIREMENTS,
    ActiveLearningRun,
    ArmSpec,
    LoopHooks,
    PoolInputs,
    RoundTracker,
    _create_strategy,
)
from alframe.loop.learner import Learner, LightningLearner
from alframe.loop.schedule import BudgetSchedule
from alframe.loop.state import (
    RunState,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
)
from alframe.loop.summary import (
    REFERENCE_LABEL,
    markdown_table,
    plot_learning_curves,
    results_frame,
    summary_table,
)

EXPERIMENT_FORMAT = "alframe.experiment/1"
RUNS_FOLDER = "runs"
LONG_RUN_EPOCHS = 1_000_000
"""``max_epochs`` of step-budgeted rounds: large enough that ``max_steps`` always ends the fit."""

LearnerFactory = Callable[[Recipe, Any, ArmSpec], Learner]
"""(recipe of the fits, data catalog, arm) → a learner."""


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced.

    Attributes:
        run_dir: the experiment folder.
        results: one row per run × round × evaluation set (``experiment_results.csv``).
        table: mean ± std over seeds, % of full data and AULC (``summary_table.csv``).
        files: name → path of the written summary files.
        manifests: run folder name → its round manifests.
        tracking_uri: the MLflow store, when tracking was on.
        summary_run_id: the MLflow summary run.
        ui_command: how to look at the MLflow results.
        seconds: wall time.
    """

    run_dir: Path
    results: pd.DataFrame
    table: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)
    manifests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tracking_uri: str | None = None
    summary_run_id: str | None = None
    ui_command: str | None = None
    seconds: float = 0.0


def _no_validation(recipe: Recipe, val_fraction: float) -> bool:
    return recipe.data.val is None and val_fraction == 0.0


def rounds_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the active-learning fits.

    ``train`` gets ``progress: false``, then ``steps_per_round`` (as ``max_steps`` with a huge
    ``max_epochs``), then ``experiment.train``; ``data.val_fraction`` becomes
    ``experiment.val_fraction``. Without validation, early stopping is off.
    """
    experiment = _experiment(recipe)
    train: dict[str, Any] = {**recipe.train.model_dump(), "progress": False}
    if experiment.steps_per_round is not None:
        train.update(max_steps=experiment.steps_per_round, max_epochs=LONG_RUN_EPOCHS)
    train.update(experiment.train)
    if _no_validation(recipe, experiment.val_fraction):
        train["early_stopping_patience"] = 0  # nothing to monitor
    data = recipe.data.model_copy(update={"val_fraction": experiment.val_fraction})
    return recipe.model_copy(update={"train": TrainConfig.model_validate(train), "data": data})


def reference_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the full-data reference: ``train`` + ``experiment.reference_train``."""
    experiment = _experiment(recipe)
    train: dict[str, Any] = {**recipe.train.model_dump(), "progress": False}
    train.update(experiment.reference_train)
    if _no_validation(recipe, recipe.data.val_fraction):
        train["early_stopping_patience"] = 0
    return recipe.model_copy(update={"train": TrainConfig.model_validate(train)})


def _experiment(recipe: Recipe) -> Any:
    if recipe.experiment is None:
        raise ConfigError(
            f"recipe {recipe.name!r} has no experiment section; add one with strategies, "
            "schedules and seeds (see recipes/xssr_cxr_budget.yaml)"
        )
    return recipe.experiment


def _results_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The parts of a fit recipe that decide its results (not names, tracking or folders)."""
    data = recipe_to_dict(recipe)
    for key in ("name", "experiment", "tracking", "output_dir", "select"):
        data.pop(key, None)
    data.get("train", {}).pop("progress", None)
    data.get("embed", {}).pop("devices", None)  # rows are gathered in order on any devices
    # A reading option: the store and the matrix in RAM give the same picks.
    data.get("embed", {}).pop("memory_map", None)
    if not recipe.pseudolabel.enabled:  # switched off, none of its settings matter
        data.pop("pseudolabel", None)
    else:
        data.get("pseudolabel", {}).pop("devices", None)  # the same labels on any devices
    return data


def pool_samples(recipe: Recipe, catalog: Any) -> list[Any]:
    """The experiment's pool: ``data.train``, or a seeded subset of ``pool_size`` items."""
    samples = list(catalog.samples(recipe.data.train))
    size = _experiment(recipe).pool_size
    if size is None or size >= len(samples):
        return samples
    rng = np.random.default_rng([recipe.seed, 0x9001])
    keep = np.sort(rng.choice(len(samples), size=size, replace=False))
    return [samples[int(i)] for i in keep]


def plan_arms(recipe: Recipe, pool_size: int) -> list[ArmSpec]:
    """Every run of the experiment, in execution order (per seed: strategies × schedules, then
    the full-data reference).

    Raises:
        ConfigError: unknown strategy or parameter, a cold-start strategy that needs a model, a
            schedule longer than the pool.
    """
    experiment = _experiment(recipe)
    schedules = [BudgetSchedule.from_config(s, pool_size) for s in experiment.schedules]
    for schedule in schedules:
        schedule.check_pool(pool_size)
    for i, spec in enumerate(experiment.strategies):
        strategy = _create_strategy(spec.name, spec.params, f"experiment.strategies[{i}]")
        if set(strategy.requires) & MODEL_REQUIREMENTS:
            cold = spec.cold_start or experiment.cold_start
            cold_params = (
                spec.cold_start_params
                if spec.cold_start_params is not None
                else experiment.cold_start_params
            )
            cold_strategy = _create_strategy(cold, cold_params, "experiment.cold_start")
            if set(cold_strategy.requires) & MODEL_REQUIREMENTS:
                raise ConfigError(
                    f"experiment.cold_start = {cold!r} needs a trained model itself; choose a "
                    "strategy that works without one, e.g. random or typiclust"
                )
    arms = []
    for seed in experiment.seeds:
        for spec in experiment.strategies:
            for schedule in schedules:
                arms.append(
                    ArmSpec(
                        label=spec.display,
                        strategy=spec.name,
                        params=dict(spec.params),
                        schedule=schedule,
                        seed=seed,
                        cold_start=spec.cold_start or experiment.cold_start,
                        cold_start_params=dict(
                            spec.cold_start_params
                            if spec.cold_start_params is not None
                            else experiment.cold_start_params
                        ),
                        retrain=experiment.retrain,
                        embedding=spec.embedding,
                    )
                )
        if experiment.full_reference:
            arms.append(
                ArmSpec(
                    label=REFERENCE_LABEL,
                    strategy=None,
                    schedule=BudgetSchedule((pool_size,), name=REFERENCE_LABEL),
                    seed=seed,
                )
            )
    return arms


def _primary_set(recipe: Recipe) -> str:
    experiment = _experiment(recipe)
    sets = list(recipe.data.evaluate)
    if not sets:
        raise ConfigError(
            "the experiment needs at least one evaluation set; add data.evaluate "
            "(e.g. {shenzhen_test: {dataset: shenzhen, split: test}})"
        )
    if experiment.primary_set is not None and experiment.primary_set not in sets:
        raise ConfigError(
            f"experiment.primary_set = {experiment.primary_set!r} is not one of data.evaluate "
            f"({', '.join(sets)})"
        )
    return str(experiment.primary_set or sets[0])


class _Embeddings:
    """Trains the source MAE when needed and embeds pool and source once (cached on disk).

    The pool embeddings come as ``embed.memory_map`` says: the cache entry memory-mapped, or
    in RAM (the source set always in RAM: strategies take it as a matrix).
    """

    def __init__(self, recipe: Recipe, samples: Sequence[Any], progress: bool) -> None:
        self.recipe = recipe
        self.samples = list(samples)
        self.progress = progress

    def _ensure_mae(self) -> None:
        from alframe.embed.pipeline import ensure_mae

        ensure_mae(self.recipe, progress=self.progress)

    def pool(self) -> tuple[np.ndarray, str]:
        from alframe.embed import embed_samples

        self._ensure_mae()
        result = embed_samples(
            self.recipe,
            self.samples,
            progress=self.progress,
            memory_map=self.recipe.embed.memory_map,
        )
        return result.embeddings, result.weights_hash

    def model(
        self, checkpoint: Path
    ) -> tuple[tuple[np.ndarray, str], tuple[np.ndarray, str] | None]:
        """Pool and source embeddings of a round model's encoder (cached by its weights)."""
        from alframe.embed import embed_samples
        from alframe.embed.extract import encoder_from_segmentation
        from alframe.embed.pipeline import source_samples

        embedder = encoder_from_segmentation(checkpoint)
        pool = embed_samples(
            self.recipe,
            self.samples,
            embedder=embedder,
            progress=False,
            memory_map=self.recipe.embed.memory_map,
        )
        source = None
        if self.recipe.data.source is not None:
            result = embed_samples(
                self.recipe, source_samples(self.recipe), embedder=embedder, progress=False
            )
            source = (result.embeddings, result.weights_hash)
        return (pool.embeddings, pool.weights_hash), source

    def source(self) -> tuple[np.ndarray, str] | None:
        from alframe.embed import embed_pool

        if self.recipe.data.source is None:
            return None
        self._ensure_mae()
        result = embed_pool(self.recipe, which="source", progress=False)
        return result.embeddings, result.weights_hash


def _check_experiment_file(run_dir: Path, resume: bool) -> None:
    path = run_dir / "experiment.json"
    if path.exists() and not resume:
        raise StateError(
            f"{run_dir} already holds an experiment; pass --resume to continue it, or delete "
            "the folder (or set output_dir to a new folder) to start over"
        )
    if path.exists():
        read_json(path, "experiment description", f"delete {path} and run again with --resume")


def run_experiment(
    recipe: Recipe,
    resume: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    track: bool = True,
    hooks: LoopHooks | None = None,
    learner_factory: LearnerFactory | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Run (or, with ``resume``, finish) the recipe's budget experiment.

    Args:
        recipe: a recipe with an ``experiment`` section.
        resume: continue an interrupted experiment from its last committed rounds.
        out_dir: experiment folder (default: the recipe's ``output_dir``).
        track: log to MLflow (``tracking.uri`` / ``$MLFLOW_TRACKING_URI`` /
            ``sqlite:///mlflow.db``).
        hooks: callbacks around every round (e.g. to stop after a round in tests).
        learner_factory: builds the learner of each run (default: :class:`LightningLearner`).
        progress: print one line per round and the final table.

    Returns:
        The :class:`ExperimentResult`.

    Raises:
        ConfigError: no experiment section, unknown strategies, impossible schedules.
        StateError: an existing experiment without ``resume``, or damaged / changed state.
        DataError: broken data files (checked before anything is trained).
    """
    from alframe.data import DataCatalog, SegmentationDataModule
    from alframe.workflows.training import preflight_check

    started = time.perf_counter()
    experiment = _experiment(recipe)
    run_dir = Path(out_dir) if out_dir is not None else Path(recipe.run_dir)
    if out_dir is not None:
        recipe = recipe.model_copy(update={"output_dir": str(run_dir)})
    primary = _primary_set(recipe)
    catalog = DataCatalog(recipe)
    samples = pool_samples(recipe, catalog)
    pool_ids = [s.id for s in samples]
    arms = plan_arms(recipe, len(pool_ids))
    fit_recipe = rounds_recipe(recipe)
    full_recipe = reference_recipe(recipe)
    # Read every pool and evaluation file once before anything is written.
    preflight_check(
        fit_recipe, SegmentationDataModule(fit_recipe, train_ids=pool_ids, catalog=catalog)
    )

    _check_experiment_file(run_dir, resume)
    # The tracking store is opened before anything is written: an unreachable server fails here.
    tracker = None
    round_tracker: RoundTracker | None = None
    if track and recipe.tracking.enabled:
        from alframe.loop.run_log import MlflowRoundTracker
        from alframe.tracking import Tracker

        tracker = Tracker(recipe.tracking.experiment or recipe.name, recipe.tracking.uri)
        round_tracker = MlflowRoundTracker(
            tracker,
            recipe_to_dict(fit_recipe),
            run_dir / "recipe.rounds.yaml",
            recipe_to_dict(full_recipe),
            run_dir / "recipe.reference.yaml",
        )

    plan = {
        "format": EXPERIMENT_FORMAT,
        "recipe": recipe.name,
        "pool_size": len(pool_ids),
        "primary_set": primary,
        "arms": [arm.folder_name for arm in arms],
    }
    atomic_write_json(run_dir / "experiment.json", plan)
    atomic_write_text(run_dir / "recipe.resolved.yaml", dump_recipe(recipe))
    atomic_write_text(run_dir / "recipe.rounds.yaml", dump_recipe(fit_recipe))
    atomic_write_text(run_dir / "recipe.reference.yaml", dump_recipe(full_recipe))

    embeddings = _Embeddings(recipe, samples, progress)
    inputs = PoolInputs(
        ids=pool_ids,
        has_mask=np.asarray([bool(s.labelled) for s in samples]),
        embeddings_fn=embeddings.pool,
        source_embeddings_fn=embeddings.source,
        model_embeddings_fn=embeddings.model,
    )

    several_schedules = len(experiment.schedules) > 1
    pool_digest = fingerprint(pool_ids)
    manifests: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        arm_recipe = full_recipe if arm.is_reference else fit_recipe
        if learner_factory is not None:
            learner = learner_factory(arm_recipe, catalog, arm)
        else:
            bars = []
            if progress:
                from alframe.models.progress import RunProgress

                # One bar per round's training (with ETA), cleared when the round line prints.
                bars = [RunProgress(f"{arm.label} seed {arm.seed} training", leave=False)]
            learner = LightningLearner(
                arm_recipe, catalog=catalog, finetune=arm.retrain == "finetune", callbacks=bars
            )
        described = arm.describe()
        described.pop("cumulative")
        name = (
            arm.label
            if arm.is_reference or not several_schedules
            else (f"{arm.label}/{arm.schedule.name}")
        )
        run = ActiveLearningRun(
            arm,
            learner,
            inputs,
            run_dir / RUNS_FOLDER / arm.folder_name,
            fingerprint={
                "recipe": _results_fingerprint(arm_recipe),
                "arm": described,
                "pool_ids": pool_digest,
            },
            resume=resume,
            primary_set=primary,
            tracker=round_tracker,
            hooks=hooks,
            progress=progress,
            label_prefix=f"[{name} seed {arm.seed}]",
            pool_agreement=experiment.pool_agreement,
        )
        manifests[arm.folder_name] = run.run()

    set_order = [primary, *(name for name in recipe.data.evaluate if name != primary)]
    result = summarize_experiment(run_dir, manifests, title=recipe.name, set_order=set_order)
    if tracker is not None:
        result.summary_run_id = _log_summary(tracker, run_dir, result, recipe, len(pool_ids))
        result.tracking_uri = tracker.uri
        result.ui_command = tracker.ui_command()
    result.seconds = time.perf_counter() - started
    if progress:
        print()
        print(markdown_table(result.table))
        print(f"learning curve: {result.files['learning_curve']}")
        print(f"results: {result.files['results']} and {result.files['summary']}")
        if result.ui_command:
            print(f"MLflow: {result.ui_command}")
    return result


def load_manifests(run_dir: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Committed round manifests of every run below an experiment folder (checksums verified,
    checkpoints not read)."""
    runs = Path(run_dir) / RUNS_FOLDER
    found: dict[str, list[dict[str, Any]]] = {}
    if runs.is_dir():
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            found[folder.name] = RunState(folder).completed_rounds(verify_checkpoints=False)
    return found


def summarize_experiment(
    run_dir: str | os.PathLike[str],
    manifests: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    title: str = "",
    set_order: Sequence[str] | None = None,
) -> ExperimentResult:
    """Write ``experiment_results.csv``, ``summary_table.csv``, ``summary.md`` and
    ``learning_curve.png`` from the round manifests (read from disk when not given).

    Args:
        run_dir: the experiment folder.
        manifests: run folder name → round manifests (default: :func:`load_manifests`).
        title: heading of the plot and of ``summary.md``.
        set_order: evaluation sets in display order (the primary set first).

    Returns:
        An :class:`ExperimentResult` without tracking details.
    """
    folder = Path(run_dir)
    if manifests is None:
        manifests = load_manifests(folder)
        if not manifests:
            raise StateError(
                f"{folder} holds no experiment rounds; run `alframe experiment --recipe R` first"
            )
    every = [m for runs in manifests.values() for m in runs]
    results = results_frame(every)
    table = summary_table(results, set_order)
    files = {
        "results": folder / "experiment_results.csv",
        "table": folder / "summary_table.csv",
        "summary": folder / "summary.md",
        "learning_curve": folder / "learning_curve.png",
    }
    atomic_write_text(files["results"], results.to_csv(index=False))
    atomic_write_text(files["table"], table.to_csv(index=False))
    plot_learning_curves(table, files["learning_curve"], title=title)
    seeds = sorted({int(s) for s in results["seed"].dropna()}) if len(results) else []
    header = [
        f"# {title or folder.name}: active-learning budget experiment",
        "",
        f"Runs: {len(manifests)}; seeds: {seeds}; rows: mean ± std over seeds of the mean Dice "
        "per image (% of the full-data Dice); AULC = area under Dice(n_labelled) divided by the "
        "n_labelled range.",
        "",
        "![learning curve](learning_curve.png)",
        "",
    ]
    atomic_write_text(files["summary"], "\n".join(header) + markdown_table(table) + "\n")
    return ExperimentResult(
        run_dir=folder,
        results=results,
        table=table,
        files=files,
        manifests={k: [dict(m) for m in v] for k, v in manifests.items()},
    )


def _metric_key(*parts: str) -> str:
    return "/".join(p.replace(" ", "_") for p in parts)


def _log_summary(
    tracker: Any, run_dir: Path, result: ExperimentResult, recipe: Recipe, pool_size: int
) -> str:
    """The experiment's summary run (reused on resume): plot, tables and headline metrics."""
    from alframe.loop.run_log import TRACKING_FILE, _read_runs, _record_run

    record = run_dir / TRACKING_FILE
    run_id = _read_runs(record).get(tracker.uri)
    experiment = _experiment(recipe)
    if run_id is None:
        run_id = tracker.start_run("summary", tags={"alframe.kind": "summary"})
        tracker.log_params(
            run_id,
            {
                "strategies": [s.display for s in experiment.strategies],
                "schedules": [s.name for s in experiment.schedules],
                "seeds": experiment.seeds,
                "retrain": experiment.retrain,
                "cold_start": experiment.cold_start,
                "steps_per_round": experiment.steps_per_round,
                "pool_size": pool_size,
                "full_reference": experiment.full_reference,
            },
        )
        _record_run(record, tracker.uri, run_id)
    status = "FAILED"
    try:
        metrics: dict[str, float] = {}
        for row in result.table.itertuples():
            label = str(row.label)
            if len(experiment.schedules) > 1 and label != REFERENCE_LABEL:
                label = f"{label}_{row.schedule}"
            base = _metric_key(str(row.eval_set), label)
            metrics[_metric_key(base, f"n{row.n_labelled}", "dice_mean")] = float(row.dice_mean)
            metrics[_metric_key(base, f"n{row.n_labelled}", "dice_std")] = float(row.dice_std)
            if row.pct_of_full is not None and np.isfinite(row.pct_of_full):
                metrics[_metric_key(base, f"n{row.n_labelled}", "pct_of_full")] = float(
                    row.pct_of_full
                )
            metrics[_metric_key(base, "aulc_mean")] = float(row.aulc_mean)
            agreement = getattr(row, "agreement_mean", math.nan)
            if agreement is not None and np.isfinite(agreement):
                # The same for every evaluation set: one key per strategy and budget.
                metrics[_metric_key("pool_agreement", label, f"n{row.n_labelled}")] = float(
                    agreement
                )
        tracker.log_metrics(run_id, metrics)
        for key in ("learning_curve", "table", "summary", "results"):
            tracker.log_artifact(run_id, result.files[key])
        status = "FINISHED"
    finally:
        tracker.end_run(run_id, status)
    return str(run_id)
