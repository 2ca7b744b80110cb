"""A small embed + rank (+ true Dice) + pseudo-label workload, run in one process or under a multi-process launch.

``torchrun --standalone --nproc-per-node 2 tests/ddp_check.py OUT.npz`` runs it with every
process taking its share through Lightning's predict loop (``devices="auto"`` inside a launch);
global rank 0 writes the results. ``tests/test_inference.py`` compares them with
:func:`workload` run in the test process.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script by torchrun: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_IMAGES = 13
N_MODELS = 3
RANKERS = (("cte-ei", "dropout"), ("cte-ei", "gauss"), ("cte-nhd", "gauss"))


def images() -> torch.Tensor:
    """(13, 1, 32, 32) float32 images, seeded."""
    return torch.randn(N_IMAGES, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def candidates() -> list[Any]:
    """Three tiny U-Nets with different weights (seeded), as grey-box predictors."""
    from alframe.ranking import Predictor
    from tests.test_ranking import _tiny_unet

    out = []
    for i in range(N_MODELS):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(10 + i)
            net = _tiny_unet()
        out.append(Predictor.from_module(copy.deepcopy(net), name=f"unet{i}", num_classes=2))
    return out


def workload(devices: Any = "auto", hardware: Any = None) -> dict[str, np.ndarray]:
    """Embeddings, CTE per-image scores and RPG pseudo-labels, computed where ``devices`` /
    ``hardware`` say.

    Returns:
        ``embeddings`` (13, D), ``<ranker>/<model>`` → (13,) per-image scores,
        ``true-dice/<model>`` → (13,) Dice against threshold labels, and
        ``pseudo/labels``, ``pseudo/confidence``, ``pseudo/similarity`` (13, 32, 32).
    """
    from alframe.embed.extract import encoder_from_timm, extract_embeddings
    from alframe.inference import hardware_for_devices
    from alframe.ranking import TargetImages, create_ranker, rank_models, validate

    encoder = encoder_from_timm("resnet10t", in_channels=1, seed=1)
    x = images()
    out: dict[str, np.ndarray] = {
        "embeddings": extract_embeddings(
            encoder, x, batch_size=4, progress=False, device=devices, hardware=hardware
        )
    }
    rankers = [create_ranker(name, perturbation=p, seed=5) for name, p in RANKERS]
    predictors = candidates()
    targets = TargetImages.from_array(x.numpy(), labels=(x[:, 0] > 0.3).long().numpy())
    report = rank_models(
        predictors,
        targets,
        rankers,
        batch_size=4,
        progress=False,
        devices=devices,
        hardware=hardware,
    )
    validate(report, predictors, targets, batch_size=4, devices=devices, hardware=hardware)
    for label, by_model in report.results.items():
        for model, result in by_model.items():
            out[f"{label}/{model}"] = result.per_image
    for model, dice in report.per_image_dice.items():
        out[f"true-dice/{model}"] = dice
    target_hardware = hardware or hardware_for_devices(devices)
    out.update(pseudo_labels(x, target_hardware))
    out.update(transfer_features(x, target_hardware))
    return out


def transfer_features(x: torch.Tensor, hardware: Any) -> dict[str, np.ndarray]:
    """Source-selection inputs of a random-weight timm candidate: pooled features + source
    logits per image (``class`` targets) and seeded pixel samples (``pixels`` targets)."""
    from alframe.transfer.pipeline import compute_inputs
    from alframe.transfer.sources import load_source
    from alframe.transfer.targets import TargetSet

    # 128² so that the last feature map has 4 × 4 positions to sample pixels from.
    big = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
    raw = big.permute(0, 2, 3, 1).numpy()
    masks = (big[:, 0] > 0.3).long().numpy()
    paths = [Path(f"{i}.png") for i in range(N_IMAGES)]
    labels = np.arange(N_IMAGES) % 2
    out: dict[str, np.ndarray] = {}
    for mode in ("class", "pixels"):
        target = TargetSet(
            paths, raw, labels, ["a", "b"], mode, masks if mode == "pixels" else None
        )
        source = load_source("random:resnet10t=3")
        inputs = compute_inputs(
            source, target, {"features", "source_logits"}, batch_size=4, hardware=hardware
        ).inputs
        out[f"transfer-{mode}/features"] = inputs.features
        if mode == "pixels":
            out["transfer-pixels/labels"] = inputs.labels
        elif inputs.source_logits is not None:
            out["transfer-class/logits"] = inputs.source_logits
    return out


def pseudo_labels(x: torch.Tensor, hardware: Any) -> dict[str, np.ndarray]:
    """RPG pseudo-labels of the images from four references (decoder features of a U-Net)."""
    from alframe.pseudolabel.features import DecoderFeatures
    from alframe.pseudolabel.rpg import RPGPseudoLabeller

    references = x[:4]
    masks = (references[:, 0] > 0.3).long()
    labeller = RPGPseudoLabeller(
        DecoderFeatures(candidates()[0].module), num_classes=2, batch_size=4
    ).fit(references, masks)
    pseudo = labeller.predict(x, hardware=hardware)
    return {
        "pseudo/labels": pseudo.labels.numpy(),
        "pseudo/confidence": pseudo.confidence.numpy(),
        "pseudo/similarity": pseudo.similarity.numpy(),
    }


def main(argv: list[str]) -> int:
    from alframe._dist import is_global_zero

    results = workload("auto")
    if is_global_zero():
        target = Path(argv[0])
        np.savez(target.with_suffix(".partial.npz"), **results)
        os.replace(target.with_suffix(".partial.npz"), target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
