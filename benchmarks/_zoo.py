"""Model zoos for the ranking benchmarks: train, adapt and break U-Nets, cached and resumable.

Each zoo member is a folder with ``epoch_NNN.ckpt`` files (alframe checkpoints, loadable with
:func:`alframe.models.load_task`) and a ``done.json`` marker written last, so an interrupted build
restarts at the first unfinished member.

- :func:`train_member`: a plain PyTorch loop on in-memory (N, 1, S, S) images; an "epoch" is a
  fixed number of steps, so training lengths compare across sources of different sizes.
- :func:`adapt_member`: :func:`alframe.adapt.adapt_checkpoint` (what ``alframe adapt`` runs) on an
  unlabelled target pool.
- :func:`degenerate_member`: checkpoints whose predictions cannot be right — all foreground, all
  background, or one fixed mask for every input — made from a trained member by editing its
  weights, so they load and run like any other candidate (grey-box rankers included).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DECODER_CHANNELS = [64, 32, 16, 16, 8]  # slim decoder: 64×64 inputs on a CPU core
STEPS_PER_EPOCH = 8
BATCH = 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def member_recipe(encoder: str, size: int, seed: int, name: str = "ranking_zoo") -> dict[str, Any]:
    """A binary-segmentation recipe for one zoo member (its data section is only descriptive:
    the members train on in-memory arrays)."""
    return {
        "name": name,
        "seed": seed,
        "data": {
            "root": ".",
            "classes": {"background": 0, "foreground": 255},
            "image_size": [size, size],
            "in_channels": 1,
            "normalization": {"method": "percentile", "low": 0.5, "high": 99.5},
            "datasets": {"source": {"path": "source", "mask_format": "binary"}},
            "train": {"dataset": "source"},
        },
        "model": {
            "arch": "Unet",
            "encoder": encoder,
            "encoder_depth": 5,
            "extra": {"decoder_channels": DECODER_CHANNELS},
        },
        "train": {"batch_size": BATCH, "lr": 1e-3, "progress": False, "num_workers": 0},
    }


def _done(run_dir: Path) -> dict[str, Any] | None:
    marker = run_dir / "done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _finish(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    (run_dir / "done.json").write_text(json.dumps(info, indent=2))
    return info


def train_member(
    run_dir: Path,
    x: np.ndarray,
    y: np.ndarray,
    encoder: str,
    epochs: int,
    keep: tuple[int, ...],
    seed: int,
    info: dict[str, Any],
) -> dict[str, Any]:
    """Train one U-Net on (x, y) and save the kept epochs (skipped when already done).

    Args:
        run_dir: the member's folder.
        x: (N, 1, S, S) float32 normalised images.
        y: (N, S, S) int64 binary masks.
        encoder: smp encoder name (random init).
        epochs: epochs of :data:`STEPS_PER_EPOCH` steps of :data:`BATCH` images.
        keep: epochs whose checkpoint is saved.
        seed: seed of the initialisation and the batch order.
        info: plain data stored in ``done.json`` (source, n_train, ...).

    Returns:
        The ``done.json`` content (with ``checkpoints``).
    """
    done = _done(run_dir)
    if done is not None:
        return done
    import torch

    from alframe.adapt import save_task_checkpoint
    from alframe.config import recipe_from_dict
    from alframe.models import SegmentationTask

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # benchmark script: the model's random initialisation
    size = int(x.shape[-1])
    task = SegmentationTask.from_recipe(
        recipe_from_dict(member_recipe(encoder, size, seed)), load_weights=False
    )
    optimiser = torch.optim.AdamW(task.model.parameters(), lr=1e-3, weight_decay=1e-4)
    images, masks = torch.from_numpy(x), torch.from_numpy(y)
    order: list[int] = []
    started = time.perf_counter()
    saved = []
    for epoch in range(1, epochs + 1):
        task.train()
        for _ in range(STEPS_PER_EPOCH):
            if len(order) < min(BATCH, len(x)):
                order.extend(rng.permutation(len(x)).tolist())
            batch = torch.as_tensor(order[:BATCH])
            del order[:BATCH]
            loss = task.loss_fn(task.model(images[batch]), masks[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        task.eval()
        if epoch in keep:
            path = save_task_checkpoint(
                task, run_dir / f"epoch_{epoch:03d}.ckpt", epoch, {"run": run_dir.name}
            )
            saved.append(path.name)
    seconds = round(time.perf_counter() - started, 1)
    log(f"trained {run_dir.name}: {len(x)} images, {epochs} epochs, {seconds} s")
    return _finish(
        run_dir,
        {
            **info,
            "encoder": encoder,
            "epochs": epochs,
            "checkpoints": saved,
            "train_seconds": seconds,
        },
    )


def adapt_member(
    run_dir: Path,
    base_dir: Path,
    pool: np.ndarray,
    method: str,
    epochs: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Adapt the last checkpoint of a trained member to an unlabelled pool (one ckpt per epoch).

    Args:
        run_dir: the adapted member's folder.
        base_dir: the trained member it starts from.
        pool: (N, 1, S, S) unlabelled target images.
        method: ``adabn``, ``mean-teacher`` or ``self-training``.
        epochs: adaptation epochs.
        seed: seed of the adaptation.
    """
    done = _done(run_dir)
    if done is not None:
        return done
    from alframe.adapt import adapt_checkpoint
    from alframe.ranking import TargetImages

    base = json.loads((base_dir / "done.json").read_text())
    params = {"threshold": 0.9} if method == "self-training" else {}
    result = adapt_checkpoint(
        base_dir / base["checkpoints"][-1],
        TargetImages.from_array(pool),
        method,
        run_dir,
        epochs=epochs,
        seed=seed,
        overwrite=True,
        progress=False,
        **params,
    )
    log(f"adapted {run_dir.name}: {method}, {result.seconds:.0f} s")
    return _finish(
        run_dir,
        {
            **{k: base[k] for k in ("source", "n_train", "encoder") if k in base},
            "uda": method,
            "base": base_dir.name,
            "epochs": epochs,
            "checkpoints": [p.name for p in result.checkpoints],
            "train_seconds": round(result.seconds, 1),
        },
    )


