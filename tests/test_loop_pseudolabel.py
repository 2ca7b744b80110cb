"""The loop's pseudo-label switch: rounds train semi-supervised, the pool's pseudo-labels are stored
apart from human labels with their accuracy against the hidden ground truth, and evaluation never
sees them."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from alframe.config import recipe_from_dict
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset
from alframe.loop import run_experiment

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*",
    "ignore:.*does not have many workers.*",
)


def recipe_dict(root: Path, enabled: bool) -> dict[str, Any]:
    raw = synthetic_recipe_dict(root / "data", image_size=32)
    raw["name"] = "loop_pseudolabel"
    raw["model"] = {"arch": "Unet", "encoder": "tu-test_resnet", "encoder_depth": 3}
    raw["train"].update(
        {"max_epochs": 1, "batch_size": 4, "lr": 0.01, "progress": False, "accelerator": "cpu"}
    )
    raw["experiment"] = {
        "strategies": [{"name": "random"}],
        "schedules": [{"name": "budget", "cumulative": [3, 6]}],
        "seeds": [0],
        "steps_per_round": 6,
        "full_reference": False,
    }
    raw["pseudolabel"] = {
        "enabled": enabled,
        "warmup_fraction": 0.5,
        "ramp_fraction": 0.0,
        "rpg": {"max_per_class": 500},
    }
    raw["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}"}
    raw["output_dir"] = str(root / ("with" if enabled else "without"))
    return raw


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Any]:
    root = tmp_path_factory.mktemp("loop_pl")
    write_synthetic_dataset(root / "data", n_images=12, image_size=32, seed=5)
    out = {}
    for enabled in (True, False):
        with contextlib.redirect_stdout(io.StringIO()):
            out[enabled] = run_experiment(recipe_from_dict(recipe_dict(root, enabled)))
    return out


def only_arm(result: Any) -> list[dict[str, Any]]:
    (manifests,) = result.manifests.values()
    return manifests


def test_rounds_train_semi_supervised_and_store_pool_pseudolabels(runs: dict[bool, Any]) -> None:
    manifests = only_arm(runs[True])
    for manifest in manifests:
        fit = manifest["fit"]
        n_pool = manifest["n_pool"]
        assert fit["semi_supervised"] is True
        assert fit["n_unlabelled"] == n_pool - manifest["n_labelled"]
        assert fit["warmup_steps"] == 3  # half of the 6 steps
        pseudo = manifest["pseudolabels"]
        assert pseudo["n_items"] == n_pool - manifest["n_labelled"]
        assert pseudo["n_references"] == manifest["n_labelled"]
        assert 0.0 <= pseudo["dice_mean"] <= 1.0
        assert pseudo["coverage_mean"] == pytest.approx(1.0)  # no similarity filter

        round_dir = Path(runs[True].run_dir) / "runs" / manifest_folder(runs[True])
        round_dir = round_dir / "rounds" / f"{manifest['round']:03d}"
        stored = np.load(round_dir / "pseudolabels.npz")
        labelled = set(manifest["labelled_ids"])
        # Pseudo-labels exist only for items without a human label, never for the references.
        assert not labelled & set(stored["ids"].tolist())
        assert stored["labels"].shape == (pseudo["n_items"], 32, 32)
        table = pd.read_csv(round_dir / "pseudolabels.csv")
        assert table["dice"].mean() == pytest.approx(pseudo["dice_mean"], abs=1e-5)


def manifest_folder(result: Any) -> str:
    (name,) = result.manifests
    return name


def test_switch_off_trains_supervised_and_writes_no_pseudolabels(runs: dict[bool, Any]) -> None:
    for manifest in only_arm(runs[False]):
        assert "semi_supervised" not in manifest["fit"]
        assert manifest["pseudolabels"] is None
    # Same labelled sets (random picks share the seed), so only the training differs.
    assert [m["labelled_ids"] for m in only_arm(runs[False])] == [
        m["labelled_ids"] for m in only_arm(runs[True])
    ]


def test_pseudolabel_accuracy_is_logged_per_round(runs: dict[bool, Any]) -> None:
    client = mlflow.tracking.MlflowClient(runs[True].tracking_uri)
    experiment = client.get_experiment_by_name("loop_pseudolabel")
    rounds = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`alframe.kind` = 'round'"
    )
    with_pl = [r for r in rounds if "pseudo_dice_mean" in r.data.metrics]
    assert len(with_pl) == 2
    assert all(0.0 <= r.data.metrics["pseudo_dice_mean"] <= 1.0 for r in with_pl)
