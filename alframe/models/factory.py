"""Build segmentation_models_pytorch models from a :class:`~alframe.config.ModelConfig`.

Nothing here downloads: smp is always called with ``encoder_weights=None`` and timm with
``pretrained=False``. Pretrained weights come from local files only:

* ``model.encoder_weights``: a ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``) or
  ``.safetensors`` file loaded into ``model.encoder``. The file may hold the bare encoder state
  dict, a whole smp model (``encoder.*``), a Lightning checkpoint (``state_dict`` ->
  ``model.encoder.*``) or a timm/torchvision classifier (extra ``fc.*`` keys are reported and
  skipped): the key prefix that matches the encoder best is found automatically.
* ``model.weights``: the same for the whole model (e.g. a model trained elsewhere).

When the file was trained with a different number of input channels, the first convolution is
adapted the way smp adapts ImageNet weights: RGB -> grey sums the kernels over the input channels,
other counts cycle the kernels and rescale them by ``old / new``.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Must be set before timm / smp import huggingface_hub (see ../shared/ENVIRONMENT.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.encoders import is_equivalent_to_timm_universal
from torch import nn

from alframe.config.schema import ModelConfig
from alframe.errors import ConfigError, ModelError

__all__ = [
    "WeightsReport",
    "architecture_names",
    "build_model",
    "encoder_feature_channels",
    "encoder_names",
    "load_encoder_weights",
    "load_model_weights",
    "model_output_channels",
    "read_state_dict",
]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# Keys that usually wrap the real state dict inside a saved file (Lightning, timm, DeiT, ...).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "encoder", "net", "weights")
# How many keys to list in messages before "... and N more".
_SHOWN_KEYS = 8


def architecture_names() -> list[str]:
    """The smp architecture class names accepted by :func:`build_model` (case-insensitive)."""
    return sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def encoder_names() -> list[str]:
    """The native smp encoder names; any timm model is also accepted as ``tu-<timm name>``."""
    return sorted(smp.encoders.get_encoder_names())


def model_output_channels(num_classes: int) -> int:
    """Logit channels for ``num_classes`` classes: 1 (sigmoid) for binary, K (softmax) otherwise."""
    return 1 if num_classes == 2 else num_classes


def _normalise_arch(name: str) -> str:
    # "DeepLabV3Plus", "deeplabv3plus", "deeplab_v3_plus" all mean the same class.
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def _resolve_arch(name: str) -> type[nn.Module]:
    mapping = smp.MODEL_ARCHITECTURES_MAPPING
    key = _normalise_arch(name)
    if key in mapping:
        return mapping[key]
    by_key = {_normalise_arch(n): n for n in architecture_names()}
    close = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.5)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(
        f"model.arch {name!r} is not a segmentation_models_pytorch architecture{hint} "
        f"(available: {', '.join(architecture_names())})"
    )


def _check_encoder(name: str) -> None:
    if name.startswith("tu-"):
        timm_name = name[3:]
        # A pretrained tag ("resnet18.a1_in1k") is allowed but irrelevant: weights are never
        # downloaded, only the architecture is used.
        if timm.is_model(timm_name):
            return
        base = timm_name.split(".", 1)[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join('tu-' + c for c in close)}?" if close else ""
        raise ModelError(
            f"model.encoder {name!r}: timm has no model {timm_name!r}{hint} "
            "(list them with timm.list_models('pattern*'))"
        )
    if name in smp.encoders.encoders or is_equivalent_to_timm_universal(name):
        return
    candidates = encoder_names()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    timm_close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.75)
    suggestions = close + [f"tu-{c}" for c in timm_close]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ModelError(
        f"model.encoder {name!r} is not an smp encoder{hint} "
        "(any timm model works as 'tu-<timm name>', e.g. 'tu-resnet18')"
    )


def _default_kwargs(
    arch_cls: type[nn.Module], depth: int, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Constructor defaults that smp gets wrong for ``encoder_depth != 5`` (or != 3 for PSPNet).

    smp keeps 5-entry ``decoder_channels`` defaults even when the encoder is shallower, and fixes
    the final ``upsampling`` of FPN / PSPNet for their default depth, so their output would not
    have the input's size. Values the recipe sets in ``model.extra`` always win.
    """
    kwargs: dict[str, Any] = {}
    params = inspect.signature(arch_cls.__init__).parameters
    channels = params.get("decoder_channels")
    if (
        channels is not None
        and "decoder_channels" not in extra
        and isinstance(channels.default, tuple | list)
        and len(channels.default) == 5
        and depth < 5
    ):
        # Keep the channels of the blocks that work at the same resolutions as in the full decoder.
        kwargs["decoder_channels"] = tuple(channels.default[-depth:])
    if "upsampling" in params and "upsampling" not in extra:
        if arch_cls is smp.FPN:
            # FPN's finest pyramid level is features[-4], at stride 2 ** (depth - 3).
            kwargs["upsampling"] = 2 ** (depth - 3)
        elif arch_cls is smp.PSPNet:
            # PSPNet works on the deepest feature map only, at stride 2 ** depth.
            kwargs["upsampling"] = 2**depth
    return kwargs


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """Build any smp architecture with any smp or timm (``tu-...``) encoder.

    Args:
        cfg: the recipe's ``model`` section. ``arch`` is looked up case-insensitively;
            ``extra`` is passed to the smp constructor. ``encoder_weights`` / ``weights`` are
            local files loaded after construction (see :func:`load_encoder_weights` and
            :func:`load_model_weights`).
        in_channels: image channels C of the (B, C, H, W) input.
        num_classes: K classes including background. K == 2 gives 1 logit channel (sigmoid);
            K > 2 gives K channels (softmax).

    Returns:
        The smp model mapping (B, C, H, W) images to (B, 1 or K, H, W) logits; H and W must be
        multiples of the encoder's output stride (32 for depth 5).

    Raises:
        ConfigError: ``in_channels`` < 1, ``num_classes`` < 2 or a ``model.extra`` key the
            architecture does not accept.
        ModelError: unknown architecture or encoder (the message lists close matches), a
            combination smp cannot build, or a weights file that cannot be loaded.
    """
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    if num_classes < 2:
        raise ConfigError(
            f"num_classes must be >= 2 (background + at least one class), got {num_classes}"
        )
    arch_cls = _resolve_arch(cfg.arch)
    _check_encoder(cfg.encoder)
    kwargs = _default_kwargs(arch_cls, cfg.encoder_depth, cfg.extra)
    kwargs.update(cfg.extra)
    for reserved in ("encoder_name", "encoder_weights", "in_channels", "classes", "encoder_depth"):
        if reserved in kwargs:
            raise ConfigError(
                f"model.extra.{reserved} is set by alframe itself; use model.encoder / "
                "model.encoder_weights / model.encoder_depth / data.in_channels / data.classes"
            )
    for unsupported in ("activation", "aux_params"):
        # The task applies sigmoid / softmax itself and expects one logits tensor.
        if kwargs.get(unsupported) is not None:
            raise ConfigError(
                f"model.extra.{unsupported} is not supported: alframe models return raw logits"
            )
    accepted = inspect.signature(arch_cls.__init__).parameters
    ignored = sorted(k for k in cfg.extra if k not in accepted)
    if ignored and not cfg.encoder.startswith("tu-"):
        # smp forwards unknown keywords to the encoder, and native smp encoders drop them
        # silently; a typo would otherwise go unnoticed. (timm encoders reject or use them.)
        close = {
            k: difflib.get_close_matches(k, [p for p in accepted if p != "self"], n=1)
            for k in ignored
        }
        hints = ", ".join(f"{k} (did you mean {c[0]}?)" if c else k for k, c in close.items())
        raise ConfigError(
            f"model.extra: smp.{arch_cls.__name__} does not accept {hints}; accepted: "
            f"{', '.join(p for p in accepted if p not in ('self', 'kwargs'))}"
        )
    try:
        model = arch_cls(
            encoder_name=cfg.encoder,
            encoder_weights=None,  # never download; local files are loaded below
            in_channels=in_channels,
            classes=model_output_channels(num_classes),
            encoder_depth=cfg.encoder_depth,
            **kwargs,
        )
    except TypeError as err:
        raise ConfigError(
            f"model.extra {sorted(cfg.extra)} is not accepted by smp.{arch_cls.__name__}: {err}"
        ) from None
    except (ValueError, KeyError, RuntimeError, AttributeError, AssertionError) as err:
        raise ModelError(
            f"cannot build {arch_cls.__name__} with encoder {cfg.encoder!r} "
            f"(encoder_depth={cfg.encoder_depth}, extra={dict(cfg.extra)}): {err}; "
            "try another encoder_depth or encoder"
        ) from None
    if cfg.encoder_weights:
        load_encoder_weights(model, cfg.encoder_weights)
    if cfg.weights:
        load_model_weights(model, cfg.weights)
    return model


