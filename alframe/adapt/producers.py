"""Unsupervised domain adaptation (source-free) that writes one checkpoint per epoch.

Every producer starts from a trained alframe checkpoint, sees only **unlabelled** target images,
and writes ``<out>/epoch_NNN.ckpt`` after every epoch in the format of
:func:`alframe.models.fit_segmentation` (``state_dict`` + plain-data ``hyper_parameters``), so
:func:`alframe.models.load_task` restores them with ``torch.load(weights_only=True)`` and
``alframe rank`` can pick the best epoch without labels.

- ``adabn`` — re-estimate every BatchNorm layer's running mean / variance on the target images
  (cumulative average over one pass); nothing else changes. One checkpoint.
- ``mean-teacher`` — a student trained to match an exponential-moving-average teacher under input
  noise; the teacher is saved.
- ``self-training`` — pseudo-labels from the current model (pixels with confidence ≥ threshold;
  others ignored), refreshed every epoch, trained with the task's own loss on noisy inputs.

All randomness (shuffling, input noise) comes from generators seeded with ``seed``; the global
RNGs are not touched.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alframe.errors import ConfigError, StateError
from alframe.ranking.images import TargetImages
from alframe.registry import Registry

__all__ = [
    "ADAPTERS",
    "AdaptResult",
    "adabn",
    "adapt_checkpoint",
    "mean_teacher",
    "save_task_checkpoint",
    "self_training",
]

CHECKPOINT_PATTERN = "epoch_{epoch:03d}.ckpt"
MANIFEST_NAME = "adapt.json"

SaveCallback = Callable[..., None]
"""``save(epoch, row, task=None)``: write the epoch's checkpoint (of ``task``, default the adapted
task itself)."""
Adapter = Callable[..., list[dict[str, float]]]
ADAPTERS: Registry[Adapter] = Registry("adapters")
"""UDA producers by name (``alframe adapt --method NAME``)."""


@dataclass
class AdaptResult:
    """What an adaptation run wrote.

    Attributes:
        method: the producer's name.
        checkpoints: ``epoch_NNN.ckpt`` files in epoch order.
        history: one dict per epoch (``epoch`` and e.g. ``loss``).
        seconds: wall time.
    """

    method: str
    checkpoints: list[Path] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def save_task_checkpoint(
    task: Any, path: str | os.PathLike[str], epoch: int, info: dict[str, Any] | None = None
) -> Path:
    """Write a task's weights + hyper-parameters like ``fit_segmentation`` does (atomically).

    Args:
        task: a :class:`~alframe.models.SegmentationTask`.
        path: the ``.ckpt`` file.
        epoch: stored as ``epoch``.
        info: plain data stored under ``alframe_adapt`` (method, settings, source checkpoint).

    Returns:
        The file.
    """
    import torch

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "epoch": int(epoch),
        "global_step": 0,
        "state_dict": {k: v.detach().cpu().clone() for k, v in task.state_dict().items()},
        "hyper_parameters": _plain(dict(task.hparams)),
        "alframe_adapt": _plain(info or {}),
    }
    temporary = out.with_suffix(out.suffix + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, out)
    return out


def _plain(value: Any) -> Any:
    """Dicts / lists / scalars only, so the checkpoint loads with weights_only=True."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _batches(images: TargetImages, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The target images in a seeded random order, split into batches."""
    data = images.materialise().images
    if data is None or len(data) == 0:
        raise ConfigError("adaptation needs at least one target image")
    order = rng.permutation(len(data))
    return [data[order[s : s + batch_size]] for s in range(0, len(data), batch_size)]


def _noisy(batch: Any, generator: Any, sigma: float) -> Any:
    import torch

    noise = torch.randn(batch.shape, generator=generator, dtype=batch.dtype)
    return batch + sigma * noise


