"""Rank a set of candidate models with several rankers, and validate against labels if given.

:func:`rank_models` runs every ranker on every model (streamed in batches, a progress bar per
model), :func:`validate` adds true Dice and correlations, :func:`write_report` writes CSV / JSON /
a scatter plot. The CLI (``alframe rank``) and the benchmark are thin layers over these.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from alframe._atomic import atomic_write_text
from alframe.errors import ConfigError
from alframe.ranking.guard import DegenerateGuard, PredictionProfile, ProfileAccumulator
from alframe.ranking.images import TargetImages
from alframe.ranking.predictors import Predictor
from alframe.ranking.rankers import ConsensusRanker, Ranker, RankerResult
from alframe.ranking.validation import (
    Correlation,
    correlate,
    plot_scores,
    true_dice,
    true_instance_map,
)

if TYPE_CHECKING:
    from alframe.inference import Hardware
    from alframe.parallel import DeviceSpec

_T = TypeVar("_T")

__all__ = ["RankingReport", "placed_on", "rank_models", "validate", "write_report"]


@dataclass
class RankingReport:
    """Scores of every (ranker, model) pair, plus validation when labels were given.

    Attributes:
        models: model names in input order.
        rankers: ranker labels in input order.
        results: ranker label → model name → result.
        skipped: ``(ranker, model, reason)`` for pairs that could not be scored (e.g. a grey-box
            ranker and a black-box model).
        inference_seconds: model → seconds of one plain inference pass over the target images
            (measured only when asked).
        dice: model → mean true Dice (after :func:`validate`).
        per_image_dice: model → (N,) true Dice.
        correlations: ranker → {"pearson", "spearman", "kendall"} (after :func:`validate`).
            Spearman and Kendall compare the true performance with the order the report gives
            (degenerate models below the others); Pearson uses the raw scores.
        profiles: model → its clean-prediction profile (when the guard ran).
        degenerate: model → why the guard flagged it; flagged models are ranked below every
            unflagged one by every ranker.
        primary: the ranker the printed table is sorted by (the first requested one).
    """

    models: list[str]
    rankers: list[str]
    results: dict[str, dict[str, RankerResult]] = field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    inference_seconds: dict[str, float] = field(default_factory=dict)
    dice: dict[str, float] = field(default_factory=dict)
    per_image_dice: dict[str, np.ndarray] = field(default_factory=dict)
    correlations: dict[str, dict[str, Correlation]] = field(default_factory=dict)
    profiles: dict[str, PredictionProfile] = field(default_factory=dict)
    degenerate: dict[str, str] = field(default_factory=dict)
    primary: str | None = None

    def scores(self, ranker: str) -> dict[str, float]:
        """model → dataset score of one ranker (scored models only)."""
        return {m: r.dataset_score for m, r in self.results.get(ranker, {}).items()}

    def ranked(self, ranker: str) -> list[tuple[str, float]]:
        """``(model, score)`` best first: unflagged models by score, then the models the
        degenerate-model guard flagged (by score), then models without a score."""
        items = list(self.results.get(ranker, {}).values())
        items.sort(
            key=lambda r: (
                not math.isfinite(r.dataset_score),
                r.model in self.degenerate,
                -r.goodness if math.isfinite(r.goodness) else 0.0,
            )
        )
        return [(r.model, r.dataset_score) for r in items]

    def order(self, ranker: str | None = None) -> list[str]:
        """Every model, best first by ``ranker`` (default: the primary one); models the ranker
        could not score (e.g. black-box models for a grey-box ranker) come last."""
        ranker = ranker or self.primary or (self.rankers[0] if self.rankers else "")
        order = [m for m, _ in self.ranked(ranker)]
        return order + [m for m in self.models if m not in order]

    def unscored(self, ranker: str) -> dict[str, str]:
        """model → why ``ranker`` gave it no score (never silent)."""
        reasons = {m: why for r, m, why in self.skipped if r == ranker}
        for model, result in self.results.get(ranker, {}).items():
            if not math.isfinite(result.dataset_score):
                reasons[model] = "no foreground in any clean or perturbed prediction"
        return reasons

    def table(self) -> list[dict[str, Any]]:
        """One row per model, in the primary ranker's order: every ranker's score and rank
        (1 = best), the guard's verdict and profile, and the true Dice when known."""
        rows: dict[str, dict[str, Any]] = {m: {"model": m} for m in self.order()}
        for ranker in self.rankers:
            for position, (model, score) in enumerate(self.ranked(ranker), start=1):
                rows[model][ranker] = score
                rows[model][f"{ranker}:rank"] = position if math.isfinite(score) else None
        for model, row in rows.items():
            row["degenerate"] = self.degenerate.get(model, "")
            profile = self.profiles.get(model)
            if profile is not None:
                row["foreground_fraction"] = profile.foreground_fraction
                row["input_dependence"] = profile.input_dependence
        for model, value in self.dice.items():
            rows[model]["true_dice"] = value
        return list(rows.values())

    def format(self, primary: str | None = None) -> str:
        """A plain-text table sorted by ``primary`` (default: :attr:`primary`, else the first
        ranker), best first; degenerate models are marked ``!`` with their reason below."""
        if not self.rankers:
            return "(no rankers)"
        primary = primary or self.primary or self.rankers[0]
        order = self.order(primary)
        columns = [primary] + [r for r in self.rankers if r != primary]
        columns += ["true_dice"] if self.dice else []
        width = max([len(m) for m in self.models] + [5])
        header = f"{'rank':>4}  {'model':<{width}}  " + "  ".join(f"{c:>16}" for c in columns)
        lines = [f"sorted by {primary} (best first)", header, "-" * len(header)]
        for position, model in enumerate(order, start=1):
            cells = []
            for column in columns:
                if column == "true_dice":
                    value = self.dice.get(model, math.nan)
                else:
                    result = self.results.get(column, {}).get(model)
                    value = result.dataset_score if result is not None else math.nan
                cells.append(f"{value:>16.4f}" if math.isfinite(value) else f"{'-':>16}")
            mark = "!" if model in self.degenerate else " "
            lines.append(f"{position:>3}{mark}  {model:<{width}}  " + "  ".join(cells))
        if self.degenerate:
            lines.append("")
            lines.append("! degenerate (ranked below every other model by every ranker):")
            lines.extend(f"  {m}: {why}" for m, why in self.degenerate.items())
        for ranker in self.rankers:
            for model, why in self.unscored(ranker).items():
                if model not in self.degenerate:
                    lines.append(f"not scored by {ranker}: {model} ({why})")
        return "\n".join(lines)

    def format_correlations(self) -> str:
        """Pearson / Spearman / Kendall (with p-values) per ranker, as plain text."""
        lines = [f"{'ranker':<26} {'pearson':>16} {'spearman':>16} {'kendall':>16}"]
        for ranker, values in self.correlations.items():
            cells = [
                f"{values[m].statistic:>7.3f} (p={values[m].p_value:.3f})"
                if math.isfinite(values[m].statistic)
                else f"{'-':>16}"
                for m in ("pearson", "spearman", "kendall")
            ]
            lines.append(f"{ranker:<26} " + " ".join(f"{c:>16}" for c in cells))
        return "\n".join(lines)