DEGENERATE_KINDS = ("all_foreground", "all_background", "fixed_mask")


def degenerate_member(
    run_dir: Path, base_dir: Path, kind: str, fixed_mask: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """A checkpoint that cannot be right on any target, made from a trained member.

    - ``all_foreground`` / ``all_background``: the segmentation head's bias shifted by ±20
      logits (the prediction still varies a little with the input, as a badly calibrated model
      would);
    - ``fixed_mask``: the first convolution zeroed (the network no longer sees its input) and
      the rest fitted for 150 steps to output ``fixed_mask`` — a plausible shape (a source
      mask) predicted for every image, the prior-only model a guard must catch.

    Args:
        run_dir: the degenerate member's folder.
        base_dir: the trained member it is made from.
        kind: one of :data:`DEGENERATE_KINDS`.
        fixed_mask: (S, S) binary mask for ``fixed_mask``.
        seed: seed of the fitting.
    """
    done = _done(run_dir)
    if done is not None:
        return done
    import torch
    from torch import nn

    from alframe.adapt import save_task_checkpoint
    from alframe.models import load_task

    base = json.loads((base_dir / "done.json").read_text())
    task = load_task(base_dir / base["checkpoints"][-1])
    model = task.model
    started = time.perf_counter()
    with torch.no_grad():
        head = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d)][-1]
        if kind in ("all_foreground", "all_background"):
            head.bias += 20.0 if kind == "all_foreground" else -20.0
    if kind == "fixed_mask":
        first = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad():
            first.weight.zero_()
        first.weight.requires_grad_(False)
        torch.manual_seed(seed)  # benchmark script
        task.eval()  # BatchNorm keeps its statistics: the input is constant
        optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        size = fixed_mask.shape[-1]
        inputs = torch.zeros(2, 1, size, size)
        target = torch.from_numpy(np.stack([fixed_mask, fixed_mask]).astype(np.int64))
        for _ in range(150):
            loss = task.loss_fn(model(inputs), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    elif kind not in DEGENERATE_KINDS:
        raise ValueError(f"unknown degenerate kind {kind!r}")
    task.eval()
    path = save_task_checkpoint(task, run_dir / "epoch_000.ckpt", 0, {"degenerate": kind})
    log(f"made degenerate member {run_dir.name} ({kind})")
    return _finish(
        run_dir,
        {
            **{k: base[k] for k in ("source", "n_train", "encoder") if k in base},
            "degenerate": kind,
            "base": base_dir.name,
            "checkpoints": [path.name],
            "train_seconds": round(time.perf_counter() - started, 1),
        },
    )
