"""A full labelling round trip with simulated annotators: export, import, status, train, repeat."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_annotate_support import (
    assignments,
    brush_result,
    cases,
    labelstudio_task,
    make_project,
    polygon_result,
    state_digest,
    synthetic_recipe,
    truth_mask,
    write_mask_folder,
)

from alframe.annotate import (
    STORED_IGNORE,
    dice_agreement,
    import_labels,
    init_project,
    next_round,
    open_project,
    project_status,
    record_pseudo_labels,
)
from alframe.annotate.formats import read_label_png
from alframe.cli.main import main
from alframe.errors import DataError, StateError


def _labelstudio_export(
    project: Path, items: dict[str, list[str]], out: Path
) -> dict[str, np.ndarray]:
    """Bob's labels as a Label Studio export: brush RLE for most, a polygon for one item."""
    names = cases(project)
    expected: dict[str, np.ndarray] = {}
    tasks = []
    for k, item in enumerate(sorted(items)):
        truth = truth_mask(project, item) > 0
        h, w = truth.shape
        if k == 0:
            results = [polygon_result([[25, 25], [75, 25], [75, 75], [25, 75]], "foreground", h, w)]
            labels = np.zeros((h, w), dtype=np.uint8)
            labels[8:25, 8:25] = 1  # roughly; replaced below by the decoder's own raster
        else:
            region = truth.copy()
            region[-4:, :] = ~region[-4:, :]  # bob disagrees with alice at the bottom
            results = [brush_result(region, "foreground")]
            labels = region.astype(np.uint8)
        image = f"/data/local-files/?d=rounds/001/export/images/{names[item]}.png"
        tasks.append(labelstudio_task(item, image, [({"id": 2, "email": "bob@lab.org"}, results)]))
        expected[item] = labels
    out.write_text(json.dumps(tasks))
    return expected


