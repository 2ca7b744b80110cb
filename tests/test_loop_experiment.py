"""Budget experiments end to end on tiny synthetic data (32², an 80 k-parameter U-Net, 1-epoch MAE).

One uninterrupted experiment (XSSR and entropy × 2 rounds × 1 seed + the full-data reference) is
the module's reference; interrupted-and-resumed runs must reach exactly its selections and metrics.
One sqlite MLflow store is shared by the whole module (a new one costs ~2 s).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from alframe.cli.main import main
from alframe.config import Recipe, recipe_from_dict
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset
from alframe.errors import ConfigError, StateError
from alframe.loop import ArmSpec, LightningLearner, LoopHooks, run_experiment
from alframe.loop.experiment import ExperimentResult, load_manifests, rounds_recipe

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*",
    "ignore:.*does not have many workers.*",
)

EXPERIMENT_NAME = "loop_tests"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loop")
    write_synthetic_dataset(root / "data", n_images=16, image_size=32, seed=3)
    return root


def base_raw(workdir: Path, out: str, **experiment: Any) -> dict[str, Any]:
    raw = synthetic_recipe_dict(workdir / "data", image_size=32)
    raw["name"] = EXPERIMENT_NAME
    raw["model"] = {"arch": "Unet", "encoder": "tu-test_resnet", "encoder_depth": 3}
    raw["train"].update(
        {"max_epochs": 1, "batch_size": 4, "lr": 0.01, "progress": False, "accelerator": "cpu"}
    )
    raw["embed"] = {"mae": {"encoder": "tu-test_resnet", "max_epochs": 1, "batch_size": 4}}
    raw["experiment"] = {
        "strategies": [{"name": "xssr", "params": {"alpha": "auto"}}, {"name": "entropy"}],
        "schedules": [{"name": "budget", "cumulative": [3, 6]}],
        "seeds": [0],
        "cold_start": "random",
        "steps_per_round": 4,
        "reference_train": {"max_epochs": 1},
        **experiment,
    }
    raw["tracking"] = {"uri": f"sqlite:///{workdir / 'mlflow.db'}"}
    raw["output_dir"] = str(workdir / out)
    return raw


def make_recipe(workdir: Path, out: str, **experiment: Any) -> Recipe:
    return recipe_from_dict(base_raw(workdir, out, **experiment))


@pytest.fixture(scope="module")
def reference(workdir: Path) -> tuple[ExperimentResult, str]:
    """The uninterrupted experiment and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_experiment(make_recipe(workdir, "whole"))
    return result, printed.getvalue()


def arm_manifests(result: ExperimentResult, label: str) -> list[dict[str, Any]]:
    (name,) = [k for k in result.manifests if k.startswith(f"{label}__")]
    return result.manifests[name]


KEYS = (
    "round",
    "selected",
    "labelled_ids",
    "metrics",
    "strategy_used",
    "select_seed",
    "train_seed",
    "pool_agreement",
    "pool_agreement_items",
)


