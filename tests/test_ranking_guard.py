"""Degenerate-model guard: the prediction profile, the flags, and flagged models ranked last."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alframe.errors import ConfigError
from alframe.ranking import (
    DegenerateGuard,
    PredictionProfile,
    Predictor,
    ProfileAccumulator,
    TargetImages,
    create_ranker,
    rank_models,
    validate,
    write_report,
)

SIZE = 32


def _images(n: int = 6, seed: int = 0) -> TargetImages:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, SIZE, SIZE)).astype(np.float32)
    return TargetImages.from_array(images, labels=(images[:, 0] > 0).astype(np.int64))


def _array(images: TargetImages) -> np.ndarray:
    assert images.images is not None
    return images.images


def _binary(fg: torch.Tensor) -> torch.Tensor:
    return torch.cat([1 - fg, fg], dim=1)


def _threshold(offset: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A mask that follows the input: the labels are ``x > 0``."""

    def f(batch: torch.Tensor) -> torch.Tensor:
        return _binary(torch.sigmoid(8 * (batch[:, :1] - offset)))

    return f


def _constant(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(batch: torch.Tensor) -> torch.Tensor:
        return _binary(torch.full((batch.shape[0], 1, SIZE, SIZE), value))

    return f


def _disk(batch: torch.Tensor) -> torch.Tensor:
    """The same probability map for every input."""
    fg = torch.zeros(batch.shape[0], 1, SIZE, SIZE)
    fg[..., 8:24, 8:24] = 0.95
    return _binary(fg + 0.02)


def _fixed_blob(batch: torch.Tensor) -> torch.Tensor:
    """Probabilities follow the input, but the argmax mask is one fixed blob."""
    soft = torch.sigmoid(batch[:, :1])
    inside = torch.zeros_like(soft, dtype=torch.bool)
    inside[..., 4:14, 18:30] = True
    return _binary(torch.where(inside, 0.6 + 0.3 * soft, 0.4 * soft))


MODELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "follows": _threshold(0.0),
    "all-fg": _constant(0.9),
    "all-bg": _constant(0.1),
    "disk": _disk,
    "blob": _fixed_blob,
}
REASONS = {
    "all-fg": "all foreground",
    "all-bg": "all background",
    "disk": "input-independent",
    "blob": "input-independent",
}


def _profile(proba: np.ndarray, splits: list[int]) -> PredictionProfile:
    accumulator = ProfileAccumulator()
    for chunk in np.split(proba, np.cumsum(splits)[:-1]):
        accumulator.add(chunk)
    return accumulator.profile()


def test_profile_matches_numpy_over_all_masks_at_once() -> None:
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([3.0, 1.0, 1.0], size=(7, 12, 10)).transpose(0, 3, 1, 2)
    proba[2, 0] = 1.0  # image 2 is all background
    proba[4, :, :6] = np.array([0.1, 0.8, 0.1])[:, None, None]  # a fixed region of class 1
    foreground = proba.argmax(axis=1) != 0
    q = foreground.mean(axis=0)
    f = q.mean()
    expected = PredictionProfile(
        n_images=7,
        foreground_fraction=float(foreground.mean()),
        images_with_foreground=6 / 7,
        # n / (n - 1): the unbiased across-image variance.
        input_dependence=float((q * (1 - q)).mean() * 7 / 6 / (f * (1 - f))),
    )
    whole = _profile(proba, [7])
    assert whole.n_images == expected.n_images
    for field in ("foreground_fraction", "images_with_foreground", "input_dependence"):
        assert getattr(whole, field) == pytest.approx(getattr(expected, field)), field
    # Batch splits change nothing (integer counts).
    assert _profile(proba, [2, 4, 1]) == whole
    assert _profile(proba, [1] * 7) == whole