def test_full_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path, budget=6)
    given = assignments(project)
    assert len(given) == 6 and sum(len(v) == 2 for v in given.values()) == 3
    export = project / "rounds" / "001" / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert {it["id"] for it in manifest["items"]} == set(given)
    assert all(not Path(it["image"]).is_absolute() for it in manifest["items"])
    with (export / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"id", "case", "image", "round", "rank", "score", "annotators"} <= set(rows[0])
    tasks = json.loads((export / "labelstudio_tasks.json").read_text())
    assert len(tasks) == 6 and tasks[0]["data"]["image"].startswith(
        "/data/local-files/?d=rounds/001/"
    )
    for name in ("alice", "bob"):
        mine = json.loads((export / "labelstudio" / f"{name}.json").read_text())
        assert {t["data"]["alframe_id"] for t in mine} == {i for i, v in given.items() if name in v}

    # Alice: PNG masks with class values 0/255 and an unlabelled band (ignore value 254).
    alice_items = {i: ["alice"] for i, v in given.items() if "alice" in v}
    write_mask_folder(project, tmp_path / "alice_masks", alice_items, ignore_value=254)
    with open_project(project) as opened:
        report = import_labels(opened, tmp_path / "alice_masks")
    assert len(report.new) == len(alice_items)

    # Bob: a Label Studio export (his per-annotator project), brush RLE + one polygon.
    bob_items = {i: ["bob"] for i, v in given.items() if "bob" in v}
    _labelstudio_export(project, bob_items, tmp_path / "bob.json")
    assert main(["round", "import", str(project), "--from", str(tmp_path / "bob.json")]) == 0
    assert "0 items still pending" in capsys.readouterr().out

    with open_project(project) as opened:
        stored = {
            (r["id"], r["annotator"]): read_label_png(opened.path(r["path"]))
            for r in opened.store.query("SELECT id, annotator, path FROM annotations")
        }
        status = project_status(opened)
    for item in alice_items:
        labels = stored[(item, "alice")]
        assert (labels[:4] == STORED_IGNORE).all()
        np.testing.assert_array_equal(
            labels[4:], (truth_mask(project, item)[4:] > 0).astype(np.uint8)
        )
    assert status["labelled"] == 6 and status["pending"] == 0
    both = [i for i, v in given.items() if len(v) == 2]
    expected_dice = np.mean(
        [dice_agreement(stored[(i, "alice")], stored[(i, "bob")], 2) for i in both]
    )
    assert status["agreement"]["n_items"] == 3
    assert status["agreement"]["mean_dice"] == pytest.approx(expected_dice)
    assert 0.0 < expected_dice < 1.0
    round_one = status["rounds"][0]
    assert round_one["annotators"]["alice"]["pending"] == 0
    assert round_one["annotators"]["bob"]["labelled"] == len(bob_items)

    # Re-importing the same files changes nothing at all.
    before = state_digest(project)
    assert main(["round", "import", str(project), "--from", str(tmp_path / "alice_masks")]) == 0
    assert main(["round", "import", str(project), "--from", str(tmp_path / "bob.json")]) == 0
    assert "0 new, 0 replaced" in capsys.readouterr().out
    assert state_digest(project) == before

    # Round 2: partial import leaves the rest pending; selected items are never re-selected.
    assert main(["round", "next", str(project), "--budget", "2"]) == 0
    round_two = {i: v for i, v in assignments(project).items() if i not in given}
    assert len(round_two) == 2
    first = sorted(round_two)[0]
    write_mask_folder(project, tmp_path / "partial", {first: round_two[first][:1]})
    assert main(["round", "import", str(project), "--from", str(tmp_path / "partial")]) == 0
    assert "1 items still pending" in capsys.readouterr().out
    assert main(["round", "status", str(project), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["pending"] for r in status["rounds"]] == [0, 1]

    # Train on what is labelled (1 epoch, 32², batch 2) and evaluate on the test split.
    assert main(["round", "train", str(project), "--no-track"]) == 0
    out = capsys.readouterr().out
    assert "trained on 7 labelled" in out and "target_test: Dice" in out
    with open_project(project) as opened:
        checkpoint = opened.latest_checkpoint()
    assert checkpoint is not None and checkpoint.is_file()
    assert not Path(str(checkpoint.relative_to(project))).is_absolute()
    assert (project / "train" / "001" / "eval_target_test.csv").is_file()

    # RPG pseudo-labels for the rest of the pool from the 7 human labels, then train on both.
    assert main(["round", "pseudolabel", str(project)]) == 0
    assert "from 7 labelled references" in capsys.readouterr().out
    with open_project(project) as opened:
        status = project_status(opened)
        pseudo_files = {
            r["id"]: read_label_png(opened.path(r["path"]))
            for r in opened.store.query("SELECT id, path FROM pseudo_labels")
        }
        human = set(opened.label_files())
    assert status["pseudo_labelled"] == status["pool"] - 7
    assert not human & set(pseudo_files)  # human labels are never overwritten
    for item, labels in pseudo_files.items():
        assert labels.shape == truth_mask(project, item).shape
        assert set(np.unique(labels)) <= {0, 1}
    assert main(["round", "train", str(project), "--no-track", "--pseudo-labels"]) == 0
    assert f"(+{status['pool'] - 7} pseudo-labelled)" in capsys.readouterr().out


def test_tiff_nifti_and_manifest_imports(tmp_path: Path) -> None:
    import nibabel as nib
    import tifffile

    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=3)
    names = cases(project)
    items = sorted(assignments(project))
    source = tmp_path / "mixed"
    source.mkdir()
    truth = {i: (truth_mask(project, i) > 0).astype(np.uint8) for i in items}
    tifffile.imwrite(source / f"{names[items[0]]}.tif", truth[items[0]].astype(np.int16))
    nib.save(
        nib.Nifti1Image(truth[items[1]][:, :, None], np.eye(4)),
        source / f"{names[items[1]]}.nii.gz",
    )
    # The third by id layout: <dataset>/<stem>.png, classes as indices 0/1.
    (source / "target").mkdir()
    Image.fromarray(truth[items[2]]).save(source / f"{items[2]}.png")
    with open_project(project) as opened:
        report = import_labels(opened, source)
        assert len(report.new) == 3
        for item in items:
            row = opened.store.query("SELECT path FROM annotations WHERE id = ?", (item,))[0]
            np.testing.assert_array_equal(read_label_png(opened.path(row["path"])), truth[item])

    # A manifest CSV pointing at files relative to itself, with --replace for a changed mask.
    changed = truth[items[0]].copy()
    changed[:5] = 1
    (tmp_path / "m").mkdir()
    Image.fromarray(changed * 255).save(tmp_path / "m" / "x.png")
    (tmp_path / "m" / "list.csv").write_text(f"id,mask,annotator\n{items[0]},x.png,solo\n")
    with open_project(project) as opened:
        old = opened.store.query("SELECT path FROM annotations WHERE id = ?", (items[0],))[0][
            "path"
        ]
        report = import_labels(opened, tmp_path / "m" / "list.csv", replace=True)
        assert report.replaced == [(items[0], "solo")]
        new = opened.store.query("SELECT path FROM annotations WHERE id = ?", (items[0],))[0][
            "path"
        ]
        assert new != old and not opened.path(old).exists()
        np.testing.assert_array_equal(read_label_png(opened.path(new)), changed)


