"""Embedding extraction: encoders from an MAE, timm or a segmentation checkpoint → (N, D) arrays.

Every encoder is wrapped in an :class:`Embedder` whose module maps an image batch (B, C, H, W) to
a list of feature maps, shallow to deep (smp encoders also return the input first; timm
``features_only`` models do not — only the last two entries are used, so both work). An embedding
is the global average pool of the last stage, optionally concatenated with the pooled
penultimate stage, L2-normalised (docs/methods/xssr.md). Extraction never masks the input.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

# Before timm / smp pull in huggingface_hub: weights are never downloaded (ENVIRONMENT.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from alframe.errors import ModelError
from alframe.inference import Hardware, hardware_for_devices, predict_rows
from alframe.parallel import DeviceSpec

logger = logging.getLogger(__name__)

EMBEDDING_VERSION = "gap-l2-v1"
"""Version of the pooling recipe; part of every cache key so a change invalidates old caches."""

_HASH_CHUNK = 1 << 20

DataSource = Dataset[Any] | DataLoader[Any] | Sequence[Any]
"""What extraction accepts: a map-style dataset (or any sequence of items), or a DataLoader."""


@dataclass
class Embedder:
    """A feature extractor plus what is needed to key its embeddings.

    Attributes:
        module: maps images (B, C, H, W) to a list/tuple of feature maps (B, C_i, H_i, W_i),
            shallow to deep.
        kind: where it came from: ``"mae"``, ``"timm"``, ``"segmentation"`` or ``"module"``.
        name: encoder name (e.g. ``resnet18``, ``tu-resnet10t``), informational.
        in_channels: channels the module expects.
        source: the file it was loaded from, if any.
    """

    module: nn.Module
    kind: str
    name: str
    in_channels: int
    source: Path | None = None

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Run the encoder and keep its 4-D feature maps.

        Args:
            images: (B, C, H, W) float tensor on the module's device.

        Returns:
            Feature maps (B, C_i, H_i, W_i), shallow to deep.
        """
        return module_feature_maps(self.module, images)

    def weights_hash(self) -> str:
        """sha256 of the module's state dict (see :func:`weights_hash`)."""
        return weights_hash(self.module)