def test_profile_edge_cases() -> None:
    empty = ProfileAccumulator().profile()
    assert empty.n_images == 0 and math.isnan(empty.foreground_fraction)
    assert DegenerateGuard().check(empty) is None
    full = np.zeros((3, 2, 4, 4))
    full[:, 1] = 1.0
    profile = _profile(full, [3])
    assert profile.foreground_fraction == 1.0 and math.isnan(profile.input_dependence)
    accumulator = ProfileAccumulator()
    accumulator.add(full)
    with pytest.raises(ConfigError, match="one size"):
        accumulator.add(np.zeros((1, 2, 5, 4)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_degenerate_models_are_flagged_with_their_reason(name: str) -> None:
    proba = Predictor.from_function(MODELS[name]).predict_proba(_array(_images()))
    reason = DegenerateGuard().check(_profile(proba, [4, 2]))
    if name in REASONS:
        assert reason is not None and reason.startswith(REASONS[name]), reason
    else:
        assert reason is None


def test_one_target_image_does_not_flag_a_model_that_follows_the_input() -> None:
    proba = Predictor.from_function(_threshold()).predict_proba(_array(_images(1)))
    assert DegenerateGuard().check(_profile(proba, [1])) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_foreground": 0.5, "max_foreground": 0.4},
        {"max_foreground": 1.5},
        {"min_foreground": -0.1},
        {"min_input_dependence": 1.0},
        {"min_input_dependence": -0.01},
        {"max_foreground": math.nan},
    ],
)
def test_bad_guard_thresholds_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="degenerate guard"):
        DegenerateGuard(**kwargs)


@pytest.fixture(scope="module")
def guarded() -> tuple[list[Predictor], TargetImages]:
    models = {
        "t0": _threshold(0.0),
        "t05": _threshold(0.5),
        "t1": _threshold(1.0),
        "all-fg": MODELS["all-fg"],
        "disk": MODELS["disk"],
        "all-bg": MODELS["all-bg"],
    }
    return [Predictor.from_function(f, name) for name, f in models.items()], _images(4)


def test_flagged_models_rank_below_every_unflagged_model(
    guarded: tuple[list[Predictor], TargetImages], tmp_path: Path
) -> None:
    predictors, images = guarded
    report = rank_models(predictors, images, [create_ranker("cte-nhd")], progress=False)
    label = "cte-nhd[gauss]"
    assert set(report.degenerate) == {"all-fg", "disk", "all-bg"}
    scores = report.scores(label)
    # Perfectly consistent, so the raw scores put the degenerate models first.
    assert scores["all-fg"] == scores["disk"] == 1.0
    assert max(scores[m] for m in ("t0", "t05", "t1")) < 1.0
    assert math.isnan(scores["all-bg"])
    order = report.order()
    assert set(order[:3]) == {"t0", "t05", "t1"}
    assert set(order[3:5]) == {"all-fg", "disk"}
    assert order[5] == "all-bg"  # no score at all: after the flagged, scored ones
    assert [m for m, _ in report.ranked(label)] == order
    assert "all-bg" in report.unscored(label)

    # Without the guard's thresholds the raw order comes back.
    lenient = DegenerateGuard(max_foreground=1.0, min_foreground=0.0, min_input_dependence=0.0)
    raw = rank_models(predictors, images, [create_ranker("cte-nhd")], progress=False, guard=lenient)
    assert raw.degenerate == {}
    assert set(raw.order()[:2]) == {"all-fg", "disk"}

    text = report.format()
    lines = {line.split()[1]: line for line in text.splitlines() if line[:3].strip().isdigit()}
    for model in order:
        flagged = model in report.degenerate
        assert (lines[model][3] == "!") == flagged, lines[model]
    assert "! degenerate" in text
    for model, why in report.degenerate.items():
        assert f"{model}: {why}" in text

    table = report.table()
    assert [row["model"] for row in table] == order
    for row in table:
        assert row["degenerate"] == report.degenerate.get(row["model"], "")
        profile = report.profiles[row["model"]]
        assert row["foreground_fraction"] == profile.foreground_fraction
    files = write_report(report, tmp_path)
    csv = pd.read_csv(files["ranking.csv"], keep_default_na=False)
    assert {"degenerate", "foreground_fraction", "input_dependence"} <= set(csv.columns)
    flagged_csv = {m: why for m, why in zip(csv["model"], csv["degenerate"], strict=True) if why}
    assert flagged_csv == report.degenerate
    payload = json.loads(files["ranking.json"].read_text())
    assert payload["degenerate"] == report.degenerate
    assert payload["order"] == order
    assert payload["primary"] == label
    assert set(payload["profiles"]) == {p.name for p in predictors}
    assert payload["profiles"]["disk"]["input_dependence"] == pytest.approx(0.0)
    assert payload["profiles"]["all-fg"]["input_dependence"] is None  # NaN -> null


