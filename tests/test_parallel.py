"""Inference split over several devices (alframe.parallel) for embeddings and ranking.

Repeated CPU "devices" exercise the same code as several GPUs: copies of the model, a batch cut
into chunks run in threads, results gathered in order. Every result must equal the one-device
result; the GPU versions of these checks are in test_gpu.py.
"""

from __future__ import annotations

import copy
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alframe.embed import extract_embeddings
from alframe.embed.extract import encoder_from_timm
from alframe.errors import ModelError
from alframe.parallel import Replicas, resolve_devices
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


# ------------------------------------------------------------------------------ replicas


def _net() -> nn.Module:
    generator = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        net[1].running_mean.copy_(torch.randn(4, generator=generator))
    return net.eval()


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_split_batches_gather_the_one_device_output_in_order(batch: int) -> None:
    net = _net()
    x = torch.randn(batch, 1, 6, 6, generator=torch.Generator().manual_seed(batch))
    expected = net(x)
    replicas = Replicas(net, [CPU, CPU, CPU])
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def run(module: nn.Module, chunk: torch.Tensor, index: int) -> torch.Tensor:
        with lock:
            seen.append((index, chunk.shape[0]))
        return module(chunk)

    out = replicas.gather(run, x)
    assert torch.allclose(out, expected, atol=1e-6)
    # Contiguous near-equal chunks; a batch smaller than the devices leaves some idle.
    sizes = [s for _, s in sorted(seen)]
    assert sizes == [len(c) for c in torch.tensor_split(x, 3) if len(c)]
    assert sorted(i for i, _ in seen) == list(range(min(batch, 3)))


def test_replicas_are_independent_copies_with_the_same_state() -> None:
    net = _net()
    replicas = Replicas(net, [CPU, CPU])
    assert replicas.modules[0] is net
    assert replicas.modules[1] is not net
    assert not replicas.modules[1].training
    for (name, a), (_, b) in zip(
        net.state_dict().items(), replicas.modules[1].state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), name


def test_worker_threads_keep_the_callers_grad_mode() -> None:
    replicas = Replicas(_net(), [CPU, CPU])
    x = torch.randn(4, 1, 5, 5)

    def modes(_m: nn.Module, chunk: torch.Tensor, _i: int) -> tuple[bool, bool]:
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    assert replicas.map(modes, x) == [(True, False)] * 2
    with torch.inference_mode():
        assert replicas.map(modes, x) == [(False, True)] * 2
    with torch.no_grad():
        assert replicas.map(modes, x) == [(False, False)] * 2


def test_an_error_on_one_device_reaches_the_caller() -> None:
    replicas = Replicas(_net(), [CPU, CPU])

    def fail_second(module: nn.Module, chunk: torch.Tensor, index: int) -> torch.Tensor:
        if index == 1:
            raise RuntimeError("out of memory on replica 1")
        return module(chunk)

    with pytest.raises(RuntimeError, match="replica 1"):
        replicas.map(fail_second, torch.zeros(4, 1, 5, 5))
    with pytest.raises(ValueError, match="empty batch"):
        replicas.map(fail_second, torch.zeros(0, 1, 5, 5))


# ------------------------------------------------------------------------------ embeddings


def test_embeddings_on_several_devices_equal_one_device() -> None:
    encoder = encoder_from_timm("resnet10t", in_channels=1, seed=1)
    images = torch.randn(11, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    one = extract_embeddings(encoder, images, batch_size=4, progress=False, device="cpu")
    three = extract_embeddings(
        encoder, images, batch_size=4, progress=False, device=["cpu", "cpu", "cpu"]
    )
    assert one.shape == three.shape == (11, encoder.module.feature_info.channels()[-1])
    np.testing.assert_allclose(three, one, atol=1e-5)
    # The encoder is left as it was: one module, in its original mode.
    encoder.module.train()
    extract_embeddings(encoder, images[:3], batch_size=2, progress=False, device="cpu,cpu")
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


def _grey_box(net: nn.Module, devices: str) -> Predictor:
    return Predictor.from_module(copy.deepcopy(net), name="unet", num_classes=2).place(devices)


def test_predictions_and_decoder_features_equal_one_device() -> None:
    batch = np.random.default_rng(0).normal(size=(5, 1, 32, 32)).astype(np.float32)
    net = _tiny_unet()
    one = _grey_box(net, "cpu")
    three = _grey_box(net, "cpu,cpu,cpu")
    assert three.devices == ["cpu", "cpu", "cpu"]
    assert len(three.modules) == 3
    np.testing.assert_allclose(three.predict_proba(batch), one.predict_proba(batch), atol=1e-5)
    proba_1, features_1 = one.predict_with_features(batch)
    proba_3, features_3 = three.predict_with_features(batch)
    assert features_3.shape == features_1.shape
    np.testing.assert_allclose(features_3, features_1, atol=1e-5)
    np.testing.assert_allclose(proba_3, proba_1, atol=1e-5)
    # Back to one device: the copies are dropped.
    three.place("cpu")
    assert three.devices == ["cpu"] and len(three.modules) == 1


@pytest.mark.parametrize("perturbation", ["dropout", "dropout-all", "gauss"])
def test_cte_scores_do_not_depend_on_the_device_count(perturbation: str) -> None:
    rng = np.random.default_rng(1)
    images = TargetImages.from_array(rng.normal(size=(7, 1, 32, 32)).astype(np.float32))
    net = _tiny_unet()
    scores = {}
    for devices in ("cpu", "cpu,cpu", "cpu,cpu,cpu"):
        ranker = create_ranker("cte-ei", perturbation=perturbation, seed=5)
        predictor = Predictor.from_module(copy.deepcopy(net), name="unet", num_classes=2)
        report = rank_models(
            [predictor], images, [ranker], batch_size=4, progress=False, devices=devices
        )
        scores[devices] = report.results[ranker.describe()]["unet"].per_image
        assert predictor.devices == ["cpu"]  # placed back after scoring
    np.testing.assert_allclose(scores["cpu,cpu"], scores["cpu"], atol=1e-6)
    np.testing.assert_allclose(scores["cpu,cpu,cpu"], scores["cpu"], atol=1e-6)


def test_functions_and_onnx_models_cannot_move_to_other_devices() -> None:
    function = Predictor.from_function(lambda x: x, name="f")
    with pytest.raises(ModelError, match="plain function cannot be moved"):
        function.place("cpu,cpu")
    onnx_like = Predictor(name="o", function=lambda x: x, array_input=True)
    assert onnx_like.place("auto") is onnx_like
    assert onnx_like.place("cpu") is onnx_like


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_models_replicate(tmp_path: Path) -> None:
    from alframe.ranking import load_predictor

    net = _tiny_unet()
    path = tmp_path / "model.pt"
    torch.jit.trace(net, torch.zeros(1, 1, 32, 32)).save(str(path))
    batch = np.random.default_rng(2).normal(size=(3, 1, 32, 32)).astype(np.float32)
    one = load_predictor(path, device="cpu")
    two = load_predictor(path, device="cpu,cpu")
    assert two.devices == ["cpu", "cpu"] and not two.grey_box
    np.testing.assert_allclose(two.predict_proba(batch), one.predict_proba(batch), atol=1e-5)


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
