"""Candidate source models for transferability ranking, built from spec strings.

Spec syntax (one candidate per spec; an optional ``LABEL@`` prefix names it in tables and in the
``--truth`` CSV, otherwise the spec itself is its name):

==============================  ===========================================================
``seg:PATH`` or ``PATH.ckpt``   encoder of an alframe segmentation checkpoint (``alframe
                                train``); a ``.ckpt`` that is not one is tried as an MAE
``mae:PATH``                    encoder of an alframe MAE (``mae.ckpt``, the
                                ``mae_encoder.safetensors`` file or the ``mae/`` folder)
``timm:NAME=FILE``              timm model NAME with a local state dict FILE (its classifier,
                                when present, gives LEEP its source logits); keys are matched
                                by name, or by order when every shape agrees in order (e.g.
                                EfficientNet-Lite0 weights saved from another implementation)
``torchvision:NAME=FILE``       torchvision model NAME (``mobilenet_v2``, ``resnet18``, ...) with
                                a local state dict FILE
``random:NAME`` / ``random:NAME=SEED``  timm model NAME with random weights (seed 0 by default)
==============================  ===========================================================

Nothing is ever downloaded. Models built from ImageNet-style weight files (``timm:`` and
``torchvision:``) take 3-channel inputs normalised with the ImageNet mean and standard deviation
after the per-image intensity normalisation; alframe checkpoints use their own channel count and
the intensity normalisation of their recipe.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from alframe.errors import ConfigError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPEC_HELP = (
    "seg:PATH | PATH.ckpt (alframe segmentation checkpoint), mae:PATH (alframe MAE), "
    "timm:NAME=WEIGHTS, torchvision:NAME=WEIGHTS, random:NAME[=SEED] (timm, random init); "
    "prefix LABEL@ to name a candidate"
)


@dataclass
class SourceModel:
    """One candidate: an encoder with a feature-map function and an optional source head.

    Attributes:
        name: label used in tables and the truth CSV.
        spec: the spec string it was built from.
        kind: ``segmentation``, ``mae``, ``timm``, ``torchvision`` or ``random``.
        module: the module whose parameters FU differentiates (the encoder, head excluded).
        in_channels: channels the module expects.
        imagenet_normalize: inputs get ImageNet mean / std after intensity normalisation.
        normalization: intensity normalisation settings (``data.normalization`` of a recipe) or
            None for the default.
        feature_map_fn: images (B, C, H, W) → last feature map (B, D, h, w).
        logits_fn: last feature map → source logits (B, Z), when the source has a classifier.
    """

    name: str
    spec: str
    kind: str
    module: nn.Module
    in_channels: int
    imagenet_normalize: bool = False
    normalization: Mapping[str, Any] | None = None
    feature_map_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Intensity-normalised images (B, C, H, W) in [0, 1] → model input (ImageNet norm)."""
        if not self.imagenet_normalize:
            return images
        mean = torch.tensor(IMAGENET_MEAN[: images.shape[1]], dtype=images.dtype)
        std = torch.tensor(IMAGENET_STD[: images.shape[1]], dtype=images.dtype)
        return (images - mean.view(1, -1, 1, 1).to(images.device)) / std.view(1, -1, 1, 1).to(
            images.device
        )

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last encoder feature map (B, D, h, w) of prepared images."""
        run = self.module if self.feature_map_fn is None else self.feature_map_fn
        out = run(images)
        if isinstance(out, list | tuple):
            maps = [o for o in out if isinstance(o, torch.Tensor) and o.ndim == 4]
            if not maps:
                raise ModelError(f"{self.name}: the encoder returned no 4-D feature map")
            out = maps[-1]
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise ModelError(
                f"{self.name}: expected a (B, D, h, w) feature map, got "
                f"{getattr(out, 'shape', type(out))}; only CNN encoders are supported"
            )
        return out

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, D): the global average pool of the last feature map."""
        return self.feature_map(images).mean(dim=(2, 3))

    @property
    def has_source_head(self) -> bool:
        """Whether the candidate has its own source classifier (needed by LEEP)."""
        return self.logits_fn is not None


def split_label(spec: str) -> tuple[str, str]:
    """``"LABEL@SPEC"`` → ``(LABEL, SPEC)``; a spec without a label is its own label."""
    head, sep, tail = spec.partition("@")
    if sep and head and not any(ch in head for ch in "/\\:=") and tail:
        return head, tail
    return spec, spec


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    from alframe.embed.extract import load_state_dict_file

    return load_state_dict_file(path)