def test_validate_rank_correlations_use_the_guarded_order(
    guarded: tuple[list[Predictor], TargetImages],
) -> None:
    from scipy import stats

    predictors, images = guarded
    report = rank_models(predictors, images, [create_ranker("cte-nhd")], progress=False)
    validate(report, predictors, images, n_resamples=50)
    label = "cte-nhd[gauss]"
    results = report.results[label]
    scored = [m for m in report.order() if math.isfinite(results[m].goodness)]
    assert len(scored) == 5  # all-bg has no score
    dice = [report.dice[m] for m in scored]
    placed = [-i for i in range(len(scored))]  # best first
    raw = [results[m].goodness for m in scored]
    correlations = report.correlations[label]
    assert correlations["spearman"].statistic == pytest.approx(stats.spearmanr(placed, dice)[0])
    assert correlations["kendall"].statistic == pytest.approx(stats.kendalltau(placed, dice)[0])
    assert correlations["pearson"].statistic == pytest.approx(stats.pearsonr(raw, dice)[0])
    # The guard changes the verdict: the raw scores correlate differently.
    assert stats.spearmanr(raw, dice)[0] != pytest.approx(correlations["spearman"].statistic)


def test_a_flagged_model_cannot_reorder_the_consensus_of_the_others() -> None:
    from alframe.ranking import consensus_places

    # Two components disagree on a and b; a degenerate d sits between them in one component
    # and below both in the other. Ranked with d, a and b tie or swap; ranked without it they
    # keep the order the two components give together.
    first = {"a": 0.9, "d": 0.8, "b": 0.7}
    second = {"a": 0.1, "b": 0.2, "d": 0.0}
    plain = [consensus_places(first), consensus_places(second)]
    guarded = [consensus_places(first, {"d"}), consensus_places(second, {"d"})]
    mean = {m: np.mean([p[m] for p in plain]) for m in first}
    mean_guarded = {m: np.mean([p[m] for p in guarded]) for m in first}
    assert mean["a"] > mean["b"]  # d pushes b down in the first component only
    assert mean_guarded["a"] == mean_guarded["b"] == 0.5  # a and b: one win each
    assert guarded[0]["d"] == guarded[1]["d"] == 1.0  # d is placed among the flagged alone


def test_display_names_tell_files_of_several_runs_apart() -> None:
    from alframe.ranking import display_names

    assert display_names(["zoo/a/m1.ckpt", "zoo/b/m2.ckpt"]) == ["m1", "m2"]
    assert display_names(["z/run_a/epoch_001.ckpt", "z/run_b/epoch_001.ckpt", "z/run_b/e2.pt"]) == [
        "run_a/epoch_001",
        "run_b/epoch_001",
        "run_b/e2",
    ]
    assert display_names(["p/a/epoch_001.ckpt", "q/a/epoch_001.ckpt"]) == [
        "p/a/epoch_001",
        "q/a/epoch_001",
    ]
    assert display_names(["runs/x/checkpoints/best.ckpt"]) == ["x/best"]
