"""The loop's parts without training: schedules, oracle, seeds, manifests, resume logic, summaries.

A fake learner (no torch) stands in for Lightning, so every loop path runs in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from alframe.config import recipe_from_dict
from alframe.errors import ConfigError, DataError, StateError
from alframe.loop.active import ActiveLearningRun, ArmSpec, LoopHooks, PoolInputs
from alframe.loop.learner import FitInfo
from alframe.loop.oracle import SimulatedOracle
from alframe.loop.schedule import BudgetSchedule
from alframe.loop.state import (
    RunState,
    content_checksum,
    derive_seed,
    package_versions,
)
from alframe.loop.summary import aulc, markdown_table, results_frame, summary_table

# -- schedules ---------------------------------------------------------------------------------


def test_cumulative_and_batches_describe_the_same_schedule() -> None:
    cumulative = BudgetSchedule.from_cumulative([22, 44, 88], "s")
    batches = BudgetSchedule.from_batches([22, 22, 44], "s")
    assert cumulative == batches
    assert cumulative.cumulative == (22, 44, 88)
    assert cumulative.batches == (22, 22, 44)
    assert cumulative.n_rounds == 3
    assert BudgetSchedule.from_fractions([0.05, 0.1, 0.2], 440).cumulative == (22, 44, 88)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BudgetSchedule.from_cumulative([22, 22]), "increase strictly"),
        (lambda: BudgetSchedule.from_cumulative([44, 22]), "increase strictly"),
        (lambda: BudgetSchedule.from_cumulative([]), "is empty"),
        (lambda: BudgetSchedule.from_batches([22, 0]), "positive integers"),
        (lambda: BudgetSchedule.from_batches([2.5]), "positive integers"),  # type: ignore[list-item]
        (lambda: BudgetSchedule.from_fractions([0.0, 0.1], 100), r"\(0, 1\]"),
        (lambda: BudgetSchedule.from_fractions([0.01, 0.011], 100), "do not increase"),
    ],
)
def test_invalid_schedules_are_config_errors(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_schedule_longer_than_the_pool_is_refused() -> None:
    schedule = BudgetSchedule.from_cumulative([5, 10], "big")
    schedule.check_pool(10)
    with pytest.raises(ConfigError, match="pool holds only 8"):
        schedule.check_pool(8)


def _experiment_recipe(**experiment: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "x",
        "data": {"datasets": {"a": {"path": "a"}}, "train": {"dataset": "a"}},
        "experiment": {
            "strategies": [{"name": "random"}],
            "schedules": [{"name": "s", "cumulative": [2, 4]}],
        },
    }
    raw["experiment"].update(experiment)
    return raw


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        ({"schedules": [{"name": "s", "cumulative": [4, 2]}]}, "increase strictly"),
        ({"schedules": [{"name": "s", "cumulative": [2], "batches": [2]}]}, "exactly one"),
        ({"schedules": [{"name": "s"}]}, "exactly one"),
        ({"schedules": [{"name": "s", "batches": [2, -1]}]}, "positive integers"),
        ({"schedules": []}, "experiment.schedules"),
        ({"train": {"max_stepz": 3}}, "did you mean max_steps"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"strategies": [{"name": "random"}, {"name": "random"}]}, "labels must be unique"),
        ({"retrain": "sometimes"}, "experiment.retrain"),
    ],
)
def test_experiment_section_errors_name_the_key(experiment: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(_experiment_recipe(**experiment))


def test_experiment_section_defaults() -> None:
    recipe = recipe_from_dict(_experiment_recipe())
    experiment = recipe.experiment
    assert experiment is not None
    assert experiment.seeds == [0] and experiment.full_reference
    assert experiment.retrain == "scratch" and experiment.cold_start == "random"
    assert experiment.val_fraction == 0.0
    assert recipe_from_dict({**_experiment_recipe(), "experiment": None}).experiment is None


# -- oracle and seeds --------------------------------------------------------------------------


def test_oracle_reveals_pool_items_and_refuses_others() -> None:
    oracle = SimulatedOracle(["a/1", "a/2", "a/3"], has_mask=[True, True, False])
    assert oracle.label(["a/2"]) == ["a/2"]
    assert oracle.labelled_ids == ["a/2"]
    assert oracle.labelled_mask.tolist() == [False, True, False]
    with pytest.raises(DataError, match=r"not in the pool.*did you mean a/1"):
        oracle.label(["a/1", "a/11"])
    assert oracle.labelled_ids == ["a/2"]  # a refused request labels nothing
    with pytest.raises(DataError, match="already labelled"):
        oracle.label(["a/2"])
    with pytest.raises(DataError, match="requested twice"):
        oracle.label(["a/1", "a/1"])
    with pytest.raises(DataError, match="no ground-truth mask"):
        oracle.label(["a/3"])
    assert len(oracle) == 1


def test_seeds_derive_from_seed_round_and_purpose() -> None:
    assert derive_seed(0, 1, "select") == derive_seed(0, 1, "select")
    seeds = {derive_seed(s, r, p) for s in range(3) for r in range(3) for p in ("select", "train")}
    assert len(seeds) == 18
    assert all(0 <= s < 2**31 for s in seeds)
    with pytest.raises(ValueError, match="purpose"):
        derive_seed(0, 0, "other")


def test_package_versions_lists_the_stack() -> None:
    versions = package_versions()
    assert set(versions) == {
        "alframe",
        "torch",
        "lightning",
        "segmentation_models_pytorch",
        "numpy",
        "faiss",
    }
    assert versions["numpy"] == np.__version__


# -- a fake learner: the loop without Lightning ------------------------------------------------


class FakeLearner:
    """Deterministic stand-in: 'Dice' grows with the labelled set; probabilities from ids."""

    def __init__(self, fail_on_fit: int | None = None) -> None:
        self._checkpoint: Path | None = None
        self.fits: list[tuple[list[str], int, Path | None]] = []
        self.predicted: list[list[str]] = []
        self.fail_on_fit = fail_on_fit
        self._n = 0

    @property
    def checkpoint(self) -> Path | None:
        return self._checkpoint

    def reset(self) -> None:
        self._checkpoint = None

    def restore(self, checkpoint: Path) -> None:
        self._checkpoint = Path(checkpoint)

    def pseudo_label(self, labelled_ids: Sequence[str], out_dir: Path) -> dict[str, Any] | None:
        return None

    def fit(self, train_ids: Sequence[str], out_dir: Path, seed: int) -> FitInfo:
        if self.fail_on_fit is not None and len(self.fits) == self.fail_on_fit:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of training
        self.fits.append((list(train_ids), seed, self._checkpoint))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "weights.bin"
        path.write_bytes(f"{sorted(train_ids)}{seed}".encode())
        self._checkpoint = path
        self._n = len(train_ids)
        return FitInfo(path, len(train_ids), 0, 1, 1, 0.0)

    def predict_proba(self, ids: Sequence[str]) -> np.ndarray:
        self.predicted.append(list(ids))
        foreground = np.array([int(i.split("/")[1]) % 7 / 7 for i in ids], dtype=np.float32)
        fg = np.broadcast_to(foreground[:, None, None], (len(ids), 4, 4))
        return np.stack([1 - fg, fg], axis=1)

    def evaluate(self, out_dir: Path | None = None) -> dict[str, dict[str, float]]:
        return {"test": {"n": 3.0, "dice_mean": self._n / 100, "dice_std": 0.0, "iou_mean": 0.5}}


POOL = [f"p/{i:02d}" for i in range(20)]


def _inputs(calls: dict[str, int]) -> PoolInputs:
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(len(POOL), 4)).astype(np.float32)
    source = rng.normal(size=(6, 4)).astype(np.float32)

    def embeddings() -> tuple[np.ndarray, str]:
        calls["embeddings"] += 1
        return pool, "hash-pool"

    def source_embeddings() -> tuple[np.ndarray, str]:
        calls["source"] += 1
        return source, "hash-pool"

    return PoolInputs(POOL, None, embeddings, source_embeddings)


def _arm(strategy: str | None, sizes: Sequence[int] = (3, 6, 9), **kw: Any) -> ArmSpec:
    return ArmSpec(
        label=strategy or "full",
        strategy=strategy,
        schedule=BudgetSchedule.from_cumulative(sizes, "s"),
        seed=1,
        **kw,
    )


def _run(
    tmp: Path, arm: ArmSpec, learner: Any, calls: dict[str, int] | None = None, **kw: Any
) -> list[dict[str, Any]]:
    calls = calls if calls is not None else {"embeddings": 0, "source": 0}
    kw.setdefault("progress", False)
    return ActiveLearningRun(arm, learner, _inputs(calls), tmp, **kw).run()


@pytest.mark.parametrize(
    ("strategy", "embeddings", "source"),
    [("random", 0, 0), ("coreset", 1, 0), ("xssr", 1, 1), ("entropy", 0, 0)],
)
def test_requirements_drive_what_is_computed(
    tmp_path: Path, strategy: str, embeddings: int, source: int
) -> None:
    calls = {"embeddings": 0, "source": 0}
    learner = FakeLearner()
    # Without the stopping signal's own pool predictions (tests/test_loop_agreement.py), every
    # prediction is one the strategy asked for.
    manifests = _run(tmp_path, _arm(strategy), learner, calls, pool_agreement=False)
    assert calls == {"embeddings": embeddings, "source": source}
    assert [m["n_labelled"] for m in manifests] == [3, 6, 9]
    if strategy == "entropy":
        # Round 0 has no model: cold start (random); later rounds predict the unlabelled items.
        assert [m["strategy_used"] for m in manifests] == ["random", "entropy", "entropy"]
        assert [m["cold_start"] for m in manifests] == [True, False, False]
        assert [len(ids) for ids in learner.predicted] == [17, 14]
        assert not set(learner.predicted[0]) & set(manifests[0]["labelled_ids"])
        assert manifests[1]["model_checkpoint"].endswith("rounds/000/model/weights.bin")
    else:
        assert learner.predicted == []
    hashes = {m["embedding_hash"] for m in manifests}
    assert hashes == ({"hash-pool"} if embeddings else {None})


def test_rounds_are_seeded_by_seed_and_round(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", _arm("random"), FakeLearner())
    again = _run(tmp_path / "b", _arm("random"), FakeLearner())
    assert [m["selected"] for m in first] == [m["selected"] for m in again]
    assert [m["train_seed"] for m in first] == [derive_seed(1, r, "train") for r in range(3)]
    # Every round draws anew: the selection differs from a seed-0 run.
    other = _run(
        tmp_path / "c", ArmSpec("random", "random", {}, _arm("random").schedule, 0), FakeLearner()
    )
    assert [m["selected"] for m in other] != [m["selected"] for m in first]


def test_reference_labels_the_whole_pool_in_one_round(tmp_path: Path) -> None:
    learner = FakeLearner()
    (manifest,) = _run(tmp_path, _arm(None, (len(POOL),)), learner)
    assert manifest["n_labelled"] == len(POOL) and manifest["strategy"] == "full"
    assert sorted(learner.fits[0][0]) == POOL


def test_finetune_keeps_the_previous_model(tmp_path: Path) -> None:
    learner = FakeLearner()
    _run(tmp_path / "scratch", _arm("random"), learner)
    assert [init for _, _, init in learner.fits] == [None, None, None]
    learner = FakeLearner()
    _run(tmp_path / "ft", _arm("random", retrain="finetune"), learner)
    inits = [init for _, _, init in learner.fits]
    assert inits[0] is None and inits[1] is not None and inits[1].parent.parent.name == "000"


class StopAfter(LoopHooks):
    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def on_round_end(self, arm: ArmSpec, manifest: Any) -> None:
        if manifest["round"] == self.round_index:
            raise RuntimeError("stop here")


@pytest.mark.parametrize("strategy", ["entropy", "xssr"])
def test_resume_reaches_the_uninterrupted_result(tmp_path: Path, strategy: str) -> None:
    whole = _run(tmp_path / "whole", _arm(strategy), FakeLearner())

    with pytest.raises(RuntimeError, match="stop here"):
        _run(tmp_path / "cut", _arm(strategy), FakeLearner(), hooks=StopAfter(0))
    with pytest.raises(StateError, match="pass --resume"):
        _run(tmp_path / "cut", _arm(strategy), FakeLearner())
    # Interrupted in the middle of round 2's training: round 2's folder has no manifest.
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", _arm(strategy), FakeLearner(fail_on_fit=1), resume=True)
    assert (tmp_path / "cut" / "rounds" / "002").is_dir()
    assert not (tmp_path / "cut" / "rounds" / "002" / "manifest.json").exists()
    learner = FakeLearner()
    resumed = _run(tmp_path / "cut", _arm(strategy), learner, resume=True)
    assert len(learner.fits) == 1  # only the missing round was trained
    keys = ("selected", "labelled_ids", "metrics", "select_seed", "train_seed", "strategy_used")
    for a, b in zip(whole, resumed, strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_other_settings_are_not_resumed(tmp_path: Path) -> None:
    _run(tmp_path, _arm("random"), FakeLearner(), fingerprint={"lr": 0.1})
    with pytest.raises(StateError, match=r"other settings \(lr differ\)"):
        _run(tmp_path, _arm("random"), FakeLearner(), fingerprint={"lr": 0.2}, resume=True)


def test_a_changed_schedule_is_refused_and_an_extended_one_continues(tmp_path: Path) -> None:
    _run(tmp_path, _arm("random", (3, 6)), FakeLearner())
    with pytest.raises(StateError, match="schedule 's' now says 4"):
        _run(tmp_path, _arm("random", (4, 6)), FakeLearner(), resume=True)
    learner = FakeLearner()
    manifests = _run(tmp_path, _arm("random", (3, 6, 9)), learner, resume=True)
    assert [m["n_labelled"] for m in manifests] == [3, 6, 9] and len(learner.fits) == 1


def test_cold_start_that_needs_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a trained model itself"):
        _run(tmp_path, _arm("entropy", cold_start="margin"), FakeLearner())


def test_unknown_strategy_and_requirement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"(?i)did you mean 'random'"):
        _run(tmp_path, _arm("randon"), FakeLearner())

    class NeedsFoo:
        requires = frozenset({"embeddings", "foo"})

    import alframe.strategies

    monkeypatch.setattr(alframe.strategies, "create", lambda name, **kw: NeedsFoo())
    with pytest.raises(ConfigError, match=r"requires \['foo'\], which the loop cannot compute"):
        _run(tmp_path, _arm("random"), FakeLearner())


# -- manifests ---------------------------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    _run(tmp_path / "run", _arm("coreset"), FakeLearner())
    return tmp_path / "run"


def test_manifest_is_self_checking(finished_run: Path) -> None:
    state = RunState(finished_run)
    manifests = state.completed_rounds()
    assert [m["round"] for m in manifests] == [0, 1, 2]
    manifest = manifests[1]
    assert manifest["checksum"] == content_checksum(manifest)
    for key in (
        "selected",
        "embedding_hash",
        "checkpoint",
        "checkpoint_sha256",
        "seed",
        "versions",
        "metrics",
        "n_labelled",
    ):
        assert key in manifest
    first = manifest["selected"][0]
    assert set(first) == {"id", "rank", "score", "terms"} and "diversity" in first["terms"]
    # No temporary files are left behind by the atomic writes.
    assert not list(finished_run.rglob("*.tmp"))
    selection = pd.read_csv(finished_run / "rounds" / "001" / "selection.csv")
    assert selection["id"].tolist() == [row["id"] for row in manifest["selected"]]


def _corrupt_json(path: Path) -> None:
    path.write_text(path.read_text()[:-40])


def _corrupt_value(path: Path) -> None:
    data = json.loads(path.read_text())
    data["n_labelled"] = 7
    path.write_text(json.dumps(data))


def _remove_checkpoint(path: Path) -> None:
    (path.parent / "model" / "weights.bin").unlink()


def _change_checkpoint(path: Path) -> None:
    (path.parent / "model" / "weights.bin").write_bytes(b"other weights")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_json, "cannot be read"),
        (_corrupt_value, "checksum mismatch"),
        (_remove_checkpoint, "checkpoint .* is missing"),
        (_change_checkpoint, "sha256 differs"),
    ],
)
def test_a_damaged_manifest_says_what_to_do(finished_run: Path, damage: Any, message: str) -> None:
    path = finished_run / "rounds" / "001" / "manifest.json"
    damage(path)
    fix = r"delete the folder .*rounds/001 \(and every later round folder\) to redo round 1"
    with pytest.raises(StateError, match=f"{message}.*{fix}"):
        RunState(finished_run).completed_rounds()
    with pytest.raises(StateError, match=message):
        _run(finished_run, _arm("coreset"), FakeLearner(), resume=True)
    # Following the advice works: the round is redone.
    import shutil

    for later in ("001", "002"):
        shutil.rmtree(finished_run / "rounds" / later)
    learner = FakeLearner()
    _run(finished_run, _arm("coreset"), learner, resume=True)
    assert len(learner.fits) == 2


def test_a_missing_round_before_a_completed_one(finished_run: Path) -> None:
    import shutil

    shutil.rmtree(finished_run / "rounds" / "000")
    with pytest.raises(StateError, match="round 0 is not complete"):
        RunState(finished_run).completed_rounds()


# -- summaries ---------------------------------------------------------------------------------


def test_aulc_is_the_normalised_trapezoid() -> None:
    assert aulc([22, 44, 88], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    expected = ((0.6 + 0.8) / 2 * 22 + (0.8 + 0.9) / 2 * 44) / 66
    assert aulc([88, 22, 44], [0.9, 0.6, 0.8]) == pytest.approx(expected)
    assert aulc([10], [0.7]) == pytest.approx(0.7)
    assert np.isnan(aulc([], []))


def _manifest(label: str, seed: int, round_index: int, n: int, dice: float) -> dict[str, Any]:
    return {
        "label": label,
        "strategy": label,
        "schedule": "s" if label != "full" else "full",
        "seed": seed,
        "round": round_index,
        "n_labelled": n,
        "metrics": {"test": {"n": 5.0, "dice_mean": dice, "dice_std": 0.1, "iou_mean": dice - 0.1}},
        "fit": {},
    }


def test_summary_table_means_over_seeds_and_percent_of_full() -> None:
    manifests = [
        _manifest("xssr", 0, 0, 10, 0.80),
        _manifest("xssr", 0, 1, 20, 0.90),
        _manifest("xssr", 1, 0, 10, 0.70),
        _manifest("xssr", 1, 1, 20, 0.90),
        _manifest("full", 0, 0, 100, 0.95),
        _manifest("full", 1, 0, 100, 0.85),
    ]
    results = results_frame(manifests)
    assert len(results) == 6
    table = summary_table(results).set_index(["label", "n_labelled"])
    row = table.loc[("xssr", 10)]
    assert row["dice_mean"] == pytest.approx(0.75)
    assert row["dice_std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert row["pct_of_full"] == pytest.approx(100 * 0.75 / 0.90)
    assert row["aulc_mean"] == pytest.approx(np.mean([0.85, 0.80]))
    assert table.loc[("full", 100)]["pct_of_full"] == pytest.approx(100.0)
    text = markdown_table(summary_table(results))
    assert "| xssr | 0.750 ± 0.071 (83.3 %) | 0.900 ± 0.000 (100.0 %) | 0.825 ± 0.035 |" in text
    assert "Full-data reference (n=100, 2 seed(s)): Dice 0.900 ± 0.071." in text


def test_no_percent_of_full_data_against_a_reference_below_the_subsets() -> None:
    """A reference worse than a subset model (too short a training) is no ceiling: no 178 %."""
    from alframe.loop.summary import reference_below_subsets

    manifests = [
        _manifest("xssr", 0, 0, 10, 0.80),
        _manifest("xssr", 0, 1, 20, 0.90),
        _manifest("full", 0, 0, 100, 0.504),
    ]
    table = summary_table(results_frame(manifests))
    assert table["pct_of_full"].isna().all()
    assert reference_below_subsets(table) == ["test"]
    assert "%" not in markdown_table(table).split("Full-data")[0]
    # Within the tolerance (seed noise) the percentage stays, slightly above 100.
    close = [*manifests[:2], _manifest("full", 0, 0, 100, 0.897)]
    table = summary_table(results_frame(close)).set_index(["label", "n_labelled"])
    assert table.loc[("xssr", 20)]["pct_of_full"] == pytest.approx(100 * 0.9 / 0.897)


# -- embeddings from the round model (experiment.strategies[].embedding: model) -----------------


def test_model_embedding_replaces_the_recipe_embedding_once_a_model_exists(
    tmp_path: Path,
) -> None:
    from alframe import strategies
    from alframe.types import QueryContext

    rng = np.random.default_rng(5)
    recipe_pool = rng.normal(size=(len(POOL), 4)).astype(np.float32)
    model_pool = rng.normal(size=(len(POOL), 3)).astype(np.float32)
    asked: list[str] = []

    def model_embeddings(checkpoint: Path) -> Any:
        asked.append(checkpoint.as_posix())
        return (model_pool, f"model-{checkpoint.parent.parent.name}"), None

    inputs = PoolInputs(POOL, None, lambda: (recipe_pool, "hash-recipe"), lambda: None)
    inputs.model_embeddings_fn = model_embeddings
    arm = _arm("coreset", embedding="model")
    manifests = ActiveLearningRun(arm, FakeLearner(), inputs, tmp_path, progress=False).run()

    # Round 0 has no model: the recipe's embedding; later rounds: the previous round's model.
    assert [m["embedding_hash"] for m in manifests] == ["hash-recipe", "model-000", "model-001"]
    assert [m.get("embedding_source") for m in manifests] == [None, "model", "model"]
    assert [a.split("/rounds/")[1] for a in asked] == [
        "000/model/weights.bin",
        "001/model/weights.bin",
    ]
    # The picks are CoreSet's on the model embedding (independent call of the strategy).
    labelled = np.isin(POOL, manifests[0]["labelled_ids"])
    expected = strategies.create("coreset").select(
        QueryContext(embeddings=model_pool, labelled=labelled, seed=0, ids=POOL), 3
    )
    assert [row["id"] for row in manifests[1]["selected"]] == [POOL[i] for i in expected.indices]
    on_recipe = strategies.create("coreset").select(
        QueryContext(embeddings=recipe_pool, labelled=labelled, seed=0, ids=POOL), 3
    )
    assert set(on_recipe.indices) != set(expected.indices)  # the test can tell them apart


def test_embedding_option_reaches_the_arm_and_keeps_old_fingerprints() -> None:
    from alframe.loop.experiment import plan_arms

    raw = _experiment_recipe(
        strategies=[{"name": "coreset"}, {"name": "xssr", "label": "x_m", "embedding": "model"}]
    )
    plain, model = plan_arms(recipe_from_dict(raw), 10)[:2]
    assert plain.embedding == "recipe" and "embedding" not in plain.describe()
    assert model.embedding == "model" and model.describe()["embedding"] == "model"
    raw["experiment"]["strategies"] = [{"name": "coreset", "embedding": "encoder"}]
    with pytest.raises(ConfigError, match="embedding"):
        recipe_from_dict(raw)