def same_rounds(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert {k: left[k] for k in KEYS} == {k: right[k] for k in KEYS}
        assert left["fit"]["steps"] == right["fit"]["steps"]


def test_experiment_writes_rounds_results_and_plot(
    reference: tuple[ExperimentResult, str],
) -> None:
    result, printed = reference
    assert sorted(result.manifests) == [
        "entropy__budget__seed0",
        "full__full__seed0",
        "xssr__budget__seed0",
    ]
    for name in ("results", "table", "summary", "learning_curve"):
        assert result.files[name].is_file()
    assert result.files["learning_curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![learning curve](learning_curve.png)" in result.files["summary"].read_text()

    xssr = arm_manifests(result, "xssr")
    assert [m["n_labelled"] for m in xssr] == [3, 6]
    assert xssr[0]["embedding_hash"] and xssr[0]["selection_info"]["alpha_mode"] == "auto"
    assert set(xssr[0]["selected"][0]["terms"]) >= {"density", "novelty", "diversity"}
    assert xssr[1]["fit"]["steps"] == 4 and xssr[1]["fit"]["n_train"] == 6
    entropy = arm_manifests(result, "entropy")
    assert [m["strategy_used"] for m in entropy] == ["random", "entropy"]
    assert entropy[0]["embedding_hash"] is None
    (full,) = arm_manifests(result, "full")
    assert full["n_labelled"] == 12 and full["fit"]["n_val"] > 0

    # One progress line per round, with n_labelled and the primary set's Dice.
    lines = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(lines) == 5
    assert lines[0].startswith("[xssr seed 0] round 0: n_labelled=3 dice=0.")
    assert lines[0].endswith("(target_test)")
    assert "[cold start: random]" in lines[2]
    assert f"learning curve: {result.files['learning_curve']}" in printed
    assert "mlflow ui --backend-store-uri sqlite:///" in printed

    table = result.table
    assert set(table["label"]) == {"xssr", "entropy", "full"}
    assert table["eval_set"].iloc[0] == "target_test"  # the primary set first
    row = table[(table["label"] == "xssr") & (table["eval_set"] == "target_test")]
    assert row["n_labelled"].tolist() == [3, 6]
    # % of full data exactly when the reference is a ceiling (not clearly below a subset model).
    from alframe.loop.summary import REFERENCE_TOLERANCE

    primary = table[table["eval_set"] == "target_test"]
    reference_dice = primary[primary["label"] == "full"]["dice_mean"].iloc[0]
    best_subset = primary[primary["label"] != "full"]["dice_mean"].max()
    is_ceiling = reference_dice >= best_subset - REFERENCE_TOLERANCE
    assert row["pct_of_full"].notna().tolist() == [is_ceiling, is_ceiling]
    if is_ceiling:
        assert row["pct_of_full"].tolist() == pytest.approx(
            (100 * row["dice_mean"] / reference_dice).tolist()
        )
    assert len(result.results) == 5 * 2  # rounds × evaluation sets

    # The stopping signal: none in round 0, then a Dice on the 12 - 6 items still unlabelled.
    for manifests in (xssr, entropy):
        assert manifests[0]["pool_agreement"] is None and manifests[0]["pool_agreement_items"] == 0
        assert 0.0 <= manifests[1]["pool_agreement"] <= 1.0
        assert manifests[1]["pool_agreement_items"] == 6
    assert full["pool_agreement"] is None and full["pool_predictions"] is None
    assert "agreement=" not in lines[0]
    assert f"agreement={xssr[1]['pool_agreement']:.3f} (6 unlabelled)" in lines[1]
    assert row["agreement_mean"].isna().tolist() == [True, False]
    assert row["agreement_mean"].iloc[1] == pytest.approx(xssr[1]["pool_agreement"])
    assert "### Pool agreement (label-free stopping signal)" in printed
    assert "### Pool agreement" in result.files["summary"].read_text()


def test_experiment_is_tracked_in_mlflow(reference: tuple[ExperimentResult, str]) -> None:
    from mlflow.tracking import MlflowClient

    result, _ = reference
    client = MlflowClient(tracking_uri=result.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    ours = [r for r in runs if r.data.tags.get("alframe.kind")]
    by_kind: dict[str, list[Any]] = {}
    for run in ours:
        by_kind.setdefault(run.data.tags["alframe.kind"], []).append(run)
    parents = {r.info.run_name: r for r in by_kind["arm"] + by_kind["reference"]}
    assert {"xssr/budget/seed0", "entropy/budget/seed0", "full/full/seed0"} <= set(parents)
    xssr = parents["xssr/budget/seed0"]
    assert xssr.info.status == "FINISHED"
    assert xssr.data.params["strategy"] == "xssr" and xssr.data.params["cumulative"] == "[3, 6]"
    children = [
        r for r in by_kind["round"] if r.data.tags.get("mlflow.parentRunId") == xssr.info.run_id
    ]
    assert sorted(r.data.metrics["n_labelled"] for r in children) == [3.0, 6.0]
    by_size = {r.data.metrics["n_labelled"]: r.data.metrics for r in children}
    assert "pool_agreement" not in by_size[3.0]  # round 0: no previous model
    agreement = arm_manifests(result, "xssr")[1]["pool_agreement"]
    assert by_size[6.0]["pool_agreement"] == pytest.approx(agreement)
    assert by_size[6.0]["pool_agreement_items"] == 6.0
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0.0 <= child.data.metrics["target_test_dice_mean"] <= 1.0
        assert "target_test_iou_mean" in child.data.metrics
        assert child.data.params["data.image_size"] == "[32, 32]"
        assert child.data.params["train.max_steps"] == "4"
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"selection.csv", "manifest.json", "recipe.rounds.yaml", "evaluation"} <= artifacts
    (summary,) = [r for r in by_kind["summary"] if r.info.run_id == result.summary_run_id]
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"learning_curve.png", "summary.md", "summary_table.csv"} <= artifacts
    assert "target_test/xssr/aulc_mean" in summary.data.metrics
    table = result.table
    has_pct = table[(table["eval_set"] == "target_test") & (table["label"] == "xssr")]
    assert ("target_test/xssr/n3/pct_of_full" in summary.data.metrics) == bool(
        has_pct["pct_of_full"].notna().iloc[0]
    )
    assert summary.data.metrics["pool_agreement/xssr/n6"] == pytest.approx(agreement)


def test_learner_predicts_and_evaluates(
    reference: tuple[ExperimentResult, str], workdir: Path
) -> None:
    result, _ = reference
    manifest = arm_manifests(result, "xssr")[-1]
    learner = LightningLearner(rounds_recipe(make_recipe(workdir, "whole")))
    learner.restore(result.run_dir / "runs" / "xssr__budget__seed0" / manifest["checkpoint"])
    proba = learner.predict_proba(manifest["labelled_ids"][:2])
    assert proba.shape == (2, 2, 32, 32) and proba.dtype.name == "float32"
    assert torch.allclose(torch.from_numpy(proba.sum(axis=1)), torch.ones(2, 32, 32), atol=1e-5)
    summary = learner.evaluate()
    assert summary["target_test"]["dice_mean"] == pytest.approx(
        manifest["metrics"]["target_test"]["dice_mean"]
    )
    learner.reset()
    assert learner.checkpoint is None


class InitialWeights(L.Callback):
    """Keeps a copy of the model's weights when each fit starts."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_lightning_learner_finetunes_from_the_previous_fit(
    reference: tuple[ExperimentResult, str], workdir: Path, tmp_path: Path
) -> None:
    result, _ = reference
    ids = arm_manifests(result, "xssr")[-1]["labelled_ids"]
    initial = InitialWeights()
    recipe = rounds_recipe(make_recipe(workdir, "whole"))
    learner = LightningLearner(recipe, callbacks=[initial], finetune=True)
    first = learner.fit(ids[:3], tmp_path / "r0", seed=1)
    assert first.extra["init_weights"] is None and first.steps == 4 and first.n_val == 0
    second = learner.fit(ids, tmp_path / "r1", seed=2)
    assert second.extra["init_weights"] == str(first.checkpoint)
    saved = torch.load(first.checkpoint, weights_only=True)
    # Saved weights only (no optimiser state), and the second fit started from them.
    assert "optimizer_states" not in saved and "state_dict" in saved
    for key, value in saved["state_dict"].items():
        if key.startswith("model."):
            torch.testing.assert_close(initial.states[1][key], value, rtol=0, atol=0)
    with pytest.raises(StateError, match="its own out_dir"):
        learner.fit(ids, tmp_path / "r1", seed=3)


class StopAfterRound(LoopHooks):
    def __init__(self, label: str, round_index: int) -> None:
        self.label, self.round_index = label, round_index

    def on_round_end(self, arm: ArmSpec, manifest: Any) -> None:
        if arm.label == self.label and manifest["round"] == self.round_index:
            raise RuntimeError("interrupted between rounds")


class Interrupt(Exception):
    pass


class StopInFit(L.Callback):
    """Raises in the middle of the n-th fit it sees (0-based)."""

    def __init__(self, fit_index: int, step: int = 2) -> None:
        self.fit_index, self.step, self.fits = fit_index, step, -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fits += 1

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.fits == self.fit_index and trainer.global_step >= self.step:
            raise Interrupt("interrupted during training")


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def test_interrupted_between_rounds_then_resumed(
    reference: tuple[ExperimentResult, str], workdir: Path
) -> None:
    from mlflow.tracking import MlflowClient

    result, _ = reference
    # Same embeddings as the reference (its MAE), XSSR only.
    mae = result.run_dir / "mae" / "mae.ckpt"
    recipe = make_recipe(
        workdir, "cut_between", strategies=[{"name": "xssr"}], full_reference=False
    )
    recipe = recipe.model_copy(
        update={"embed": recipe.embed.model_copy(update={"weights": str(mae)})}
    )
    with pytest.raises(RuntimeError, match="between rounds"):
        quiet(run_experiment, recipe, hooks=StopAfterRound("xssr", 0))
    arm_dir = workdir / "cut_between" / "runs" / "xssr__budget__seed0"
    assert (arm_dir / "rounds" / "000" / "manifest.json").is_file()
    assert not (arm_dir / "rounds" / "001").exists()
    with pytest.raises(StateError, match="pass --resume"):
        quiet(run_experiment, recipe)

    resumed = quiet(run_experiment, recipe, resume=True)
    same_rounds(arm_manifests(resumed, "xssr"), arm_manifests(result, "xssr"))

    client = MlflowClient(tracking_uri=resumed.tracking_uri)
    parent_id = (arm_dir / "tracking.json").read_text().split('"')[3]
    assert client.get_run(parent_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    # Round 0 was logged before the interruption and not again.
    assert sorted(r.data.metrics["n_labelled"] for r in children) == [3.0, 6.0]


def test_interrupted_during_training_then_resumed(
    reference: tuple[ExperimentResult, str], workdir: Path
) -> None:
    result, _ = reference
    recipe = make_recipe(workdir, "cut_fit", strategies=[{"name": "entropy"}], full_reference=False)

    def interrupting(recipe: Recipe, catalog: Any, arm: ArmSpec) -> LightningLearner:
        return LightningLearner(recipe, catalog, callbacks=[StopInFit(fit_index=1)])

    with pytest.raises(Interrupt):
        quiet(run_experiment, recipe, track=False, learner_factory=interrupting)
    rounds = workdir / "cut_fit" / "runs" / "entropy__budget__seed0" / "rounds"
    assert (rounds / "000" / "manifest.json").is_file()
    assert (rounds / "001" / "selection.csv").is_file()  # selected, then stopped in training
    assert not (rounds / "001" / "manifest.json").exists()

    resumed = quiet(run_experiment, recipe, resume=True, track=False)
    # Round 1's entropy ranking used round 0's restored model: identical to the reference.
    same_rounds(arm_manifests(resumed, "entropy"), arm_manifests(result, "entropy"))


def test_resume_of_a_finished_experiment_trains_nothing(
    reference: tuple[ExperimentResult, str], workdir: Path, tmp_path: Path
) -> None:
    result, _ = reference
    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)

    def no_training(recipe: Recipe, catalog: Any, arm: ArmSpec) -> Any:
        learner = LightningLearner(recipe, catalog)
        learner.fit = None  # type: ignore[method-assign,assignment]
        return learner

    again = quiet(
        run_experiment,
        make_recipe(workdir, "whole"),
        resume=True,
        out_dir=copy,
        track=False,
        learner_factory=no_training,
    )
    for name, manifests in result.manifests.items():
        same_rounds(again.manifests[name], manifests)
    assert load_manifests(copy).keys() == result.manifests.keys()


def test_corrupted_state_stops_with_a_clear_message(
    reference: tuple[ExperimentResult, str],
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result, _ = reference
    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)
    manifest = copy / "runs" / "entropy__budget__seed0" / "rounds" / "001" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"n_labelled": 6', '"n_labelled": 5'))
    raw = base_raw(workdir, "whole")
    raw["output_dir"] = str(copy)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    code = main(["experiment", "--recipe", str(recipe_file), "--resume", "--no-track"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "checksum mismatch" in err and "rounds/001 (and every later round folder)" in err
    assert "--resume" in err

    # Other settings (here the steps per round) are refused, not silently mixed.
    shutil.rmtree(manifest.parent)
    changed = make_recipe(workdir, "whole", steps_per_round=5)
    with pytest.raises(StateError, match=r"other settings \(.*train.max_steps"):
        quiet(run_experiment, changed, resume=True, out_dir=copy, track=False)


def test_cli_experiment_runs_and_reports(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = base_raw(workdir, "unused", strategies=[{"name": "random"}], full_reference=False)
    raw["experiment"]["schedules"] = [{"name": "one", "batches": [2]}]
    raw["output_dir"] = str(tmp_path / "cli")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    code = main(
        [
            "experiment",
            "--recipe",
            str(recipe_file),
            "--no-track",
            "--set",
            "experiment.steps_per_round=2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "[random seed 0] round 0: n_labelled=2 dice=" in out
    assert "learning curve:" in out and "experiment folder:" in out
    assert (tmp_path / "cli" / "summary.md").is_file()
    assert not (tmp_path / "cli" / "tracking.json").exists()  # --no-track

    code = main(["experiment", "--recipe", str(recipe_file), "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds an experiment; pass --resume" in err


def test_experiment_needs_its_section_and_known_strategies(workdir: Path, tmp_path: Path) -> None:
    raw = base_raw(workdir, "never")
    raw.pop("experiment")
    with pytest.raises(ConfigError, match="no experiment section"):
        run_experiment(recipe_from_dict(raw))
    with pytest.raises(ConfigError, match=r"experiment.strategies\[0\].*unknown"):
        run_experiment(make_recipe(workdir, "never", strategies=[{"name": "xsrr"}]))
    with pytest.raises(ConfigError, match="pool holds only 12"):
        run_experiment(
            make_recipe(workdir, "never", schedules=[{"name": "big", "cumulative": [6, 20]}])
        )
    assert not (workdir / "never").exists()


def test_strategy_embeds_with_the_round_model(workdir: Path) -> None:
    """embedding: model — from round 2 on, CoreSet sees the previous round model's encoder."""
    recipe = make_recipe(
        workdir,
        "model_embedding",
        strategies=[{"name": "coreset", "embedding": "model"}],
        full_reference=False,
    )
    result = quiet(run_experiment, recipe, track=False)
    first, second = arm_manifests(result, "coreset")
    assert first.get("embedding_source") is None and second["embedding_source"] == "model"
    assert first["embedding_hash"] != second["embedding_hash"]
    from alframe.data import DataCatalog
    from alframe.embed import embed_samples
    from alframe.embed.extract import encoder_from_segmentation
    from alframe.loop.experiment import pool_samples

    # The hash is the first round model's encoder, embedded through the ordinary pipeline.
    run = Path(recipe.run_dir) / "runs" / "coreset__budget__seed0"
    embedder = encoder_from_segmentation(run / first["checkpoint"])
    samples = pool_samples(recipe, DataCatalog(recipe))
    assert (
        embed_samples(recipe, samples, embedder=embedder, progress=False).weights_hash
        == (second["embedding_hash"])
    )
