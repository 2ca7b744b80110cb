"""Device keys of RPG pseudo-labels and source-selection features: ``pseudolabel.devices``,
``alframe round pseudolabel --devices`` and ``alframe rank-sources --devices`` reach
:func:`alframe.inference.predict_rows` with the right :class:`~alframe.inference.Hardware`.

``predict_rows`` is replaced by a spy that runs the step in this process, batch by batch, as
one process of the predict loop would: cheap, and the several-process runs themselves are
checked bit-identical in tests/test_inference.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_annotate_support import assignments, synthetic_recipe, write_mask_folder
from torch.utils.data import default_collate

from alframe import inference
from alframe.cli.main import build_parser, main
from alframe.inference import Hardware, hardware_unless_here

TWO_CPU_PROCESSES = Hardware("cpu", 2, "ddp_spawn")


@pytest.fixture
def predict_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Hardware | None, int]]:
    """(hardware, number of items) of every predict_rows call; the rows are computed here."""
    calls: list[tuple[Hardware | None, int]] = []

    def spy(
        net: Any, step: Any, data: Any, hardware: Any = None, batch_size: int = 32, **_: Any
    ) -> tuple[Any, None]:
        calls.append((hardware, len(data)))
        parts = []
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
                parts.append(step(net, default_collate(items)))
        if isinstance(parts[0], list):  # picklable objects, one per item
            return [row for part in parts for row in part], None
        return np.concatenate([torch.as_tensor(p).cpu().numpy() for p in parts]), None

    monkeypatch.setattr(inference, "predict_rows", spy)
    return calls


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without a GPU, whatever it has."""
    from alframe import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(parallel, "_cuda_count", lambda: 0)