def encoder_feature_channels(model: nn.Module) -> list[int]:
    """Channels of the encoder's feature maps, shallowest first.

    Args:
        model: an smp model (or a module with a ``.model`` attribute holding one, such as a
            :class:`~alframe.models.task.SegmentationTask`).

    Returns:
        ``[C_0, C_1, ..., C_depth]`` where entry 0 is the input itself (its channel count) and
        entry i the feature map at stride 2**i; 0 marks a stage the encoder does not produce
        (transformer-style timm encoders start at stride 4). The deepest map is ``[-1]``.

    Raises:
        ModelError: the module has no smp encoder.
    """
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and not hasattr(model, "encoder"):
        model = inner
    encoder = getattr(model, "encoder", None)
    channels = getattr(encoder, "out_channels", None)
    if channels is None:
        raise ModelError(
            f"{type(model).__name__} has no smp encoder with out_channels; pass a model built by "
            "alframe.models.build_model"
        )
    return [int(c) for c in channels]


# --------------------------------------------------------------------------- weight files


@dataclass(frozen=True)
class WeightsReport:
    """What a weights file contributed to a module.

    Attributes:
        source: the file.
        prefix: the key prefix removed from the file (``""`` if none) and ``added`` prefix.
        loaded: target keys that received a tensor from the file.
        adapted: target keys whose tensor was adapted to another number of input channels.
        missing: target keys the file did not provide (they keep their initial values).
        unexpected: file keys (after unwrapping) that the target does not have.
        mismatched: ``(key, file shape, target shape)`` that could not be adapted (skipped).
    """

    source: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph listing loaded / adapted / missing / unexpected / mismatched keys."""
        parts = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.prefix:
            parts.append(f"key prefix {self.prefix}")
        if self.adapted:
            parts.append(f"adapted input channels of {_listing(self.adapted)}")
        if self.missing:
            parts.append(f"missing (left at initial values): {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (ignored): {_listing(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} {tuple(s)} vs {tuple(t)}" for k, s, t in self.mismatched]
            parts.append(f"shape mismatch (skipped): {_listing(shown)}")
        return "; ".join(parts)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    more = len(items) - _SHOWN_KEYS
    return f"{len(items)} [{shown}{f', ... and {more} more' if more > 0 else ''}]"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{key: tensor}`` dict without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. Wrappers such as ``{"state_dict": ...}`` (Lightning) or
    ``{"model": ...}`` are unwrapped; non-tensor entries (epoch counters, ...) are dropped.

    Args:
        path: the file.

    Returns:
        The tensors of the file, on the CPU.

    Raises:
        ModelError: the file is missing, unreadable, or holds no tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"weights file {file} does not exist; check the path in the recipe")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(file), device="cpu")
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch / safetensors raise many unrelated types for bad files
        kind = "safetensors" if file.suffix == ".safetensors" else "PyTorch (weights_only)"
        raise ModelError(
            f"weights file {file} is not a readable {kind} file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); save weights with "
            f"torch.save(model.state_dict(), path) or safetensors.torch.save_file "
            f"(accepted suffixes: {', '.join(_WEIGHT_SUFFIXES)})"
        ) from None
    tensors = _unwrap(raw)
    if not tensors:
        raise ModelError(
            f"weights file {file} holds no tensors (top-level type {type(raw).__name__}); "
            "it must contain a state dict"
        )
    return tensors


def _unwrap(raw: Any) -> dict[str, torch.Tensor]:
    if isinstance(raw, nn.Module):  # cannot happen with weights_only, but cheap to support
        return dict(raw.state_dict())
    if not isinstance(raw, Mapping):
        return {}
    # Wrappers first: a checkpoint may hold a few top-level tensors besides its state dict.
    for key in _WRAPPER_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping):
            found = _unwrap(inner)
            if found:
                return found
    return {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def _split_prefixes(key: str, max_depth: int) -> list[tuple[str, str]]:
    """``(prefix, rest)`` pairs of a dotted key, cutting after 0 .. ``max_depth`` components."""
    parts = key.split(".")
    return [
        (".".join(parts[:n]) + "." if n else "", ".".join(parts[n:]))
        for n in range(min(max_depth, len(parts) - 1) + 1)
    ]


def _best_mapping(
    source: dict[str, torch.Tensor], target_keys: set[str]
) -> tuple[str, str, dict[str, torch.Tensor]]:
    """Find the (removed prefix, added prefix) that makes most file keys match the target.

    The file may be a bare encoder, a whole model (``encoder.``), a Lightning task
    (``model.encoder.``) or a timm classifier loaded into a ``tu-`` encoder (which prefixes
    everything with ``model.``); voting over short prefixes covers these without special cases.
    """
    adds_by_rest: dict[str, list[str]] = {}
    for key in target_keys:
        for add, rest in _split_prefixes(key, 2):
            adds_by_rest.setdefault(rest, []).append(add)
    votes: dict[tuple[str, str], int] = {}
    for key in source:
        for strip, rest in _split_prefixes(key, 3):
            for add in adds_by_rest.get(rest, ()):
                votes[(strip, add)] = votes.get((strip, add), 0) + 1
    strip, add = "", ""
    if votes:
        # Most matching keys first, then the smallest change to the keys.
        strip, add = max(votes, key=lambda p: (votes[p], -len(p[0]) - len(p[1]), p))
    mapped = {add + k[len(strip) :]: v for k, v in source.items() if k.startswith(strip)}
    return strip, add, mapped


def _adapt_input_channels(weight: torch.Tensor, new_in: int) -> torch.Tensor:
    """Adapt a (O, C_old, kh, kw) conv kernel to C_new input channels (as smp does for ImageNet).

    C_new == 1 sums over the old channels, so a grey image that is replicated to RGB would give
    the same response; otherwise kernels are cycled and scaled by C_old / C_new to keep the
    activation scale.
    """
    old_in = weight.shape[1]
    if new_in == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(new_in) % old_in
    return weight[:, index] * (old_in / new_in)


def _apply_state_dict(
    module: nn.Module, path: str | os.PathLike[str]
) -> tuple[WeightsReport, dict[str, torch.Tensor]]:
    source = read_state_dict(path)
    target = module.state_dict()
    strip, add, mapped = _best_mapping(source, set(target))
    loaded: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, tensor in mapped.items():
        if key not in target:
            continue
        want = target[key]
        if tensor.shape == want.shape:
            loaded[key] = tensor.to(dtype=want.dtype)
        elif (
            tensor.ndim == 4
            and want.ndim == 4
            and tensor.shape[0] == want.shape[0]
            and tensor.shape[2:] == want.shape[2:]
        ):
            # Only the input channels differ: the first convolution of a model trained on
            # another number of image channels.
            loaded[key] = _adapt_input_channels(tensor, want.shape[1]).to(dtype=want.dtype)
            adapted.append(key)
        else:
            mismatched.append((key, tuple(tensor.shape), tuple(want.shape)))
    prefix = ""
    if strip or add:
        prefix = f"{strip!r} -> {add!r}"
    report = WeightsReport(
        source=str(path),
        prefix=prefix,
        loaded=sorted(loaded),
        adapted=adapted,
        missing=sorted(set(target) - set(loaded) - {k for k, _, _ in mismatched}),
        unexpected=sorted(set(mapped) - set(target)),
        mismatched=mismatched,
    )
    return report, loaded


def load_encoder_weights(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = False
) -> WeightsReport:
    """Load a local weights file into ``model.encoder``.

    Args:
        model: an smp model.
        path: ``.pth``/``.pt``/``.safetensors`` file (see :func:`read_state_dict`).
        strict: also fail when encoder tensors are missing or have other shapes.

    Returns:
        What was loaded; missing / unexpected / mismatched keys are also reported as a warning.

    Raises:
        ModelError: no tensor of the file fits the encoder (wrong file or wrong encoder), or
            ``strict`` and the file does not cover the encoder.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ModelError(f"{type(model).__name__} has no .encoder to load {path} into")
    report, loaded = _apply_state_dict(encoder, path)
    if not loaded:
        raise ModelError(
            f"encoder weights {path}: no tensor matches encoder {_encoder_label(encoder)} "
            f"({report.summary()}); was the file saved from this encoder?"
        )
    if strict and (report.missing or report.mismatched):
        raise ModelError(f"encoder weights {path} do not cover the encoder: {report.summary()}")
    encoder.load_state_dict(loaded, strict=False)
    if report.missing or report.unexpected or report.mismatched:
        warnings.warn(f"encoder weights {report.summary()}", UserWarning, stacklevel=2)
    return report