@contextmanager
def placed_on(predictor: Predictor, devices: DeviceSpec | None) -> Iterator[None]:
    """Run a block with a torch model on ``devices`` and put it back on the CPU afterwards
    (``None``: leave it where it is; ONNX models stay on the CPU)."""
    if devices is None or predictor.array_input:
        yield
        return
    predictor.place(devices)
    try:
        yield
    finally:
        predictor.place("cpu")


def rank_models(
    predictors: Sequence[Predictor],
    images: TargetImages,
    rankers: Sequence[Ranker],
    batch_size: int = 16,
    progress: bool = True,
    time_inference: bool = False,
    devices: DeviceSpec | None = None,
    guard: DegenerateGuard | None = None,
    hardware: Hardware | None = None,
) -> RankingReport:
    """Score every model with every ranker, after the degenerate-model guard.

    A rank aggregate (:class:`~alframe.ranking.ConsensusRanker`) is computed from its
    components, which are scored like any other ranker (once, also when they were requested on
    their own) and appear as columns of the report.

    Args:
        predictors: the candidates (names must be unique).
        images: target images (N).
        rankers: the rankers; the first is the primary one (the table is sorted by it); a
            grey-box ranker skips black-box models (listed in ``skipped``).
        batch_size: images per forward pass.
        progress: show a progress bar per model.
        time_inference: also time the plain inference pass per model (for cost ratios).
        devices: where to run the models while they are scored (``"auto"``: every visible
            GPU, else the CPU; a device; a list; see
            :func:`alframe.inference.hardware_for_devices`), through Lightning's predict loop:
            each process (one per device) takes whole models, one at a time, so a large zoo
            never has to fit on the GPUs at once, and every model goes back to the CPU
            afterwards. A model's scores are those of the one-process run whatever the
            number of devices. ``None`` (and no ``hardware``): run the models where they are,
            in this process.
        guard: the degenerate-model thresholds (default :class:`DegenerateGuard`); its
            profile costs one plain inference pass per model.
        hardware: overrides ``devices`` with Lightning's own keys (accelerator, devices,
            strategy, num_nodes, precision).

    Returns:
        The report.

    Raises:
        ConfigError: duplicate model or ranker names, or no images.
    """
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"two candidate models share the name(s) {duplicates}; rename the files")
    labels = [r.describe() for r in rankers]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"the same ranker is listed twice: {labels}")
    if len(images) == 0:
        raise ConfigError("no target images to rank on")
    guard = guard or DegenerateGuard()
    # Rank aggregates are computed from their components: score every distinct base ranker once
    # (keyed by its label; a component whose label is taken by a differently set ranker gets
    # its own key, so the aggregate never silently uses someone else's settings).
    components: dict[str, list[str]] = {}
    base: dict[str, Ranker] = {r.describe(): r for r in rankers if not r.zoo_level}
    for ranker in rankers:
        if isinstance(ranker, ConsensusRanker):
            keys = []
            for part in ranker.components_for(list(predictors)):
                key = part.describe()
                if key in base and not _same_settings(base[key], part):
                    key = f"{ranker.describe()}:{key}"
                base.setdefault(key, part)
                keys.append(key)
            components[ranker.describe()] = keys
    columns = labels + [key for key in base if key not in labels]
    report = RankingReport(models=names, rankers=columns, primary=labels[0] if labels else None)
    score = partial(
        _score_model,
        images=images,
        base=base,
        guard=guard,
        batch_size=batch_size,
        progress=progress,
        time_inference=time_inference,
    )
    outcomes = _over_models(predictors, score, devices, hardware)
    for predictor, outcome in zip(predictors, outcomes, strict=True):
        report.skipped.extend(outcome.skipped)
        if outcome.seconds is not None:
            report.inference_seconds[predictor.name] = outcome.seconds
        report.profiles[predictor.name] = outcome.profile
        if outcome.degenerate is not None:
            report.degenerate[predictor.name] = outcome.degenerate
        for key, result in outcome.results.items():
            report.results.setdefault(key, {})[predictor.name] = result
    for ranker in rankers:
        if isinstance(ranker, ConsensusRanker):
            scored = [report.results.get(key, {}) for key in components[ranker.describe()]]
            report.results[ranker.describe()] = ranker.combine(
                scored, len(images), set(report.degenerate)
            )
    return report