def test_pseudo_label_extension_point(tmp_path: Path) -> None:
    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=2)
    items = sorted(assignments(project))
    write_mask_folder(project, tmp_path / "masks", {items[0]: ["solo"]})
    with open_project(project) as opened:
        import_labels(opened, tmp_path / "masks")
        unlabelled = [i for i in opened.item_ids() if i != items[0]][:3]
        fake = {i: np.ones((32, 32), dtype=np.uint8) for i in [items[0], *unlabelled]}
        assert record_pseudo_labels(opened, fake, source="test") == 3  # the human label wins
        status = project_status(opened)
    assert status["pseudo_labelled"] == 3 and status["labelled"] == 1


def test_pseudolabel_needs_labels_and_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=2)
    before = state_digest(project)
    assert main(["round", "pseudolabel", str(project)]) == 2
    assert "nothing is labelled yet" in capsys.readouterr().err
    items = sorted(assignments(project))
    write_mask_folder(project, tmp_path / "masks", {items[0]: ["solo"]})
    with open_project(project) as opened:
        import_labels(opened, tmp_path / "masks")
    before = state_digest(project)
    assert main(["round", "pseudolabel", str(project)]) == 2
    assert "run `alframe round train DIR` first" in capsys.readouterr().err
    missing = tmp_path / "nope.ckpt"
    assert main(["round", "pseudolabel", str(project), "--checkpoint", str(missing)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert state_digest(project) == before


def test_interrupted_init_is_redone_and_a_held_lock_refuses(tmp_path: Path) -> None:
    recipe = synthetic_recipe(tmp_path)
    project = tmp_path / "p"
    project.mkdir()
    (project / "state.db").write_bytes(b"half")  # what a killed init leaves
    with pytest.raises(StateError, match="init` was interrupted"), open_project(project):
        pass
    init_project(project, recipe)
    with pytest.raises(StateError, match="already a labelling project"):
        init_project(project, recipe)
    with (
        open_project(project),
        pytest.raises(StateError, match="another alframe command is working"),
        open_project(project),
    ):
        pass


def test_waiting_open_takes_the_lock_once_the_holder_lets_go(tmp_path: Path) -> None:
    import threading

    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=2)
    holding, order = threading.Event(), []

    def hold() -> None:  # another command (e.g. `round status`) holding the project a moment
        with open_project(project):
            holding.set()
            threading.Event().wait(0.5)
            order.append("released")

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    with (
        pytest.raises(StateError, match="another alframe command is working"),
        open_project(project),
    ):
        pass
    with open_project(project, wait=True) as opened:  # what `round watch` does
        order.append("opened")
        assert opened.store.query("SELECT COUNT(*) AS n FROM selections")[0]["n"] == 2
    holder.join()
    assert order == ["released", "opened"]


def test_round_next_refuses_when_everything_is_selected(tmp_path: Path) -> None:
    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=9)
    with open_project(project) as opened, pytest.raises(DataError, match="already selected"):
        next_round(opened, 2)


