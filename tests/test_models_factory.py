"""Model factory: architectures, encoders, local weight files and their errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from alframe.config import ModelConfig
from alframe.errors import ConfigError, ModelError
from alframe.models import (
    build_model,
    encoder_feature_channels,
    load_encoder_weights,
    load_model_weights,
    read_state_dict,
)


def _cfg(**kw: object) -> ModelConfig:
    base: dict[str, object] = {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 3}
    base.update(kw)
    return ModelConfig.model_validate(base)


@pytest.mark.parametrize(
    ("arch", "encoder", "depth"),
    [
        ("Unet", "resnet18", 3),
        ("fpn", "resnet18", 3),  # lower case: lookup is case-insensitive
        ("Unet", "tu-test_resnet", 3),
        ("FPN", "tu-test_efficientnet", 5),
        ("PSPNet", "resnet18", 5),  # smp's default upsampling only fits depth 3
        ("DeepLabV3Plus", "tu-test_resnet", 5),
        ("Linknet", "resnet18", 3),
    ],
)
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (3, 4)])
def test_output_shapes(
    arch: str, encoder: str, depth: int, in_channels: int, num_classes: int
) -> None:
    model = build_model(
        _cfg(arch=arch, encoder=encoder, encoder_depth=depth), in_channels, num_classes
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, 64, 64))
    expected_channels = 1 if num_classes == 2 else num_classes
    assert logits.shape == (2, expected_channels, 64, 64)


def test_extra_kwargs_are_passed_and_checked() -> None:
    model = build_model(_cfg(extra={"decoder_channels": [32, 16, 8]}), 1, 2)
    assert model.get_parameter("decoder.blocks.0.conv1.0.weight").shape[0] == 32
    with pytest.raises(ConfigError, match="not_a_kwarg"):
        build_model(_cfg(extra={"not_a_kwarg": 1}), 1, 2)
    with pytest.raises(ConfigError, match=r"model\.extra\.classes"):
        build_model(_cfg(extra={"classes": 3}), 1, 2)


def test_bad_class_and_channel_counts() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model(_cfg(), 1, 1)
    with pytest.raises(ConfigError, match="in_channels"):
        build_model(_cfg(), 0, 2)


def test_unknown_arch_suggests_close_matches() -> None:
    with pytest.raises(ModelError, match=r"did you mean .*UnetPlusPlus") as info:
        build_model(_cfg(arch="UnetPlusPluss"), 1, 2)
    assert "available:" in str(info.value)


def test_unknown_encoder_suggests_close_matches() -> None:
    with pytest.raises(ModelError, match=r"did you mean .*resnet18"):
        build_model(_cfg(encoder="resnet81"), 1, 2)
    with pytest.raises(ModelError, match=r"did you mean .*tu-resnet18"):
        build_model(_cfg(encoder="tu-resnet18x"), 1, 2)


def test_unbuildable_combination_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="cannot build DPT"):
        build_model(_cfg(arch="DPT", encoder="resnet18"), 1, 2)


def test_encoder_feature_channels() -> None:
    assert encoder_feature_channels(build_model(_cfg(), 1, 2)) == [1, 64, 64, 128]
    timm_model = build_model(_cfg(encoder="tu-test_resnet"), 3, 2)
    assert encoder_feature_channels(timm_model) == [3, 32, 32, 48]
    with pytest.raises(ModelError, match="no smp encoder"):
        encoder_feature_channels(torch.nn.Linear(2, 2))


def _encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.get_submodule("encoder").state_dict()


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("encoder", ["resnet18", "tu-test_resnet"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_round_trip(tmp_path: Path, encoder: str, suffix: str) -> None:
    torch.manual_seed(0)
    source = build_model(_cfg(encoder=encoder), 1, 2)
    state = {k: v.contiguous() for k, v in _encoder_state(source).items()}
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    fresh = build_model(_cfg(encoder=encoder, encoder_weights=str(path)), 1, 2)
    _assert_same_tensors(_encoder_state(fresh), _encoder_state(source))
    # The decoder is not touched by encoder weights.
    assert not torch.equal(
        fresh.get_parameter("segmentation_head.0.weight"),
        source.get_parameter("segmentation_head.0.weight"),
    )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda model: {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        lambda model: model.state_dict(),  # whole smp model: encoder.* keys
        lambda model: {"model": _encoder_state(model), "epoch": 3},
    ],
    ids=["lightning", "whole_model", "model_wrapper"],
)
def test_encoder_weights_accept_wrappers_and_prefixes(
    tmp_path: Path, wrap: Callable[[torch.nn.Module], dict[str, Any]]
) -> None:
    source = build_model(_cfg(encoder="tu-test_resnet"), 1, 2)
    path = tmp_path / "w.pt"
    torch.save(wrap(source), path)
    fresh = build_model(_cfg(encoder="tu-test_resnet"), 1, 2)
    report = load_encoder_weights(fresh, path, strict=True)
    assert not report.missing and not report.mismatched
    _assert_same_tensors(_encoder_state(fresh), _encoder_state(source))


def test_rgb_encoder_weights_into_grey_model(tmp_path: Path) -> None:
    rgb = build_model(_cfg(), 3, 2)
    path = tmp_path / "rgb.pth"
    torch.save(_encoder_state(rgb), path)
    grey = build_model(_cfg(encoder_weights=str(path)), 1, 2)
    rgb_kernel = rgb.get_parameter("encoder.conv1.weight")
    grey_kernel = grey.get_parameter("encoder.conv1.weight")
    assert grey_kernel.shape[1] == 1
    torch.testing.assert_close(grey_kernel, rgb_kernel.sum(dim=1, keepdim=True))
    # Same response to a grey image replicated over RGB: the point of summing the kernels.
    image = torch.rand(1, 1, 32, 32)
    rgb.eval()
    grey.eval()
    with torch.no_grad():
        grey_features = grey.get_submodule("encoder")(image)[-1]
        rgb_features = rgb.get_submodule("encoder")(image.repeat(1, 3, 1, 1))[-1]
    torch.testing.assert_close(grey_features, rgb_features)
    report = load_encoder_weights(build_model(_cfg(), 1, 2), path)
    assert report.adapted == ["conv1.weight"]


def test_timm_classifier_weights_into_tu_encoder(tmp_path: Path) -> None:
    # A timm classifier state dict (no "model." prefix, extra head keys) fits a tu- encoder.
    import timm

    classifier = timm.create_model("test_resnet", pretrained=False, in_chans=3)
    path = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    model = build_model(_cfg(encoder="tu-test_resnet"), 3, 2)
    with pytest.warns(UserWarning, match="unexpected"):
        report = load_encoder_weights(model, path)
    assert report.loaded and any("fc" in k for k in report.unexpected)
    torch.testing.assert_close(
        model.get_parameter("encoder.model.conv1.0.weight"),
        classifier.get_parameter("conv1.0.weight"),
    )


def test_unrelated_weights_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3), "bar.bias": torch.ones(2)}, path)
    with pytest.raises(ModelError, match="no tensor matches encoder") as info:
        build_model(_cfg(encoder_weights=str(path)), 1, 2)
    assert str(path) in str(info.value)


def test_partial_encoder_weights_warn_with_missing_keys(tmp_path: Path) -> None:
    model = build_model(_cfg(), 1, 2)
    state = {k: v for k, v in _encoder_state(model).items() if k.startswith("conv1")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="missing"):
        report = load_encoder_weights(build_model(_cfg(), 1, 2), path)
    assert report.loaded == ["conv1.weight"]
    with pytest.raises(ModelError, match="do not cover"):
        load_encoder_weights(build_model(_cfg(), 1, 2), path, strict=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a checkpoint", "not a readable PyTorch"),
        (b"", "not a readable"),
    ],
)
def test_corrupt_weights_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        build_model(_cfg(encoder_weights=str(path)), 1, 2)


def test_corrupt_safetensors_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match="safetensors"):
        read_state_dict(path)
    with pytest.raises(ModelError, match="does not exist"):
        build_model(_cfg(encoder_weights=str(tmp_path / "nope.pth")), 1, 2)


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state": _Opaque()}, path)
    with pytest.raises(ModelError, match="weights_only"):
        read_state_dict(path)


class _Opaque:
    """An arbitrary class: weights_only loading must refuse to unpickle it."""


def test_whole_model_weights(tmp_path: Path) -> None:
    source = build_model(_cfg(), 1, 3)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    fresh = build_model(_cfg(weights=str(path)), 1, 3)
    _assert_same_tensors(fresh.state_dict(), source.state_dict())
    # Another number of classes: the head is skipped with a warning, the body is loaded.
    with pytest.warns(UserWarning, match="segmentation_head"):
        other = build_model(_cfg(weights=str(path)), 1, 2)
    torch.testing.assert_close(
        other.get_parameter("encoder.conv1.weight"), source.get_parameter("encoder.conv1.weight")
    )
    # Another architecture: refused.
    with pytest.raises(ModelError, match="do not fit this model"):
        load_model_weights(build_model(_cfg(arch="FPN"), 1, 3), path)