@dataclass
class _ModelOutcome:
    """What :func:`rank_models` learns about one candidate (travels between processes)."""

    profile: PredictionProfile
    degenerate: str | None
    results: dict[str, RankerResult]
    skipped: list[tuple[str, str, str]]
    seconds: float | None


def _score_model(
    predictor: Predictor,
    images: TargetImages,
    base: dict[str, Ranker],
    guard: DegenerateGuard,
    batch_size: int,
    progress: bool,
    time_inference: bool,
) -> _ModelOutcome:
    """The guard's profile and every usable ranker's result for one model."""
    usable = {key: r for key, r in base.items() if r.supports(predictor)}
    skipped = [
        (key, predictor.name, "needs grey-box access (black-box model)")
        for key in base
        if key not in usable
    ]
    total = len(images) * (len(usable) + 1)
    bar = _progress_bar(total, predictor.name, progress)
    results: dict[str, RankerResult] = {}
    with closing(bar):
        accumulator = ProfileAccumulator()
        started = time.perf_counter()
        for _, batch in images.batches(batch_size):
            accumulator.add(predictor.predict_proba(batch))
            bar.update(batch.shape[0])
        seconds = time.perf_counter() - started if time_inference else None
        profile = accumulator.profile()
        for key, ranker in usable.items():
            results[key] = ranker.score(predictor, images, batch_size, progress=bar.update)
    return _ModelOutcome(profile, guard.check(profile), results, skipped, seconds)