def test_recovery_removes_leftovers_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from alframe.config import recipe_to_dict

    recipe = synthetic_recipe(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    project = tmp_path / "p"
    assert (
        main(
            [
                "project",
                "init",
                str(project),
                "--recipe",
                str(tmp_path / "r.yaml"),
                "--annotators",
                "solo",
            ]
        )
        == 0
    )
    assert main(["round", "next", str(project), "--budget", "2"]) == 0
    # What killed commands leave: staging folders, an uncommitted round / training, an
    # unreferenced label file and a temporary file.
    for leftover in ("rounds/.staging-002", "rounds/002", "train/.staging-001", "train/001"):
        (project / leftover).mkdir(parents=True)
        (project / leftover / "x").write_text("partial")
    (project / "labels" / "solo").mkdir(parents=True)
    (project / "labels" / "solo" / "a.0123.png").write_bytes(b"orphan")
    (project / "labels" / "solo" / ".b.png.xyz.tmp").write_bytes(b"half")
    capsys.readouterr()
    assert main(["round", "status", str(project)]) == 0
    out = capsys.readouterr().out
    assert out.count("recovered:") == 5 and "interrupted `round next`" in out
    assert "interrupted `round train`" in out and "2 label files" in out
    assert sorted(p.name for p in (project / "rounds").iterdir()) == ["001"]
    assert not list((project / "train").iterdir()) and not list((project / "labels").rglob("*.*"))
    assert main(["round", "next", str(project), "--budget", "2"]) == 0  # carries on as round 2
    assert (project / "rounds" / "002" / "round.json").is_file()


def _independent_agreement(project: Path, runs: tuple[int, int], ids: list[str]) -> float:
    """Mean binary foreground Dice between two runs' predictions, predicted here from their
    checkpoints (the selection code's predictor) and counted directly."""
    from alframe.workflows.selection import pool_probabilities

    maps = []
    with open_project(project, write=False) as opened:
        samples = [opened.samples()[i] for i in ids]
        for run in runs:
            (row,) = opened.store.query("SELECT checkpoint FROM trainings WHERE run = ?", (run,))
            proba = pool_probabilities(opened.recipe, str(opened.path(row["checkpoint"])), samples)
            maps.append(proba.argmax(axis=1) == 1)
    scores = []
    for a, b in zip(*maps):
        total = int(a.sum()) + int(b.sum())
        scores.append(1.0 if total == 0 else 2 * int((a & b).sum()) / total)
    return float(np.mean(scores))


@pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*")
def test_round_train_measures_model_agreement_on_the_unlabelled_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alframe.annotate import format_status, train_round

    project = make_project(tmp_path, annotators=("solo",), overlap=0.0, budget=3)
    first_round = assignments(project)
    write_mask_folder(project, tmp_path / "r1", first_round)
    with open_project(project) as opened:
        import_labels(opened, tmp_path / "r1")
        first = train_round(opened, track=False)
    assert first.pool_agreement["value"] is None
    assert first.pool_agreement["note"] == "needs two trained rounds"
    assert (first.folder / "pool_predictions.npz").is_file()
    assert main(["round", "status", str(project)]) == 0
    assert "model agreement on the unlabelled pool: needs two trained rounds" in (
        capsys.readouterr().out
    )

    with open_project(project) as opened:
        next_round(opened, 3)
    second_round = {i: v for i, v in assignments(project).items() if i not in first_round}
    write_mask_folder(project, tmp_path / "r2", second_round)
    with open_project(project) as opened:
        import_labels(opened, tmp_path / "r2")
    assert main(["round", "train", str(project), "--no-track"]) == 0
    printed = capsys.readouterr().out
    with open_project(project, write=False) as opened:
        status = project_status(opened)
        labelled = set(opened.label_files())
        unlabelled = [i for i in opened.item_ids() if i not in labelled]
    assert len(labelled) == 6 and len(unlabelled) == status["pool"] - 6 > 0
    record = status["trainings"][-1]["pool_agreement"]
    expected = _independent_agreement(project, (1, 2), unlabelled)
    assert record["value"] == pytest.approx(expected, abs=1e-9) and 0.0 < expected < 1.0
    assert record["n_items"] == len(unlabelled) and record["previous_run"] == 1
    assert f"agreement with run 1 on {len(unlabelled)} unlabelled items: " in printed
    summary = json.loads((project / "train" / "002" / "summary.json").read_text())
    assert summary["pool_agreement"]["value"] == record["value"]
    assert main(["round", "status", str(project)]) == 0
    line = (
        f"model agreement on {len(unlabelled)} unlabelled items: {record['value']:.4f} "
        "(run 2 on 6 labels vs run 1 on 3;"
    )
    assert line in capsys.readouterr().out and line in format_status(status)

    # A run whose predictions were not kept (trained by an earlier alframe): its checkpoint
    # predicts them again. Another epoch makes the third model differ from the second.
    (project / "train" / "002" / "pool_predictions.npz").unlink()
    with open_project(project) as opened:
        third = train_round(opened, track=False, overrides=["train.max_epochs=2"])
    assert third.pool_agreement["previous_run"] == 2
    assert third.pool_agreement["value"] == pytest.approx(
        _independent_agreement(project, (2, 3), unlabelled), abs=1e-9
    )


# ------------------------------------------- issue 17: pseudo-label quality and degenerate models
@dataclass
class _Trained:
    root: Path
    project: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> _Trained:
    from alframe.annotate import train_round

    root = tmp_path_factory.mktemp("pseudo_quality")
    project = make_project(root, annotators=("alice",), overlap=0.0, budget=8, n_images=24)
    write_mask_folder(project, root / "masks", assignments(project))
    with open_project(project) as opened:
        import_labels(opened, root / "masks")
        result = train_round(opened, track=False, overrides=["train.max_epochs=5"])
    return _Trained(root=root, project=project, checkpoint=result.checkpoint)


def _variant(trained: _Trained, name: str, change: Callable[[str, Any], Any]) -> Path:
    """A copy of the trained checkpoint with every state tensor passed through ``change``."""
    import torch

    saved = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    saved["state_dict"] = {k: change(k, v) for k, v in saved["state_dict"].items()}
    path = trained.root / f"{name}.ckpt"
    torch.save(saved, path)
    return path


def _true_dice(project: Path) -> float:
    """Mean foreground Dice of the recorded pseudo-labels against the held-back masks."""
    from alframe.annotate import pseudo_label_paths
    from alframe.loop.pool_agreement import label_agreement

    with open_project(project, write=False) as opened:
        files = pseudo_label_paths(opened)
        masks = {i: s.mask_path for i, s in opened.samples().items()}
    predicted = np.stack([read_label_png(files[i]) for i in sorted(files)])
    truth = np.stack([(np.asarray(Image.open(masks[i])) > 0) for i in sorted(files)])
    return float(label_agreement(predicted, truth.astype(np.uint8), 2).mean())


def test_pseudo_label_quality_measure_tracks_true_dice(trained: _Trained) -> None:
    import torch
    from scipy.stats import spearmanr

    from alframe.annotate import pseudo_label_project

    rows = []
    for k, scale in enumerate((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)):
        generator = torch.Generator().manual_seed(k)

        def noisy(name: str, value: Any, scale: float = scale, g: Any = generator) -> Any:
            if not value.is_floating_point() or value.numel() < 2 or "running_" in name:
                return value
            return value + scale * value.std() * torch.randn(value.shape, generator=g)

        model = _variant(trained, f"noise_{k}", noisy)
        with open_project(trained.project) as opened:
            result = pseudo_label_project(opened, model, allow_degenerate=True)
        assert result.estimated_dice is not None and result.model_agreement is not None
        rows.append(
            (
                _true_dice(trained.project),
                result.estimated_dice,
                result.model_agreement,
                result.mean_confidence,
            )
        )
    table = np.asarray(rows)
    assert np.ptp(table[:, 0]) > 0.1, table  # the models really differ in quality
    estimate = spearmanr(table[:, 0], table[:, 1]).statistic
    agreement = spearmanr(table[:, 0], table[:, 2]).statistic
    confidence = spearmanr(table[:, 0], table[:, 3]).statistic
    assert estimate >= 0.6 and agreement >= 0.6, (estimate, agreement, table)
    assert estimate > confidence, (estimate, confidence, table)
    # The estimate is on the scale of the true Dice, not of the similarity.
    assert np.abs(table[:, 1] - table[:, 0]).mean() < 0.15, table


def test_pseudo_labels_of_a_degenerate_model_are_refused(
    trained: _Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    def all_background(name: str, value: Any) -> Any:
        return value - 50.0 if name.endswith("segmentation_head.0.bias") else value

    model = _variant(trained, "all_background", all_background)
    project = str(trained.project)
    before = state_digest(trained.project)
    assert main(["round", "pseudolabel", project, "--checkpoint", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is degenerate on the" in err and "all background" in err
    assert "nothing was recorded" in err
    assert state_digest(trained.project) == before
    assert (
        main(["round", "pseudolabel", project, "--checkpoint", str(model), "--allow-degenerate"])
        == 0
    )
    out = capsys.readouterr().out
    assert "warning: the model is degenerate on the pool (all background" in out
    assert "estimated Dice of the pseudo-labels: " in out and "mean confidence" not in out
