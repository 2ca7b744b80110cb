"""The label-free stopping signal: agreement between consecutive models on the unlabelled pool.

The agreement function is checked against a direct per-pixel count on hand-made masks; the loop
runs with a fake learner (no torch) whose predictions change with its training-set size in a
known way, so every value is checked against an independent computation, through resumes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from alframe.loop.active import ActiveLearningRun, ArmSpec, LoopHooks, PoolInputs, RoundTracker
from alframe.loop.learner import FitInfo
from alframe.loop.pool_agreement import (
    POOL_PREDICTIONS_FILE,
    label_agreement,
    predict_label_maps,
    read_pool_predictions,
    write_pool_predictions,
)
from alframe.loop.run_log import round_metrics
from alframe.loop.schedule import BudgetSchedule
from alframe.loop.summary import markdown_table, results_frame, summary_table

# -- the agreement function --------------------------------------------------------------------


def direct_dice(first: np.ndarray, second: np.ndarray, num_classes: int) -> float:
    """Foreground Dice of one item by counting pixels one at a time (the reference)."""
    scores = []
    for cls in range(1, num_classes):
        both = in_first = in_second = 0
        for a, b in zip(first.ravel().tolist(), second.ravel().tolist()):
            in_first += a == cls
            in_second += b == cls
            both += a == cls and b == cls
        scores.append(1.0 if in_first + in_second == 0 else 2 * both / (in_first + in_second))
    return sum(scores) / len(scores)


def square(size: int, top: int, left: int, side: int, value: int = 1) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + side, left : left + side] = value
    return mask


def test_binary_agreement_matches_a_direct_count() -> None:
    empty = np.zeros((8, 8), dtype=np.uint8)
    pairs = [
        (square(8, 0, 0, 4), square(8, 2, 2, 4)),  # 4 px overlap: 2·4 / (16 + 16)
        (square(8, 1, 1, 5), square(8, 1, 1, 5)),  # identical
        (square(8, 0, 0, 3), square(8, 5, 5, 3)),  # disjoint
        (empty, empty),  # both predict nothing: they agree
        (empty, square(8, 3, 3, 2)),  # one predicts nothing
    ]
    previous = np.stack([a for a, _ in pairs])
    current = np.stack([b for _, b in pairs])
    scores = label_agreement(previous, current, 2)
    assert scores.shape == (5,) and scores.dtype == np.float64
    expected = [direct_dice(a, b, 2) for a, b in pairs]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores, [8 / 32, 1.0, 0.0, 1.0, 0.0], rtol=0, atol=1e-12)
    # Symmetric: which model stands in for the ground truth does not matter.
    np.testing.assert_array_equal(label_agreement(current, previous, 2), scores)


def test_multiclass_agreement_averages_foreground_classes() -> None:
    rng = np.random.default_rng(7)
    previous = rng.integers(0, 4, size=(6, 9, 7)).astype(np.uint8)
    current = previous.copy()
    flip = rng.random(current.shape) < 0.3
    current[flip] = rng.integers(0, 4, size=int(flip.sum()))
    # Item 0: class 3 appears in neither prediction (counts 1); item 1: nothing but background.
    previous[0][previous[0] == 3] = 1
    current[0][current[0] == 3] = 2
    previous[1] = 0
    current[1] = 0
    scores = label_agreement(previous, current, 4)
    expected = [direct_dice(a, b, 4) for a, b in zip(previous, current)]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    assert scores[1] == 1.0
    # By hand: item 0 is (dice_1 + dice_2 + 1) / 3.
    a, b = previous[0], current[0]
    dice = [2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c)) for c in (1, 2)]
    assert scores[0] == pytest.approx((dice[0] + dice[1] + 1.0) / 3)
    assert label_agreement(previous[:0], current[:0], 4).shape == (0,)


def test_agreement_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match=r"both be \(N, H, W\)"):
        label_agreement(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), 2)
    with pytest.raises(ValueError, match=r"both be \(N, H, W\)"):
        label_agreement(np.zeros((4, 4)), np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="at least 2"):
        label_agreement(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), 1)


def test_label_maps_are_the_argmax_predicted_in_chunks() -> None:
    rng = np.random.default_rng(0)
    table = {f"i{k}": rng.random((3, 5, 4)).astype(np.float32) for k in range(7)}
    calls: list[list[str]] = []

    def predict_proba(ids: Sequence[str]) -> np.ndarray:
        calls.append(list(ids))
        return np.stack([table[i] for i in ids])

    ids = [f"i{k}" for k in (4, 0, 6, 2, 1, 5, 3)]
    labels, num_classes = predict_label_maps(predict_proba, ids, chunk_items=3)
    assert num_classes == 3 and labels.dtype == np.uint8 and labels.shape == (7, 5, 4)
    np.testing.assert_array_equal(labels, np.stack([table[i].argmax(axis=0) for i in ids]))
    assert [len(c) for c in calls] == [3, 3, 1] and [i for c in calls for i in c] == ids
    with pytest.raises(ValueError, match="at least one id"):
        predict_label_maps(predict_proba, [])


def test_stored_predictions_round_trip_and_damage_reads_as_missing(tmp_path: Path) -> None:
    labels = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) % 3
    path = write_pool_predictions(tmp_path / "p.npz", ["a/1", "a/2", "b/3"], labels, 3)
    stored = read_pool_predictions(path)
    assert stored is not None and stored.ids == ["a/1", "a/2", "b/3"] and stored.num_classes == 3
    subset = stored.subset(["b/3", "a/1"])
    assert subset is not None
    np.testing.assert_array_equal(subset, labels[[2, 0]])
    assert stored.subset(["a/1", "c/9"]) is None
    assert not list(tmp_path.glob("*.tmp"))
    path.write_bytes(path.read_bytes()[:40])
    assert read_pool_predictions(path) is None
    assert read_pool_predictions(tmp_path / "missing.npz") is None


# -- the loop with a fake learner --------------------------------------------------------------

POOL = [f"p/{i:02d}" for i in range(15)]
SIZE = 8


def fake_prediction(item: str, n_train: int) -> np.ndarray:
    """The fake model's label map: a square that grows with the training set; every fifth item
    is predicted empty by every model (an empty-vs-empty pair)."""
    k = int(item.split("/")[1])
    if k % 5 == 0:
        return np.zeros((SIZE, SIZE), dtype=np.int64)
    return square(SIZE, 0, 0, min(1 + n_train // 3 + k % 3, SIZE)).astype(np.int64)


class ShapeLearner:
    """Deterministic stand-in whose predictions depend on how many items it was trained on."""

    def __init__(self, fail_on_fit: int | None = None) -> None:
        self._checkpoint: Path | None = None
        self.n_train = 0
        self.fits = 0
        self.fail_on_fit = fail_on_fit
        self.predicted: list[tuple[int, list[str]]] = []  # (model's n_train, ids)

    @property
    def checkpoint(self) -> Path | None:
        return self._checkpoint

    def reset(self) -> None:
        self._checkpoint = None
        self.n_train = 0

    def restore(self, checkpoint: Path) -> None:
        self._checkpoint = Path(checkpoint)
        self.n_train = json.loads(self._checkpoint.read_text())["n_train"]

    def fit(self, train_ids: Sequence[str], out_dir: Path, seed: int) -> FitInfo:
        if self.fail_on_fit is not None and self.fits == self.fail_on_fit:
            raise KeyboardInterrupt  # killed in the middle of training
        self.fits += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        self._checkpoint = out_dir / "weights.json"
        self._checkpoint.write_text(json.dumps({"n_train": len(train_ids), "seed": seed}))
        self.n_train = len(train_ids)
        return FitInfo(self._checkpoint, len(train_ids), 0, 1, 1, 0.0)

    def predict_proba(self, ids: Sequence[str]) -> np.ndarray:
        self.predicted.append((self.n_train, list(ids)))
        foreground = np.stack([fake_prediction(i, self.n_train) for i in ids]).astype(np.float32)
        return np.stack([1 - foreground, foreground], axis=1)

    def evaluate(self, out_dir: Path | None = None) -> dict[str, dict[str, float]]:
        return {"test": {"n": 3.0, "dice_mean": self.n_train / 100, "dice_std": 0.0}}

    def pseudo_label(self, labelled_ids: Sequence[str], out_dir: Path) -> dict[str, Any] | None:
        return None


class RecordingTracker(RoundTracker):
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log_round(self, arm: ArmSpec, manifest: Any, round_dir: Path) -> None:
        self.logged.append(round_metrics(manifest))


class StopAfter(LoopHooks):
    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def on_round_end(self, arm: ArmSpec, manifest: Any) -> None:
        if manifest["round"] == self.round_index:
            raise RuntimeError("stop here")


SIZES = (3, 6, 9, 12)


def arm(strategy: str | None = "random", sizes: Sequence[int] = SIZES, seed: int = 1) -> ArmSpec:
    return ArmSpec(
        label=strategy or "full",
        strategy=strategy,
        schedule=BudgetSchedule.from_cumulative(sizes, "s"),
        seed=seed,
    )


def run(folder: Path, learner: Any, spec: ArmSpec | None = None, **kw: Any) -> list[dict[str, Any]]:
    kw.setdefault("progress", False)
    return ActiveLearningRun(spec or arm(), learner, PoolInputs(POOL), folder, **kw).run()


def expected_agreement(manifest: dict[str, Any], previous: dict[str, Any]) -> float:
    """Mean direct Dice on the items unlabelled after this round, previous vs current model."""
    unlabelled = [i for i in POOL if i not in set(manifest["labelled_ids"])]
    scores = [
        direct_dice(
            fake_prediction(i, previous["n_labelled"]),
            fake_prediction(i, manifest["n_labelled"]),
            2,
        )
        for i in unlabelled
    ]
    return float(np.mean(scores))


def test_agreement_per_round_against_a_direct_computation(tmp_path: Path) -> None:
    learner = ShapeLearner()
    tracker = RecordingTracker()
    manifests = run(tmp_path, learner, tracker=tracker)
    first = manifests[0]
    assert first["pool_agreement"] is None and first["pool_agreement_items"] == 0
    assert first["pool_predictions"]["n_items"] == len(POOL) - 3
    values = []
    for previous, manifest in itertools.pairwise(manifests):
        expected = expected_agreement(manifest, previous)
        assert manifest["pool_agreement"] == pytest.approx(expected, abs=1e-12)
        assert manifest["pool_agreement_items"] == len(POOL) - manifest["n_labelled"]
        values.append(manifest["pool_agreement"])
    assert all(0.0 < v < 1.0 for v in values) and len(set(values)) > 1  # a real signal
    # One inference pass per round, over the items unlabelled after it, with the round's model.
    assert [(n, len(ids)) for n, ids in learner.predicted] == [(n, len(POOL) - n) for n in SIZES]
    for manifest, (_, ids) in zip(manifests, learner.predicted):
        assert not set(ids) & set(manifest["labelled_ids"])
        assert (tmp_path / "rounds" / f"{manifest['round']:03d}" / POOL_PREDICTIONS_FILE).is_file()
    # Tracked from round 1 on, and not in round 0 (a missing point, not a zero).
    assert "pool_agreement" not in tracker.logged[0]
    assert [m["pool_agreement"] for m in tracker.logged[1:]] == pytest.approx(values)
    assert tracker.logged[1]["pool_agreement_items"] == len(POOL) - SIZES[1]


def test_progress_line_shows_the_agreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = run(tmp_path, ShapeLearner(), progress=True, label_prefix="[r]")
    lines = capsys.readouterr().out.splitlines()
    assert "agreement" not in lines[0]
    value = manifests[1]["pool_agreement"]
    assert f"dice=0.060 (test) agreement={value:.3f} ({len(POOL) - 6} unlabelled)" in lines[1]


def test_resumed_runs_give_the_uninterrupted_values(tmp_path: Path) -> None:
    whole = run(tmp_path / "whole", ShapeLearner())

    with pytest.raises(RuntimeError, match="stop here"):
        run(tmp_path / "cut", ShapeLearner(), hooks=StopAfter(0))
    # Killed in the middle of round 2's training (round 1 committed).
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", ShapeLearner(fail_on_fit=1), resume=True)
    learner = ShapeLearner()
    resumed = run(tmp_path / "cut", learner, resume=True)
    assert [m["pool_agreement"] for m in resumed] == [m["pool_agreement"] for m in whole]
    # The stored predictions of round 1 were read back: only the new rounds' models predicted.
    assert [n for n, _ in learner.predicted] == [9, 12]


@pytest.mark.parametrize("damage", ["delete", "replace"])
def test_missing_or_changed_stored_predictions_are_predicted_again(
    tmp_path: Path, damage: str
) -> None:
    whole = run(tmp_path / "whole", ShapeLearner())
    with pytest.raises(RuntimeError, match="stop here"):
        run(tmp_path / "cut", ShapeLearner(), hooks=StopAfter(1))
    stored = tmp_path / "cut" / "rounds" / "001" / POOL_PREDICTIONS_FILE
    if damage == "delete":  # e.g. a round committed before alframe had the stopping signal
        stored.unlink()
    else:  # a valid file with other content: its sha256 no longer matches the manifest
        wrong = np.ones((len(POOL) - 6, SIZE, SIZE), dtype=np.uint8)
        ids = [i for i in POOL if i not in whole[1]["labelled_ids"]]
        write_pool_predictions(stored, ids, wrong, 2)
    learner = ShapeLearner()
    resumed = run(tmp_path / "cut", learner, resume=True)
    assert [m["pool_agreement"] for m in resumed] == [m["pool_agreement"] for m in whole]
    # Round 2 re-predicted with round 1's restored model (6 labels) before training its own.
    assert [n for n, _ in learner.predicted] == [6, 9, 12]


def test_switched_off_and_reference_runs_predict_nothing(tmp_path: Path) -> None:
    learner = ShapeLearner()
    manifests = run(tmp_path / "off", learner, pool_agreement=False)
    assert learner.predicted == []
    assert all(m["pool_agreement"] is None and m["pool_predictions"] is None for m in manifests)
    assert not list((tmp_path / "off").rglob(POOL_PREDICTIONS_FILE))
    learner = ShapeLearner()
    (full,) = run(tmp_path / "full", learner, arm(None, (len(POOL),)))
    assert learner.predicted == [] and full["pool_agreement"] is None
    # A schedule that labels the whole pool has nothing left to compare in its last round.
    learner = ShapeLearner()
    manifests = run(tmp_path / "all", learner, arm("random", (5, len(POOL))))
    assert manifests[1]["pool_agreement"] is None and manifests[1]["pool_predictions"] is None
    assert [len(ids) for _, ids in learner.predicted] == [len(POOL) - 5]


# -- summaries ---------------------------------------------------------------------------------


def manifest(seed: int, round_index: int, n: int, agreement: float | None) -> dict[str, Any]:
    return {
        "label": "xssr",
        "strategy": "xssr",
        "schedule": "s",
        "seed": seed,
        "round": round_index,
        "n_labelled": n,
        "metrics": {
            "a": {"n": 4.0, "dice_mean": 0.5 + n / 100, "dice_std": 0.0, "iou_mean": 0.4},
            "b": {"n": 4.0, "dice_mean": 0.4 + n / 100, "dice_std": 0.0, "iou_mean": 0.3},
        },
        "pool_agreement": agreement,
        "pool_agreement_items": 0 if agreement is None else 100 - n,
        "fit": {},
    }


def test_summary_table_and_markdown_show_the_agreement() -> None:
    manifests = [
        manifest(0, 0, 10, None),
        manifest(0, 1, 20, 0.80),
        manifest(0, 2, 30, 0.95),
        manifest(1, 0, 10, None),
        manifest(1, 1, 20, 0.70),
        manifest(1, 2, 30, None),  # e.g. a round committed before the signal existed
    ]
    results = results_frame(manifests)
    assert {"pool_agreement", "pool_agreement_items"} <= set(results.columns)
    table = summary_table(results, ["a", "b"])
    rows = table[table["eval_set"] == "a"].set_index("n_labelled")
    assert np.isnan(rows.loc[10, "agreement_mean"])
    assert rows.loc[20, "agreement_mean"] == pytest.approx(0.75)
    assert rows.loc[20, "agreement_std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert rows.loc[30, "agreement_mean"] == pytest.approx(0.95)  # the seed that has one
    assert rows.loc[30, "agreement_std"] == 0.0
    text = markdown_table(table)
    section = text.split("### Pool agreement (label-free stopping signal)")[1]
    assert text.count("### Pool agreement") == 1  # once, not per evaluation set
    assert "| strategy | n=20 | n=30 |" in section
    assert "| xssr | 0.750 ± 0.071 | 0.950 ± 0.000 |" in section
    # Tables from before the signal (no agreement columns, or no values) have no section.
    old = table.drop(columns=["agreement_mean", "agreement_std"])
    assert "Pool agreement" not in markdown_table(old)
    none = summary_table(results_frame([manifest(0, 0, 10, None)]))
    assert "Pool agreement" not in markdown_table(none)
    assert isinstance(none, pd.DataFrame)