class _DeviceProbe(nn.Module):
    """What Lightning moves onto each process's device; the candidates follow it there."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))


def _model_step(
    probe: nn.Module,
    positions: torch.Tensor,
    predictors: Sequence[Predictor],
    function: Callable[[Predictor], _T],
) -> list[_T]:
    """The predict step over candidates: each one on this process's device, then home again."""
    device = str(probe.anchor.device)
    out = []
    for position in positions.tolist():
        predictor = predictors[int(position)]
        with torch.inference_mode(False), placed_on(predictor, device):
            out.append(function(predictor))
    return out


def _over_models(
    predictors: Sequence[Predictor],
    function: Callable[[Predictor], _T],
    devices: DeviceSpec | None,
    hardware: Hardware | None,
) -> list[_T]:
    """``function(predictor)`` for every candidate, in order.

    With neither ``devices`` nor ``hardware`` the models run where they are, in this process.
    Otherwise the candidates are the items of Lightning's predict loop
    (:func:`alframe.inference.predict_rows`): each process scores whole models on its own device,
    one at a time, and rank 0 puts the outcomes back in input order. A model is scored by
    exactly the code and batches of the one-process run, so its scores (CTE's perturbations
    included) do not depend on how many processes ran the zoo.
    """
    if devices is None and hardware is None:
        return [function(p) for p in predictors]
    from alframe.inference import hardware_for_devices, predict_rows

    target = hardware if hardware is not None else hardware_for_devices(devices)
    step = partial(_model_step, predictors=list(predictors), function=function)
    outcomes, _ = predict_rows(
        _DeviceProbe(), step, list(range(len(predictors))), target, batch_size=1
    )
    return list(outcomes)


def _same_settings(first: Ranker, second: Ranker) -> bool:
    """Whether two rankers would give the same scores (same class and plain settings)."""

    def settings(ranker: Ranker) -> list[tuple[str, str]]:
        return sorted((k, repr(v)) for k, v in vars(ranker).items() if not callable(v))

    return type(first) is type(second) and settings(first) == settings(second)


def validate(
    report: RankingReport,
    predictors: Sequence[Predictor],
    images: TargetImages,
    batch_size: int = 16,
    n_resamples: int = 1000,
    seed: int = 0,
    truth: str = "dice",
    devices: DeviceSpec | None = None,
    hardware: Hardware | None = None,
) -> RankingReport:
    """Add true performance per model and the correlations of every ranker with it.

    Args:
        report: from :func:`rank_models` (updated in place and returned).
        predictors: the same candidates.
        images: the target images, with labels.
        batch_size: images per forward pass.
        n_resamples: permutations for the p-values.
        seed: seed of the permutations.
        truth: ``"dice"`` (semantic labels) or ``"map"`` (instance label maps: mAP@0.5:0.95 of
            the connected components of the prediction, as for CTE-ARS). Stored in
            ``report.dice`` either way.
        devices: where each model runs while it is evaluated (see :func:`rank_models`).
        hardware: overrides ``devices`` (see :func:`rank_models`).

    Raises:
        DataError: the images have no labels.
        ConfigError: unknown ``truth``.
    """
    if truth not in ("dice", "map"):
        raise ConfigError(f"truth must be 'dice' or 'map', got {truth!r}")
    evaluate = partial(_true_performance, images=images, batch_size=batch_size, truth=truth)
    for predictor, per_image in zip(
        predictors, _over_models(predictors, evaluate, devices, hardware), strict=True
    ):
        report.per_image_dice[predictor.name] = per_image
        report.dice[predictor.name] = float(per_image.mean())
    for ranker in report.rankers:
        results = report.results.get(ranker, {})
        models = [m for m, r in results.items() if math.isfinite(r.goodness) and m in report.dice]
        if len(models) < 3:
            continue
        y = [report.dice[m] for m in models]
        # Rank correlations judge the order the report gives (degenerate models last); Pearson
        # can only use the raw scores.
        position = {m: i for i, (m, _) in enumerate(report.ranked(ranker))}
        placed = correlate([-position[m] for m in models], y, n_resamples=n_resamples, seed=seed)
        raw = correlate([results[m].goodness for m in models], y, n_resamples, seed)
        report.correlations[ranker] = {
            "pearson": raw["pearson"],
            "spearman": placed["spearman"],
            "kendall": placed["kendall"],
        }
    return report