def _match_state(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], file: str, what: str
) -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto ``own`` keys: by name (prefixes stripped) or by order."""
    from alframe.embed.extract import _strip_prefixes

    by_name = _strip_prefixes(dict(state), set(own))
    if all(k in by_name and by_name[k].shape == v.shape for k, v in own.items()):
        return {k: by_name[k] for k in own}
    own_items, file_items = list(own.items()), list(state.items())
    if len(own_items) == len(file_items) and all(
        a.shape == b.shape for (_, a), (_, b) in zip(own_items, file_items)
    ):
        return {k: v for (k, _), (_, v) in zip(own_items, file_items)}
    missing = [k for k in own if k not in by_name]
    raise ModelError(
        f"weights file {file} does not fit {what}: {len(missing)} of {len(own)} tensors are "
        f"missing by name (e.g. {', '.join(missing[:3])}) and the shapes do not agree in order; "
        "check the model name"
    )


def _timm_candidate(
    label: str, spec: str, name: str, weights: str | None, seed: int
) -> SourceModel:
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"candidate {spec!r}: {name!r} is not a timm model{hint}")
    state = _read_weights(weights) if weights is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = timm.create_model(name, pretrained=False) if state is not None else None
        num_classes = 0
        if state is not None and probe is not None:
            default_cfg: Mapping[str, Any] = getattr(probe, "default_cfg", None) or {}
            classifier = str(default_cfg.get("classifier", ""))
            own_keys = list(probe.state_dict())
            key = f"{classifier}.weight"
            # When the keys differ (matched by order), look the classifier up by position.
            found: list[torch.Tensor | None] = [state.get(key)]
            if key in own_keys and len(state) == len(own_keys):
                found.append(list(state.values())[own_keys.index(key)])
            for tensor in found:
                if isinstance(tensor, torch.Tensor) and tensor.ndim == 2:
                    num_classes = int(tensor.shape[0])
                    break
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if state is not None:
        own = model.state_dict()
        matched = _match_state(own, state, str(weights), f"timm model {name}")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in matched.items()}, strict=True)
    model.eval()
    timm_model: Any = model  # timm's forward_features / forward_head are untyped

    def feature_map(x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, timm_model.forward_features(x))

    def logits(fmap: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, timm_model.forward_head(fmap))

    return SourceModel(
        name=label,
        spec=spec,
        kind="timm" if weights is not None else "random",
        module=model,
        in_channels=3,
        imagenet_normalize=weights is not None,
        feature_map_fn=feature_map,
        logits_fn=logits if num_classes > 0 else None,
        info={"arch": name, "weights": weights, "seed": seed},
    )


def _torchvision_candidate(label: str, spec: str, name: str, weights: str) -> SourceModel:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"candidate {spec!r}: {err}") from None
    own = model.state_dict()
    matched = _match_state(own, _read_weights(weights), weights, f"torchvision model {name}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in matched.items()}, strict=True)
    model.eval()
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(features, nn.Module) and isinstance(classifier, nn.Module):
        body: nn.Module = features
        head: nn.Module = classifier
    elif hasattr(model, "layer4") and isinstance(getattr(model, "fc", None), nn.Module):
        body = nn.Sequential(
            *[
                getattr(model, n)
                for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
            ]
        )
        head = model.fc
    else:
        raise ModelError(
            f"candidate {spec!r}: torchvision {name} has neither features/classifier nor a "
            "ResNet layout; use a timm: spec instead"
        )

    def logits(fmap: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, head(torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)))

    return SourceModel(
        name=label,
        spec=spec,
        kind="torchvision",
        module=body,
        in_channels=3,
        imagenet_normalize=True,
        feature_map_fn=body,
        logits_fn=logits,
        info={"arch": name, "weights": weights},
    )


def _segmentation_candidate(label: str, spec: str, path: str) -> SourceModel:
    from alframe.models import load_task

    task: Any = load_task(path)
    encoder: nn.Module = task.model.encoder.to("cpu").eval()
    hparams: Mapping[str, Any] = dict(getattr(task, "hparams", {}) or {})
    recipe = hparams.get("recipe") or {}
    normalization = None
    if isinstance(recipe, Mapping):
        data = recipe.get("data") or {}
        if isinstance(data, Mapping) and isinstance(data.get("normalization"), Mapping):
            normalization = dict(data["normalization"])
    model_cfg = hparams.get("model_cfg") or {}
    return SourceModel(
        name=label,
        spec=spec,
        kind="segmentation",
        module=encoder,
        in_channels=int(hparams.get("in_channels", 1)),
        normalization=normalization,
        info={"encoder": str(model_cfg.get("encoder", "")), "checkpoint": path},
    )


def _mae_candidate(label: str, spec: str, path: str) -> SourceModel:
    from alframe.embed.extract import encoder_from_mae

    embedder = encoder_from_mae(path)
    return SourceModel(
        name=label,
        spec=spec,
        kind="mae",
        module=embedder.module,
        in_channels=embedder.in_channels,
        info={"encoder": embedder.name, "checkpoint": str(embedder.source)},
    )


def _existing(path: str, spec: str) -> str:
    if not Path(path).exists():
        raise ConfigError(f"candidate {spec!r}: {path} does not exist; check the path")
    return path


@dataclass(frozen=True)
class SourceSpec:
    """A parsed candidate spec (nothing loaded yet).

    Attributes:
        label: the candidate's name.
        spec: the original string.
        kind: ``seg``, ``mae``, ``path`` (a checkpoint of either kind), ``timm``,
            ``torchvision`` or ``random``.
        name: the architecture (timm / torchvision / random) or ``""``.
        path: the weights / checkpoint file, if any.
        seed: the random-initialisation seed (``random:``).
    """

    label: str
    spec: str
    kind: str
    name: str = ""
    path: str | None = None
    seed: int = 0


def parse_spec(spec: str) -> SourceSpec:
    """Parse and check a candidate spec without loading anything (files must exist).

    Raises:
        ConfigError: malformed spec or a missing file.
    """
    label, body = split_label(spec.strip())
    kind, sep, rest = body.partition(":")
    # Windows drive letters and plain paths have no known kind prefix.
    if not sep or kind not in {"seg", "mae", "timm", "torchvision", "random"}:
        kind, rest = "path", body
    if not rest:
        raise ConfigError(f"candidate {spec!r} is empty after {kind}:; expected {SPEC_HELP}")
    if kind in {"timm", "torchvision"}:
        name, eq, weights = rest.partition("=")
        if not eq or not weights or not name:
            raise ConfigError(
                f"candidate {spec!r}: {kind}: needs a local weights file ({kind}:{name}=FILE); "
                f"for random weights use random:{name}"
            )
        return SourceSpec(label, spec, kind, name.removeprefix("tu-"), _existing(weights, spec))
    if kind == "random":
        name, eq, seed_text = rest.partition("=")
        try:
            seed = int(seed_text) if eq else 0
        except ValueError:
            raise ConfigError(
                f"candidate {spec!r}: the seed after '=' must be an integer"
            ) from None
        return SourceSpec(label, spec, kind, name.removeprefix("tu-"), None, seed)
    return SourceSpec(label, spec, kind, "", _existing(rest, spec))


def load_source(spec: str | SourceSpec) -> SourceModel:
    """Build one candidate from its spec (see the module docstring for the syntax).

    Args:
        spec: e.g. ``"timm:resnet18=r18.pth"``, ``"random:resnet18"``, ``"runs/a/best.ckpt"``,
            ``"imagenet@torchvision:mobilenet_v2=mnv2.pth"``, or a parsed :class:`SourceSpec`.

    Returns:
        The :class:`SourceModel` in eval mode on the CPU.

    Raises:
        ConfigError: malformed spec, unknown model name or missing file.
        ModelError: a file that cannot be loaded into the named model.
    """
    parsed = spec if isinstance(spec, SourceSpec) else parse_spec(spec)
    label, text, kind, path = parsed.label, parsed.spec, parsed.kind, parsed.path
    if kind == "timm":
        return _timm_candidate(label, text, parsed.name, path, seed=0)
    if kind == "torchvision":
        return _torchvision_candidate(label, text, parsed.name, str(path))
    if kind == "random":
        return _timm_candidate(label, text, parsed.name, None, seed=parsed.seed)
    file = str(path)
    if kind == "mae":
        return _mae_candidate(label, text, file)
    if kind == "seg":
        return _segmentation_candidate(label, text, file)
    if Path(file).is_dir() or file.endswith(".safetensors"):
        return _mae_candidate(label, text, file)
    try:
        return _segmentation_candidate(label, text, file)
    except ModelError as seg_error:
        try:
            return _mae_candidate(label, text, file)
        except ModelError:
            raise ModelError(
                f"candidate {text!r} is neither an alframe segmentation checkpoint nor an MAE "
                f"({seg_error})"
            ) from None