def module_feature_maps(module: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Run an encoder module and keep its 4-D feature maps (B, C_i, H_i, W_i), shallow to deep."""
    out = module(images)
    if isinstance(out, torch.Tensor):
        out = [out]
    return [f for f in out if isinstance(f, torch.Tensor) and f.ndim == 4]


# ----------------------------------------------------------------------------------------------
# Hashing


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # Viewing as bytes works for every dtype, including bfloat16, which NumPy cannot represent.
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def state_dict_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict: for each key in sorted order its name, dtype, shape and bytes.

    Args:
        state: parameter / buffer name → tensor.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        header = json.dumps([key, str(value.dtype), list(value.shape)])
        digest.update(header.encode("utf-8"))
        digest.update(_tensor_bytes(value))
    return digest.hexdigest()


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (64 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_hash(
    module_or_file: nn.Module | Embedder | Mapping[str, torch.Tensor] | str | os.PathLike[str],
) -> str:
    """Fingerprint of a set of weights.

    A module (or :class:`Embedder`, or a state dict) is hashed over its state dict tensors —
    buffers such as BatchNorm running statistics included, since they change eval-mode outputs —
    in sorted key order; a path is hashed over the file's bytes. The two kinds of hash differ for
    the same weights: compare like with like (caches always use the module hash).

    Args:
        module_or_file: what to fingerprint.

    Returns:
        64 hex digits.

    Raises:
        ModelError: the path does not exist.
    """
    if isinstance(module_or_file, Embedder):
        return state_dict_hash(module_or_file.module.state_dict())
    if isinstance(module_or_file, nn.Module):
        return state_dict_hash(module_or_file.state_dict())
    if isinstance(module_or_file, Mapping):
        return state_dict_hash(module_or_file)
    path = Path(module_or_file)
    if not path.is_file():
        raise ModelError(f"cannot hash weights file {path}: it does not exist; check the path")
    return file_hash(path)


# ----------------------------------------------------------------------------------------------
# Loading weights


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt`` file as a flat state dict.

    Torch files are read with ``weights_only=True``; a dict nested under ``state_dict`` or
    ``model`` (Lightning / common training scripts) is unwrapped.

    Raises:
        ModelError: the file is missing, unreadable or holds no tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"weights file {file} does not exist; check the path")
    try:
        if file.name.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the same thing to the user
        raise ModelError(
            f"cannot read weights file {file} ({type(err).__name__}: {err}); use a .safetensors "
            "or a .pth/.pt file saved with torch.save(model.state_dict())"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ModelError(f"weights file {file} does not hold a state dict (found {type(state)})")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"weights file {file} holds no tensors; save a model's state_dict")
    return tensors


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    # DataParallel / Lightning / wrapper prefixes: strip the one that makes the most keys match.
    best = state
    best_hits = len(wanted & set(state))
    for prefix in ("module.", "model.", "encoder.", "backbone.", "model.encoder."):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(wanted & set(stripped))
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], file: Path, name: str) -> None:
    """Load ``state`` into ``module``: ignore extra keys (heads), refuse missing ones."""
    own = module.state_dict()
    state = _strip_prefixes(state, set(own))
    matched: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key not in state:
            continue
        value = state[key]
        if value.shape != target.shape:
            if value.ndim == 4 and value.shape[0] == target.shape[0] and key.endswith("weight"):
                # Different input channels in the stem (e.g. RGB weights for grey images):
                # timm's rule sums / repeats the kernels so activations keep their scale.
                from timm.models import adapt_input_conv

                value = adapt_input_conv(int(target.shape[1]), value)
            else:
                raise ModelError(
                    f"weights file {file}: tensor {key!r} has shape {tuple(value.shape)} but "
                    f"{name} expects {tuple(target.shape)}; the file is for another model"
                )
        matched[key] = value.to(target.dtype)
    missing = [k for k in own if k not in matched]
    if missing:
        raise ModelError(
            f"weights file {file} lacks {len(missing)} of {len(own)} tensors of {name} "
            f"(e.g. {', '.join(missing[:3])}); it was saved from a different model — "
            "check the encoder name"
        )
    ignored = sorted(set(state) - set(matched))
    if ignored:
        logger.info(
            "%s: ignored %d tensors not in %s (e.g. %s)", file, len(ignored), name, ignored[0]
        )
    module.load_state_dict(matched, strict=True)


# ----------------------------------------------------------------------------------------------
# Encoder factories


def build_smp_encoder(name: str, in_channels: int, depth: int = 5) -> nn.Module:
    """An smp encoder (smp name or ``tu-<timm name>``) with random weights (never downloads).

    Raises:
        ModelError: unknown encoder name.
    """
    from segmentation_models_pytorch.encoders import get_encoder

    try:
        return get_encoder(name, in_channels=in_channels, depth=depth, weights=None)
    except (KeyError, ValueError, RuntimeError) as err:
        raise ModelError(
            f"cannot build encoder {name!r} ({err}); use an smp encoder name (e.g. resnet18) or "
            "'tu-<timm name>' (e.g. tu-resnet10t)"
        ) from None


def encoder_from_mae(path: str | os.PathLike[str]) -> Embedder:
    """The encoder of an MAE trained by :func:`alframe.embed.train_mae`.

    Args:
        path: ``mae.ckpt``, ``mae_encoder.safetensors`` (with its ``mae_encoder.json``), or the
            ``mae/`` folder that holds them.

    Returns:
        An :class:`Embedder` of kind ``"mae"`` in eval mode on the CPU.

    Raises:
        ModelError: the file is missing or not an alframe MAE checkpoint.
    """
    from alframe.embed.mae import load_mae_encoder

    file = Path(path)
    if file.is_dir():
        file = file / "mae.ckpt"
    encoder, info = load_mae_encoder(file)
    encoder.eval()
    return Embedder(encoder, "mae", str(info["encoder"]), int(info["in_channels"]), file)


def _check_timm_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"{name!r} is not a timm model{hint} (embed.encoder)")


def encoder_from_timm(
    name: str,
    in_channels: int,
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Embedder:
    """Any timm backbone as a multi-stage feature extractor (never downloads weights).

    Args:
        name: timm model name (a leading ``tu-`` is accepted and removed).
        in_channels: image channels (1 or 3).
        weights: optional local ``.pth``/``.pt``/``.safetensors`` state dict of the model
            (classifier keys are ignored; 3-channel stems are adapted to 1 channel).
        seed: seed of the random initialisation used when ``weights`` is None (the global torch
            RNG is left untouched).

    Returns:
        An :class:`Embedder` of kind ``"timm"`` in eval mode on the CPU.

    Raises:
        ModelError: unknown model name, or a weights file that does not fit the model.
    """
    import timm

    timm_name = name.removeprefix("tu-")
    _check_timm_name(timm_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = timm.create_model(
                timm_name, pretrained=False, features_only=True, in_chans=in_channels
            )
        except (RuntimeError, ValueError, TypeError, AttributeError) as err:
            raise ModelError(
                f"timm model {timm_name!r} cannot be built as a multi-stage feature extractor "
                f"({type(err).__name__}: {err}); choose a CNN backbone such as resnet18"
            ) from None
    source = None
    if weights is not None:
        source = Path(weights)
        _load_into(module, load_state_dict_file(source), source, f"timm model {timm_name}")
    module.eval()
    return Embedder(module, "timm", timm_name, in_channels, source)


class EncoderEnsemble(nn.Module):
    """Several encoders of the same input as one: each member's stages are scaled so that their
    global average pool has unit norm, then concatenated along channels.

    Pooling the output (:func:`pool_features`) thus gives the concatenation of the members'
    unit embeddings divided by ``sqrt(K)``: squared distances between two items are the mean of
    the members' squared distances, so the neighbour structure no longer hangs on one training
    seed. Members must produce the same spatial sizes at their last two stages (same encoder
    architecture and input size).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ModelError("an encoder ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) → ``[penultimate, last]`` stages, each (B, sum of members' C_i, h, w)."""
        stages: list[list[torch.Tensor]] = [[], []]
        for member in self.members:
            maps = module_feature_maps(member, images)
            for slot, fmap in zip((0, 1), (maps[-2] if len(maps) > 1 else maps[-1], maps[-1])):
                norm = fmap.float().mean(dim=(2, 3)).norm(dim=1).clamp_min(1e-12)
                stages[slot].append(fmap / norm[:, None, None, None])
        return [torch.cat(stage, dim=1) for stage in stages]


def encoder_ensemble(embedders: Sequence[Embedder]) -> Embedder:
    """One :class:`Embedder` over several (see :class:`EncoderEnsemble`).

    Args:
        embedders: the members, e.g. MAE encoders trained with different seeds; the first one
            names the result.

    Returns:
        An :class:`Embedder` of the first member's kind whose weights hash covers every member.

    Raises:
        ModelError: no members, or members that take different channel counts.
    """
    if not embedders:
        raise ModelError("an encoder ensemble needs at least one member")
    channels = {e.in_channels for e in embedders}
    if len(channels) != 1:
        raise ModelError(
            f"ensemble members take different channel counts {sorted(channels)}; use encoders "
            "trained on the same kind of images"
        )
    if len(embedders) == 1:
        return embedders[0]
    first = embedders[0]
    module = EncoderEnsemble([e.module for e in embedders]).eval()
    name = f"{first.name}x{len(embedders)}"
    return Embedder(module, first.kind, name, first.in_channels, first.source)


def encoder_from_segmentation(checkpoint: str | os.PathLike[str]) -> Embedder:
    """The encoder of an alframe segmentation checkpoint (``alframe.models.load_task``).

    Args:
        checkpoint: a checkpoint written by ``alframe train``.

    Returns:
        An :class:`Embedder` of kind ``"segmentation"`` in eval mode on the CPU.

    Raises:
        ModelError: the checkpoint is missing or cannot be loaded.
    """
    from alframe.models import load_task

    file = Path(checkpoint)
    if not file.is_file():
        raise ModelError(
            f"segmentation checkpoint {file} does not exist; set embed.weights to a checkpoint "
            "written by `alframe train`"
        )
    task: Any = load_task(file)
    encoder: nn.Module = task.model.encoder.to("cpu")
    encoder.eval()
    hparams: Mapping[str, Any] = dict(getattr(task, "hparams", {}) or {})
    model_cfg = hparams.get("model_cfg") or {}
    name = str(model_cfg.get("encoder", "")) if isinstance(model_cfg, Mapping) else ""
    in_channels = int(hparams.get("in_channels") or _first_conv_channels(encoder))
    return Embedder(encoder, "segmentation", name or type(encoder).__name__, in_channels, file)


def _first_conv_channels(module: nn.Module) -> int:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
    raise ModelError(f"cannot tell the input channels of {type(module).__name__}: it has no conv")


# ----------------------------------------------------------------------------------------------
# Extraction


def _split_batch(batch: Any) -> tuple[torch.Tensor, list[str] | None]:
    if isinstance(batch, Mapping):
        images = batch["image"]
        ids = batch.get("id")
        return images, [str(i) for i in ids] if ids is not None else None
    if isinstance(batch, list | tuple):
        return batch[0], None
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(
        f"cannot find images in a batch of type {type(batch).__name__}; the dataset must return "
        "dicts with an 'image' tensor, (image, ...) tuples or tensors"
    )


def pool_features(
    feature_maps: list[torch.Tensor], concat_penultimate: bool = False
) -> torch.Tensor:
    """Global-average-pool the last (and optionally penultimate) stage and L2-normalise.

    With ``concat_penultimate`` each pooled stage is normalised before concatenation, so the
    deeper stage (usually more channels, larger activations) does not drown the other; the
    concatenation is normalised again.

    Args:
        feature_maps: stages (B, C_i, H_i, W_i), shallow to deep.
        concat_penultimate: also use the penultimate stage.

    Returns:
        (B, D) float32 rows of unit L2 norm (an all-zero row stays zero).

    Raises:
        ModelError: fewer stages than needed.
    """
    needed = 2 if concat_penultimate else 1
    if len(feature_maps) < needed:
        raise ModelError(
            f"the encoder returns {len(feature_maps)} feature stage(s); concat_penultimate "
            "needs at least 2 — set embed.concat_penultimate: false"
        )
    pooled = [f.float().mean(dim=(2, 3)) for f in feature_maps[-needed:]]
    if concat_penultimate:
        pooled = [F.normalize(p, dim=1) for p in pooled[::-1]]
    return F.normalize(torch.cat(pooled, dim=1), dim=1)


def _embed_step(
    module: nn.Module, batch: Any, concat_penultimate: bool, in_channels: int, label: str
) -> torch.Tensor:
    """One batch → (b, D) float32 embeddings (the predict step of :func:`predict_rows`)."""
    images, _ = _split_batch(batch)
    _check_images(images, in_channels, label)
    rows = pool_features(
        module_feature_maps(module, images.to(dtype=torch.float32)), concat_penultimate
    )
    return rows.float()


def _check_images(images: torch.Tensor, in_channels: int, label: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if in_channels and images.shape[1] != in_channels:
        raise ModelError(
            f"images have {images.shape[1]} channels but the {label} expects {in_channels}; set "
            "data.in_channels to match the encoder (or use an encoder built for these images)"
        )


def _dataset_of(data: DataSource, batch_size: int, num_workers: int) -> tuple[Any, int, int]:
    """The map-style dataset, batch size and workers behind a data source."""
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            # Rows must follow the dataset order, otherwise they cannot be matched to ids.
            raise ValueError("the DataLoader shuffles; embeddings need shuffle=False")
        return data.dataset, int(data.batch_size or batch_size), int(data.num_workers)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return data, batch_size, num_workers


def iter_embeddings(
    encoder: Embedder | nn.Module,
    data: DataSource,
    batch_size: int = 32,
    concat_penultimate: bool = False,
    progress: bool = True,
    device: DeviceSpec = None,
    num_workers: int = 0,
    hardware: Hardware | None = None,
) -> Iterator[tuple[np.ndarray, list[str] | None]]:
    """Yield ``(embeddings (N, D) float32, ids or None)`` for the whole data set, as one chunk;
    see :func:`extract_embeddings`."""
    yield extract_embeddings_and_ids(
        encoder, data, batch_size, concat_penultimate, progress, device, num_workers, hardware
    )


def extract_embeddings_and_ids(
    encoder: Embedder | nn.Module,
    data: DataSource,
    batch_size: int = 32,
    concat_penultimate: bool = False,
    progress: bool = True,
    device: DeviceSpec = None,
    num_workers: int = 0,
    hardware: Hardware | None = None,
) -> tuple[np.ndarray, list[str] | None]:
    """Like :func:`extract_embeddings`, also returning the items' ``id`` fields.

    Returns:
        ``(embeddings (N, D) float32, ids)``; ``ids`` is None when the batches carry no ``id``.
    """
    embedder = encoder if isinstance(encoder, Embedder) else Embedder(encoder, "module", "", 0)
    dataset, batch_size, num_workers = _dataset_of(data, batch_size, num_workers)
    if len(dataset) == 0:
        raise ValueError("no items to embed: the dataset is empty")
    label = f"{embedder.kind} encoder {embedder.name}"
    # Checked here as well as in every step: a bad first item fails before processes start.
    first, _ = _split_batch(default_collate([dataset[0]]))
    _check_images(first, embedder.in_channels, label)
    target = hardware if hardware is not None else hardware_for_devices(device)
    step = functools.partial(
        _embed_step,
        concat_penultimate=concat_penultimate,
        in_channels=embedder.in_channels,
        label=label,
    )
    array, ids = predict_rows(
        embedder.module,
        step,
        dataset,
        target,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    return np.ascontiguousarray(array, dtype=np.float32), ids


def extract_embeddings(
    encoder: Embedder | nn.Module,
    dataset_or_loader: DataSource,
    batch_size: int = 32,
    concat_penultimate: bool = False,
    progress: bool = True,
    device: DeviceSpec = None,
    num_workers: int = 0,
    hardware: Hardware | None = None,
) -> np.ndarray:
    """Embed every item of a dataset (in order) with an encoder, without masking.

    The encoder runs in Lightning's predict loop (:func:`alframe.inference.predict_rows`), in
    eval mode under ``torch.inference_mode`` (its training flag and device are restored
    afterwards). Each row is the global average pool of the last feature stage
    (optionally concatenated with the penultimate one, see :func:`pool_features`),
    L2-normalised.

    Args:
        encoder: an :class:`Embedder` or a module returning a list of feature maps.
        dataset_or_loader: items are dicts with ``image`` (C, H, W) (as from
            ``SegmentationDataset``), ``(image, ...)`` tuples or image tensors; a DataLoader is
            read for its dataset, batch size and workers (it must not shuffle).
        batch_size: images per forward pass.
        concat_penultimate: also use the penultimate stage.
        progress: show a progress bar.
        device: where the encoder runs (see :func:`alframe.inference.hardware_for_devices`):
            ``None`` / ``"auto"``: every visible GPU, else the CPU (inside a torchrun / SLURM
            launch: this process's shard, DDP); one device (``"cpu"``, ``"cuda"``,
            ``"cuda:N"``); several (``"cuda:0,cuda:1"``, a list, a count, ``"all"``): one
            process per device (``ddp_spawn``). Each process runs whole batches of the
            one-process run and rank 0 puts the rows back in order, so the result does not
            depend on the number of devices.
        num_workers: DataLoader workers (when a dataset is given).
        hardware: overrides ``device`` with Lightning's own keys (accelerator, devices,
            strategy, num_nodes, precision).

    Returns:
        (N, D) float32 array with unit rows, row i = item i.

    Raises:
        ModelError: the images' channel count does not match the encoder, or a CUDA device
            was asked for that this machine does not have.
        ValueError: empty dataset, or a shuffling DataLoader.
    """
    array, _ = extract_embeddings_and_ids(
        encoder,
        dataset_or_loader,
        batch_size,
        concat_penultimate,
        progress,
        device,
        num_workers,
        hardware,
    )
    return array