def _true_performance(
    predictor: Predictor, images: TargetImages, batch_size: int, truth: str
) -> np.ndarray:
    if truth == "map":
        return true_instance_map(predictor, images, batch_size=batch_size)
    return true_dice(predictor, images, batch_size)


def write_report(report: RankingReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``ranking.csv``, ``ranking.json``, ``per_image.csv`` and, with labels,
    ``correlations.csv`` and ``scatter.png``.

    Returns:
        name → written file.
    """
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    table = pd.DataFrame(report.table())
    files["ranking.csv"] = out / "ranking.csv"
    table.to_csv(files["ranking.csv"], index=False)
    per_image_rows = []
    for ranker in report.rankers:
        for model, result in report.results.get(ranker, {}).items():
            for index, value in enumerate(result.per_image):
                per_image_rows.append(
                    {"ranker": ranker, "model": model, "image": index, "score": value}
                )
    files["per_image.csv"] = out / "per_image.csv"
    pd.DataFrame(per_image_rows).to_csv(files["per_image.csv"], index=False)
    payload: dict[str, Any] = {
        "models": report.models,
        "rankers": {
            ranker: {
                "higher_is_better": next(iter(by_model.values())).higher_is_better,
                "info": next(iter(by_model.values())).info,
                "ranking": [{"model": m, "score": _finite(s)} for m, s in report.ranked(ranker)],
                "seconds": {m: r.seconds for m, r in by_model.items()},
                "n_scored": {m: r.n_scored for m, r in by_model.items()},
            }
            for ranker in report.rankers
            if (by_model := report.results.get(ranker))
        },
        "primary": report.primary,
        "order": report.order() if report.rankers else [],
        "degenerate": report.degenerate,
        "profiles": {
            m: {
                "foreground_fraction": _finite(p.foreground_fraction),
                "images_with_foreground": _finite(p.images_with_foreground),
                "input_dependence": _finite(p.input_dependence),
            }
            for m, p in report.profiles.items()
        },
        "skipped": [list(s) for s in report.skipped],
        "inference_seconds": report.inference_seconds,
        "true_dice": report.dice,
        "correlations": {
            ranker: {
                m: {"statistic": _finite(c.statistic), "p_value": _finite(c.p_value)}
                for m, c in values.items()
            }
            for ranker, values in report.correlations.items()
        },
    }
    files["ranking.json"] = out / "ranking.json"
    atomic_write_text(files["ranking.json"], json.dumps(payload, indent=2))
    if report.correlations:
        rows = [
            {
                "ranker": ranker,
                "method": m,
                "statistic": c.statistic,
                "p_value": c.p_value,
                "n": c.n,
            }
            for ranker, values in report.correlations.items()
            for m, c in values.items()
        ]
        files["correlations.csv"] = out / "correlations.csv"
        pd.DataFrame(rows).to_csv(files["correlations.csv"], index=False)
        files["scatter.png"] = plot_scores(
            {r: report.scores(r) for r in report.correlations},
            report.dice,
            out / "scatter.png",
            report.correlations,
        )
    return files


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _NoBar:
    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def _progress_bar(total: int, label: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="img", leave=False)
