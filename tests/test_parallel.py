"""Device requests (alframe.parallel) and the one-device paths of embeddings and ranking.

Several devices run as several processes in Lightning's predict loop: tests/test_inference.py
checks that two DDP processes give the one-process results; the GPU versions are in
test_gpu.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from alframe.embed import extract_embeddings
from alframe.embed.extract import encoder_from_timm
from alframe.errors import ModelError
from alframe.parallel import resolve_devices
from alframe.ranking import Predictor, TargetImages, create_ranker, rank_models
from tests.test_ranking import _tiny_unet

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------ resolution


def test_device_requests_resolve_to_lists() -> None:
    assert resolve_devices("cpu") == [CPU]
    assert resolve_devices(" CPU ") == [CPU]
    assert resolve_devices("cpu,cpu") == [CPU, CPU]
    assert resolve_devices(["cpu", torch.device("cpu")]) == [CPU, CPU]
    assert resolve_devices(CPU) == [CPU]


def test_auto_uses_every_gpu_or_one_per_launched_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("alframe.parallel._cuda_count", lambda: 0)
    assert resolve_devices("auto") == [CPU]
    assert resolve_devices(None) == [CPU]
    monkeypatch.setattr("alframe.parallel._cuda_count", lambda: 4)
    assert resolve_devices("auto") == [torch.device("cuda", i) for i in range(4)]
    assert resolve_devices(2) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    # torchrun: each process keeps to its own GPU.
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "6")
    assert resolve_devices("auto") == [torch.device("cuda", 2)]
    assert len(resolve_devices("all")) == 4  # asked for explicitly: every GPU anyway
    # srun with several tasks and no torchrun variables.
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert resolve_devices("auto") == [torch.device("cuda", 1)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tpu", "unknown device 'tpu'"),
        ([], "empty device list"),
        (0, "count must be >= 1"),
        (True, "devices must be"),
    ],
)
def test_bad_device_requests_say_what_to_use(spec: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_devices(spec)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages without CUDA")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("all", "sees no CUDA device; use 'auto'"),
        (2, "2 CUDA device\\(s\\) requested but torch sees 0"),
        ("cpu,cuda:1", "torch sees no CUDA device"),
    ],
)
def test_missing_gpus_are_a_clear_error(spec: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_devices(spec)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ embeddings


def test_embeddings_leave_the_encoder_as_it_was() -> None:
    encoder = encoder_from_timm("resnet10t", in_channels=1, seed=1)
    images = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    one = extract_embeddings(encoder, images, batch_size=2, progress=False, device="cpu")
    assert one.shape == (5, encoder.module.feature_info.channels()[-1])
    # Whole batches of the one-process run: the batch size changes nothing but float order.
    np.testing.assert_allclose(
        extract_embeddings(encoder, images, batch_size=5, progress=False, device="cpu"),
        one,
        atol=1e-6,
    )
    encoder.module.train()
    extract_embeddings(encoder, images[:3], batch_size=2, progress=False, device="cpu")
    assert encoder.module.training


def test_recipe_device_key_checks_the_spelling() -> None:
    from alframe.config.schema import EmbedConfig

    assert EmbedConfig().devices == "auto"
    assert EmbedConfig(devices="cuda:0,cuda:1").devices == "cuda:0,cuda:1"
    assert EmbedConfig(devices=["cpu", "cpu"]).devices == ["cpu", "cpu"]
    assert EmbedConfig(devices=2).devices == 2
    for bad, message in (("tpu", "unknown device 'tpu'"), (0, "count must be >= 1"), ([], "empty")):
        with pytest.raises(ValueError, match=message):
            EmbedConfig(devices=bad)


# ------------------------------------------------------------------------------ ranking


def test_a_predictor_runs_on_one_device() -> None:
    batch = np.random.default_rng(0).normal(size=(5, 1, 32, 32)).astype(np.float32)
    net = _tiny_unet()
    predictor = Predictor.from_module(copy.deepcopy(net), name="unet", num_classes=2)
    assert predictor.place("cpu").devices == ["cpu"] and len(predictor.modules) == 1
    proba, features = predictor.predict_with_features(batch)
    assert features.shape[0] == 5
    np.testing.assert_array_equal(proba, predictor.predict_proba(batch))
    with pytest.raises(ModelError, match=r"one model runs on one device.*rank_models"):
        predictor.place("cpu,cpu")


@pytest.mark.parametrize("perturbation", ["dropout", "dropout-all", "gauss"])
def test_cte_scores_through_the_predict_loop_equal_the_in_place_run(perturbation: str) -> None:
    # Two DDP processes against one: tests/test_inference.py.
    rng = np.random.default_rng(1)
    images = TargetImages.from_array(rng.normal(size=(7, 1, 32, 32)).astype(np.float32))
    net = _tiny_unet()
    scores = {}
    for devices in (None, "cpu"):
        ranker = create_ranker("cte-ei", perturbation=perturbation, seed=5)
        predictor = Predictor.from_module(copy.deepcopy(net), name="unet", num_classes=2)
        report = rank_models(
            [predictor], images, [ranker], batch_size=4, progress=False, devices=devices
        )
        scores[devices] = report.results[ranker.describe()]["unet"].per_image
        assert predictor.devices == ["cpu"]  # placed back after scoring
    np.testing.assert_array_equal(scores["cpu"], scores[None])


def test_functions_and_onnx_models_cannot_move_to_other_devices() -> None:
    function = Predictor.from_function(lambda x: x, name="f")
    with pytest.raises(ModelError, match="plain function cannot be moved"):
        function.place("cpu")
    onnx_like = Predictor(name="o", function=lambda x: x, array_input=True)
    assert onnx_like.place("auto") is onnx_like
    assert onnx_like.place("cpu") is onnx_like


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_predictors_travel_to_other_processes(tmp_path: Path) -> None:
    import pickle

    from alframe.ranking import load_predictor

    net = _tiny_unet()
    path = tmp_path / "model.pt"
    torch.jit.trace(net, torch.zeros(1, 1, 32, 32)).save(str(path))
    batch = np.random.default_rng(2).normal(size=(3, 1, 32, 32)).astype(np.float32)
    one = load_predictor(path, device="cpu")
    # What ddp_spawn does to it: a ScriptModule does not pickle, so it is read again from file.
    copy_ = pickle.loads(pickle.dumps(one))
    assert copy_.name == one.name and not copy_.grey_box
    np.testing.assert_array_equal(copy_.predict_proba(batch), one.predict_proba(batch))


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("tpu", "embed.devices = 'tpu'.*unknown device 'tpu'"),
        ("cuda:99", "device 'cuda:99' requested but torch sees"),
    ],
)
def test_embed_cli_refuses_bad_devices_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], devices: str, message: str
) -> None:
    import yaml

    from alframe.cli.main import main
    from alframe.data import synthetic_recipe_dict, write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", n_images=4, image_size=32, seed=0)
    raw = synthetic_recipe_dict(tmp_path / "data", image_size=32)
    raw["embed"] = {"backbone": "timm", "encoder": "resnet10t", "batch_size": 2}
    raw["output_dir"] = str(tmp_path / "run")
    raw["tracking"] = {"enabled": False}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["embed", "--recipe", str(recipe), "--set", f"embed.devices={devices}"])
    error = capsys.readouterr().err
    assert code == 2
    assert re.search(message, error), error
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