def test_a_request_runs_here_only_when_it_names_the_models_own_device(
    no_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hardware_unless_here("auto", "cpu") is None
    assert hardware_unless_here("cpu", torch.device("cpu")) is None
    assert hardware_unless_here("cpu,cpu", "cpu") == TWO_CPU_PROCESSES
    assert hardware_unless_here(["cpu", "cpu", "cpu"], "cpu") == Hardware("cpu", 3, "ddp_spawn")
    # Inside a torchrun launch of two processes, every process joins it.
    monkeypatch.setattr(inference, "world_size", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert hardware_unless_here("auto", "cpu") == Hardware("cpu", 2, "ddp", 1)


def test_one_gpu_is_used_when_the_model_is_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from alframe import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(parallel, "_cuda_count", lambda: 1)
    assert hardware_unless_here("auto", "cuda:0") is None
    assert hardware_unless_here("auto", "cpu") == Hardware("gpu", (0,), "auto")
    assert hardware_unless_here("cpu", "cuda:0") == Hardware("cpu", 1, "auto")


# -- pseudolabel.devices in the active-learning loop -------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic recipe, its pool samples and an untrained U-Net (features only)."""
    from alframe.data import DataCatalog
    from alframe.models import build_model

    recipe = synthetic_recipe(tmp_path_factory.mktemp("pool"), n_images=16)
    samples = list(DataCatalog(recipe).samples(recipe.data.train))
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.data.in_channels, recipe.num_classes)
    return {"recipe": recipe, "samples": samples, "model": model.eval()}


def _pseudo_labels(pool: dict[str, Any], devices: Any) -> Any:
    from alframe.pseudolabel import pseudo_label_samples

    recipe = pool["recipe"]
    section = recipe.pseudolabel.model_copy(update={"enabled": True, "devices": devices})
    return pseudo_label_samples(
        pool["model"],
        pool["samples"][:4],
        pool["samples"][4:],
        recipe.data,
        recipe.num_classes,
        section,
        batch_size=3,
        eval_transforms=recipe.augment.eval,
    )


def test_pseudolabel_devices_reach_the_predict_loop(
    pool: dict[str, Any], predict_calls: list[Any], no_gpu: None
) -> None:
    here = _pseudo_labels(pool, "cpu")
    assert predict_calls == []  # one process on the model's device: no predict loop
    spread = _pseudo_labels(pool, "cpu,cpu")
    assert predict_calls == [(TWO_CPU_PROCESSES, len(pool["samples"]) - 4)]
    np.testing.assert_array_equal(spread.labels, here.labels)
    np.testing.assert_array_equal(spread.confidence, here.confidence)
    np.testing.assert_array_equal(spread.dice, here.dice)


def test_a_pool_is_labelled_in_passes_of_whole_batches(
    pool: dict[str, Any], predict_calls: list[Any]
) -> None:
    from alframe.data import SegmentationDataset
    from alframe.pseudolabel.features import DecoderFeatures
    from alframe.pseudolabel.pool import pseudo_label_batches
    from alframe.pseudolabel.rpg import RPGPseudoLabeller

    recipe = pool["recipe"]
    dataset = SegmentationDataset(pool["samples"][:7], recipe.data, recipe.augment.eval, False)
    references = SegmentationDataset(pool["samples"][7:], recipe.data, recipe.augment.eval, False)
    items = [references[i] for i in range(len(references))]
    labeller = RPGPseudoLabeller(DecoderFeatures(pool["model"]), 2, batch_size=2)
    labeller.fit(
        torch.stack([item["image"] for item in items]),
        torch.stack([item["mask"] for item in items]),
    )
    here = list(pseudo_label_batches(labeller, dataset, 2))
    # 5 images a pass round down to 2 whole batches: passes of 4 and 3 images.
    spread = list(pseudo_label_batches(labeller, dataset, 2, TWO_CPU_PROCESSES, pass_images=5))
    assert predict_calls == [(TWO_CPU_PROCESSES, 4), (TWO_CPU_PROCESSES, 3)]
    assert len(spread) == len(here) == 4
    for (batch, labels), (same_batch, same_labels) in zip(spread, here, strict=True):
        torch.testing.assert_close(batch["image"], same_batch["image"], rtol=0, atol=0)
        assert torch.equal(labels.labels, same_labels.labels)
        assert torch.equal(labels.confidence, same_labels.confidence)


def test_the_devices_do_not_change_an_experiments_fingerprint(pool: dict[str, Any]) -> None:
    from alframe.loop.experiment import _results_fingerprint

    recipe = pool["recipe"]
    prints = []
    for devices, memory_map in (("auto", "auto"), ("cpu,cpu", True), (2, False)):
        section = recipe.pseudolabel.model_copy(update={"enabled": True, "devices": devices})
        embed = recipe.embed.model_copy(update={"memory_map": memory_map})
        prints.append(
            _results_fingerprint(recipe.model_copy(update={"pseudolabel": section, "embed": embed}))
        )
    assert prints[0] == prints[1] == prints[2]


# -- alframe round pseudolabel --devices ---------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A labelling project whose recipe asks for two CPU processes, with 4 of 12 items
    labelled, and an untrained model in place of a `round train` checkpoint."""
    from alframe import models
    from alframe.annotate import import_labels, init_project, next_round, open_project
    from alframe.models import SegmentationTask

    recipe = synthetic_recipe(tmp_path, n_images=16)
    recipe = recipe.model_copy(
        update={"pseudolabel": recipe.pseudolabel.model_copy(update={"devices": "cpu,cpu"})}
    )
    folder = tmp_path / "project"
    init_project(folder, recipe, annotators=("alice",), overlap=0.0)
    with open_project(folder) as opened:
        next_round(opened, 4)
    masks = write_mask_folder(folder, tmp_path / "masks", assignments(folder))
    with open_project(folder) as opened:
        import_labels(opened, masks)
    torch.manual_seed(0)
    task = SegmentationTask(recipe.model, recipe.train, recipe.num_classes, in_channels=1)
    monkeypatch.setattr(models, "load_task", lambda *a, **k: task.eval())
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"read by the stand-in load_task")
    return {"project": folder, "checkpoint": checkpoint}


def _pseudo_label_files(project: Path) -> dict[str, bytes]:
    from alframe.annotate import open_project, pseudo_label_paths

    with open_project(project, write=False) as opened:
        return {item: path.read_bytes() for item, path in pseudo_label_paths(opened).items()}


def test_round_pseudolabel_takes_devices_from_the_option_or_the_recipe(
    project: dict[str, Path], predict_calls: list[Any], no_gpu: None
) -> None:
    argv = ["round", "pseudolabel", str(project["project"])]
    argv += ["--checkpoint", str(project["checkpoint"]), "--allow-degenerate"]
    assert main([*argv, "--devices", "cpu"]) == 0
    assert predict_calls == []
    here = _pseudo_label_files(project["project"])
    assert main(argv) == 0  # the recipe's pseudolabel.devices: cpu,cpu
    assert predict_calls == [(TWO_CPU_PROCESSES, 8)]  # the 8 unlabelled items
    assert _pseudo_label_files(project["project"]) == here and len(here) == 8


# -- alframe rank-sources --devices ------------------------------------------------------------


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("target")
    rng = np.random.default_rng(0)
    for i in range(6):
        for name, offset in (("normal", 0), ("lesion", 40)):
            image = rng.integers(0, 200, size=(32, 32))
            image[8:24, 8:24] += offset
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_rank_sources_devices_reach_the_predict_loop(
    target: Path, tmp_path: Path, predict_calls: list[Any], no_gpu: None
) -> None:
    import json

    def rank(devices: str) -> list[dict[str, Any]]:
        out = tmp_path / f"{devices.replace(',', '_')}.json"
        argv = ["rank-sources", "--models", "a@random:resnet10t", "b@random:resnet10t=1"]
        argv += ["--target", str(target), "--scores", "lp,logme", "--image-size", "32"]
        argv += ["--no-progress", "--devices", devices, "--out", str(out)]
        assert main(argv) == 0
        return list(json.loads(out.read_text())["ranking"])

    here = rank("cpu")
    assert predict_calls == []
    spread = rank("cpu,cpu")
    assert predict_calls == [(TWO_CPU_PROCESSES, 12)] * 2  # each candidate's 12 images
    assert spread == here


@pytest.mark.parametrize(
    ("command", "devices", "message"),
    [
        (["rank-sources", "--models", "random:resnet10t", "--target", "T"], "tpu", "'tpu'"),
        (["rank-sources", "--models", "random:resnet10t", "--target", "T"], "0", ">= 1"),
        (["rank-sources", "--models", "random:resnet10t", "--target", "T"], "cuda:9", "torch sees"),
        (["round", "pseudolabel", "P"], "cuda:x", "'cuda:x'"),
        (["rank", "-c", "m.ckpt", "-i", "T"], "gpu:0", "'gpu:0'"),
    ],
)
def test_a_bad_device_is_a_one_line_error(
    command: list[str],
    devices: str,
    message: str,
    target: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_gpu: None,
) -> None:
    argv = [str(target) if a == "T" else str(tmp_path) if a == "P" else a for a in command]
    assert main([*argv, "--devices", devices]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alframe: error: ")
    assert message in err


def _devices_action(*command: str) -> argparse.Action:
    parser: Any = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return next(a for a in parser._actions if "--devices" in a.option_strings)


def test_every_devices_option_shares_one_definition() -> None:
    from alframe.cli.commands import devices_option

    actions = [
        _devices_action("rank"),
        _devices_action("rank-sources"),
        _devices_action("round", "pseudolabel"),
    ]
    spellings = "auto (every GPU, else CPU; under torchrun / SLURM every process takes its share)"
    for action in actions:
        assert isinstance(action.help, str) and action.help.startswith(spellings)
    assert [a.default for a in actions] == ["auto", "auto", None]
    assert devices_option("2") == 2 and devices_option("cuda:0,cuda:1") == "cuda:0,cuda:1"
    assert devices_option(None) is None
