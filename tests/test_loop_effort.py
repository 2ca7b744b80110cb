"""Estimated correction effort: the measure, and the simulated oracle's effort per round."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
from test_loop_agreement import (
    POOL,
    SIZE,
    RecordingTracker,
    ShapeLearner,
    fake_prediction,
    run,
    square,
)

from alframe.loop.effort import correction_measures, round_effort
from alframe.loop.summary import results_frame


def test_measures_against_direct_counts_and_sklearn() -> None:
    rng = np.random.default_rng(3)
    pre = rng.integers(0, 2, size=(5, 9, 7))
    final = rng.integers(0, 2, size=(5, 9, 7))
    final[4] = 0
    pre[4] = 0  # no foreground in either: perfect agreement
    changed, dice = correction_measures(pre, final, 2)
    for k in range(5):
        assert changed[k] == pytest.approx(np.mean(pre[k] != final[k]))
        expected = 1.0 if k == 4 else f1_score(final[k].ravel(), pre[k].ravel())
        assert dice[k] == pytest.approx(expected)


def test_multiclass_dice_averages_present_classes_and_skips_ignored_pixels() -> None:
    pre = np.zeros((1, 4, 4), dtype=np.int64)
    final = np.zeros((1, 4, 4), dtype=np.int64)
    pre[0, :2, :2] = 1  # class 1: 4 px in pre, 2 shared with final
    final[0, :1, :2] = 1
    final[0, 3, 3] = -1  # unlabelled in final: changed, but not scored
    changed, dice = correction_measures(pre, final, 3, ignore_value=-1)
    assert changed[0] == pytest.approx(3 / 16)
    assert dice[0] == pytest.approx(2 * 2 / (4 + 2))  # class 2 absent from both: not averaged
    with pytest.raises(ValueError):
        correction_measures(pre[0], final[0], 2)


def test_round_effort_without_a_model_is_painting_the_foreground() -> None:
    truth = np.zeros((2, 4, 5), dtype=np.int64)
    truth[0, :2, :] = 1  # 10 of 20 pixels
    first = round_effort(None, truth, 2)
    assert first["pre_annotated"] is False and first["pre_dice_mean"] is None
    assert first["changed_fraction_sum"] == pytest.approx(0.5)
    second = round_effort(truth, truth, 2, previous=first)
    assert second["changed_fraction_sum"] == 0.0 and second["pre_dice_mean"] == 1.0
    assert second["cumulative"] == pytest.approx(0.5)


def truth_of(item: str) -> np.ndarray:
    k = int(item.split("/")[1])
    return square(SIZE, 1, 1, 2 + k % 4).astype(np.int64)


class TruthLearner(ShapeLearner):
    """The fake learner plus the ground truth the effort model reads."""

    def true_labels(self, ids: Sequence[str]) -> tuple[np.ndarray, int]:
        return np.stack([truth_of(i) for i in ids]), 2


def test_simulated_rounds_record_the_correction_of_the_previous_model(tmp_path: Path) -> None:
    tracker = RecordingTracker()
    manifests = run(tmp_path, TruthLearner(), tracker=tracker)
    total = 0.0
    for k, manifest in enumerate(manifests):
        picked = [s["id"] for s in manifest["selected"]]
        if k == 0:
            pre = [np.zeros((SIZE, SIZE), dtype=np.int64) for _ in picked]
        else:
            n_before = manifests[k - 1]["n_labelled"]
            pre = [fake_prediction(i, n_before) for i in picked]
        changed = [float(np.mean(p != truth_of(i))) for p, i in zip(pre, picked, strict=True)]
        total += sum(changed)
        effort = manifest["effort"]
        assert effort["n_items"] == len(picked)
        assert effort["pre_annotated"] is (k > 0)
        assert effort["changed_fraction_sum"] == pytest.approx(sum(changed))
        assert effort["cumulative"] == pytest.approx(total)
        assert tracker.logged[k]["effort_cumulative"] == pytest.approx(total)
    frame = results_frame(manifests)
    assert list(frame["estimated_effort"]) == pytest.approx(
        [m["effort"]["cumulative"] for m in manifests]
    )
    for previous, manifest in itertools.pairwise(manifests):
        assert manifest["effort"]["cumulative"] > previous["effort"]["cumulative"]


def test_learners_without_ground_truth_record_no_effort(tmp_path: Path) -> None:
    manifests = run(tmp_path, ShapeLearner())
    assert all(m["effort"] is None for m in manifests)
    assert len(POOL) > manifests[-1]["n_labelled"]