@ADAPTERS.register("adabn")
def adabn(
    task: Any,
    images: TargetImages,
    save: SaveCallback,
    epochs: int = 1,
    batch_size: int = 8,
    seed: int = 0,
) -> list[dict[str, float]]:
    """AdaBN: replace BatchNorm running statistics by target statistics (one pass).

    Only ``running_mean``, ``running_var`` and ``num_batches_tracked`` change; weights and every
    other buffer stay as they were. ``epochs`` is accepted for a uniform interface, but one pass
    is all AdaBN needs (a cumulative average gives the same statistics on every pass), so one
    checkpoint is written.
    """
    import torch
    from torch import nn

    norms = [m for m in task.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ConfigError("adabn: the model has no BatchNorm layers; choose another method")
    momenta = [m.momentum for m in norms]
    task.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative moving average = exact mean over the batches
        module.train()
    rng = np.random.default_rng(seed)
    try:
        with torch.no_grad():
            for batch in _batches(images, batch_size, rng):
                task.model(torch.from_numpy(batch).to(task.device))
    finally:
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
        task.eval()
    row = {"epoch": 1.0, "bn_layers": float(len(norms))}
    save(1, row)
    return [row]


@ADAPTERS.register("mean-teacher")
def mean_teacher(
    task: Any,
    images: TargetImages,
    save: SaveCallback,
    epochs: int = 5,
    batch_size: int = 8,
    seed: int = 0,
    lr: float = 1e-4,
    ema: float = 0.99,
    noise: float = 0.1,
) -> list[dict[str, float]]:
    """Mean teacher: the student matches the EMA teacher's probabilities under input noise.

    Loss: mean squared difference of the student's probabilities on a noisy image and the
    teacher's on the clean image. The teacher (EMA of the student's weights; BatchNorm buffers
    copied from the student) is saved after every epoch.
    """
    import torch

    from alframe.models import logits_to_proba

    if not 0.0 <= ema < 1.0:
        raise ConfigError(f"mean-teacher: ema must be in [0, 1), got {ema}")
    teacher = copy.deepcopy(task).eval()
    student = task
    optimiser = torch.optim.Adam(student.model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        student.train()
        losses = []
        for array in _batches(images, batch_size, rng):
            batch = torch.from_numpy(array)
            with torch.no_grad():
                target = logits_to_proba(teacher.model(batch), teacher.num_classes)
            prediction = logits_to_proba(
                student.model(_noisy(batch, generator, noise)), student.num_classes
            )
            loss = torch.mean((prediction - target) ** 2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            with torch.no_grad():
                for t_param, s_param in zip(
                    teacher.parameters(), student.parameters(), strict=True
                ):
                    t_param.mul_(ema).add_(s_param.detach(), alpha=1.0 - ema)
                for t_buffer, s_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
                    t_buffer.copy_(s_buffer)
        row = {"epoch": float(epoch), "loss": float(np.mean(losses))}
        history.append(row)
        save(epoch, row, teacher)
    student.eval()
    return history


@ADAPTERS.register("self-training")
def self_training(
    task: Any,
    images: TargetImages,
    save: SaveCallback,
    epochs: int = 5,
    batch_size: int = 8,
    seed: int = 0,
    lr: float = 1e-4,
    threshold: float = 0.9,
    noise: float = 0.1,
) -> list[dict[str, float]]:
    """Pseudo-label self-training with confident pixels, pseudo-labels refreshed every epoch.

    Pixels whose predicted-class probability is below ``threshold`` are ignored
    (:data:`~alframe.models.IGNORE_INDEX`); the loss is the task's own Dice + CE on noisy inputs.
    """
    import torch

    from alframe.models import IGNORE_INDEX

    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"self-training: threshold must be in (0, 1), got {threshold}")
    data = images.materialise().images
    if data is None or len(data) == 0:
        raise ConfigError("adaptation needs at least one target image")
    optimiser = torch.optim.Adam(task.model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        # Pseudo-labels from the current model, in evaluation mode, on clean images.
        pseudo = np.empty((len(data), *data.shape[2:]), dtype=np.int64)
        for start in range(0, len(data), batch_size):
            proba = task.predict_proba(torch.from_numpy(data[start : start + batch_size]))
            confidence, label = proba.max(dim=1)
            label[confidence < threshold] = IGNORE_INDEX
            pseudo[start : start + batch_size] = label.cpu().numpy()
        task.train()
        order = rng.permutation(len(data))
        losses = []
        for start in range(0, len(data), batch_size):
            chosen = order[start : start + batch_size]
            batch = torch.from_numpy(data[chosen])
            target = torch.from_numpy(pseudo[chosen])
            if not (target != IGNORE_INDEX).any():
                continue
            loss = task.loss_fn(task.model(_noisy(batch, generator, noise)), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        task.eval()
        kept = float((pseudo != IGNORE_INDEX).mean())
        row = {
            "epoch": float(epoch),
            "loss": float(np.mean(losses)) if losses else math.nan,
            "pseudo_label_fraction": kept,
        }
        history.append(row)
        save(epoch, row)
    return history


def adapt_checkpoint(
    checkpoint: str | os.PathLike[str],
    images: TargetImages,
    method: str,
    out_dir: str | os.PathLike[str],
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    **params: Any,
) -> AdaptResult:
    """Adapt a checkpoint to unlabelled target images, writing one checkpoint per epoch.

    Args:
        checkpoint: an alframe ``.ckpt``.
        images: unlabelled target images, preprocessed like the training data.
        method: one of :data:`ADAPTERS` (``adabn``, ``mean-teacher``, ``self-training``).
        out_dir: the zoo folder; gets ``epoch_NNN.ckpt`` and ``adapt.json``.
        epochs: epochs (default: the method's own).
        seed: seed of shuffling and noise.
        batch_size: images per step.
        overwrite: replace checkpoints already in ``out_dir``.
        progress: print one line per epoch.
        **params: method settings (``lr``, ``ema``, ``threshold``, ``noise``).

    Returns:
        The written checkpoints and per-epoch history.

    Raises:
        ConfigError: unknown method, bad settings.
        StateError: ``out_dir`` already holds epoch checkpoints and ``overwrite`` is False.
        ModelError: the checkpoint cannot be loaded.
    """
    from alframe.models import load_task

    adapter = ADAPTERS.get(method)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    existing = sorted(out.glob("epoch_*.ckpt")) if out.is_dir() else []
    if existing and not overwrite:
        raise StateError(
            f"{out} already holds {len(existing)} epoch checkpoints; choose a new --out folder "
            "or pass --overwrite"
        )
    for stale in existing:
        stale.unlink()
    task = load_task(checkpoint)
    result = AdaptResult(method=method)
    info = {"method": method, "source_checkpoint": str(checkpoint), "seed": seed, **params}
    started = time.perf_counter()

    def save(epoch: int, row: dict[str, float], which: Any = None) -> None:
        path = out / CHECKPOINT_PATTERN.format(epoch=epoch)
        save_task_checkpoint(which if which is not None else task, path, epoch, {**info, **row})
        result.checkpoints.append(path)
        if progress:
            described = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"{method}: epoch {epoch} → {path.name} ({described})", flush=True)

    kwargs: dict[str, Any] = {"batch_size": batch_size, "seed": seed, **params}
    if epochs is not None:
        kwargs["epochs"] = epochs
    accepted = set(inspect.signature(adapter).parameters) - {"task", "images", "save"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"adapt {method}: unknown setting(s) {unknown}; accepted: {sorted(accepted)}"
        )
    result.history = adapter(task, images, save, **kwargs)
    result.seconds = time.perf_counter() - started
    manifest = {
        **info,
        "checkpoints": [p.name for p in result.checkpoints],
        "history": result.history,
        "seconds": result.seconds,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(_plain(manifest), indent=2), encoding="utf-8")
    return result