def load_model_weights(model: nn.Module, path: str | os.PathLike[str]) -> WeightsReport:
    """Load a local weights file into the whole model.

    Every tensor outside the segmentation head must be present with a compatible shape: a partial
    whole-model load almost always means the wrong architecture. A head of another size (another
    number of classes) is skipped with a warning, so a model can be fine-tuned on new classes.

    Args:
        model: an smp model.
        path: ``.pth``/``.pt``/``.ckpt``/``.safetensors`` file; Lightning checkpoints of
            :class:`~alframe.models.task.SegmentationTask` work too.

    Returns:
        What was loaded.

    Raises:
        ModelError: the file does not fit the model.
    """
    report, loaded = _apply_state_dict(model, path)
    if not loaded:
        raise ModelError(
            f"model weights {path}: no tensor matches the model ({report.summary()}); "
            "was the file saved from an smp model with the same arch and encoder?"
        )
    body_problems = [k for k in report.missing if not k.startswith("segmentation_head.")]
    body_problems += [k for k, _, _ in report.mismatched if not k.startswith("segmentation_head.")]
    if body_problems:
        raise ModelError(
            f"model weights {path} do not fit this model ({report.summary()}); check "
            "model.arch / model.encoder / model.encoder_depth against the run that saved them"
        )
    model.load_state_dict(loaded, strict=False)
    if report.missing or report.unexpected or report.mismatched:
        warnings.warn(f"model weights {report.summary()}", UserWarning, stacklevel=2)
    return report


def _encoder_label(encoder: nn.Module) -> str:
    name = getattr(encoder, "name", None)
    return f"{type(encoder).__name__}({name})" if name else type(encoder).__name__
