"""Inference over several devices: throughput and agreement against one device, same run.

Two workloads, each run once per device configuration, through Lightning's predict loop
(:mod:`alframe.inference`, one process per device):

    embed   :func:`alframe.embed.extract_embeddings` with a timm ResNet-18 encoder (random init,
            seed 0, 1 channel), global-average-pooled and L2-normalised rows; each process takes
            whole batches;
    cte     :func:`alframe.ranking.rank_models` with CTE-EI (gauss perturbation, seed 0) on four
            U-Net / ResNet-18 candidates (random init, seeds 0-3): two forward passes per image;
            each process takes whole candidates.

The first configuration (one device) is the baseline; every other configuration reports its
images/s as a ratio to it and the largest absolute difference of its outputs from the baseline's
(embedding entries; CTE per-image scores). Times include starting the processes. The batch size
counts images per process and step.

On a machine without CUDA the configurations are ``cpu`` and ``cpu,cpu``: two CPU processes
(ddp_spawn, gloo) on the same cores. That measures the start-up and shard / assembly machinery
together with two processes sharing the cores, not a multi-GPU speed-up. With GPUs the default
configurations are the first 1, 2, ... GPUs.

Usage:
    python benchmarks/multi_device.py                    # ~5 min on 2 CPU cores
    python benchmarks/multi_device.py --configs "cuda:0;cuda:0,cuda:1;cuda:0,cuda:1,cuda:2"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _timing import best_of

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "docs" / "benchmarks"


def _default_configs() -> list[str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return ["cpu", "cpu,cpu"]
    return [",".join(f"cuda:{i}" for i in range(n)) for n in range(1, count + 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=128, help="image side, pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step, all devices")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timed passes")
    parser.add_argument("--configs", default=None, help="';'-separated device lists")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    import segmentation_models_pytorch as smp
    import torch

    from alframe.embed import extract_embeddings
    from alframe.embed.extract import encoder_from_timm
    from alframe.ranking import Predictor, TargetImages, create_ranker, rank_models

    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.configs.split(";") if args.configs else _default_configs()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.images, 1, args.size, args.size)).astype(np.float32)
    encoder = encoder_from_timm("resnet18", in_channels=1, seed=0)
    unets = []
    for seed in range(4):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unets.append(smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1))
    target = TargetImages.from_array(images)
    tensor = torch.from_numpy(images)

    def embed(devices: str) -> np.ndarray:
        return extract_embeddings(
            encoder, tensor, batch_size=args.batch_size, progress=False, device=devices
        )

    def cte(devices: str) -> np.ndarray:
        ranker = create_ranker("cte-ei", perturbation="gauss", seed=0)
        predictors = [
            Predictor.from_module(unet, name=f"unet{i}", num_classes=2)
            for i, unet in enumerate(unets)
        ]
        report = rank_models(
            predictors, target, [ranker], args.batch_size, progress=False, devices=devices
        )
        by_model = report.results[ranker.describe()]
        return np.concatenate([by_model[p.name].per_image for p in predictors])

    rows: list[dict[str, Any]] = []
    n_images = {"embed": args.images, "cte": args.images * len(unets)}  # images x candidates
    for workload, run in (("embed", embed), ("cte", cte)):
        baseline_seconds, baseline_out = None, None
        for devices in configs:
            run(devices)  # warm-up: imports, cuDNN autotuning, allocator
            seconds, out = best_of(partial(run, devices), args.repeats)
            if baseline_seconds is None:
                baseline_seconds, baseline_out = seconds, out
            difference = float(np.nanmax(np.abs(np.asarray(out) - np.asarray(baseline_out))))
            rows.append(
                {
                    "workload": workload,
                    "devices": devices,
                    "seconds": seconds,
                    "images_per_s": n_images[workload] / seconds,
                    "speedup": baseline_seconds / seconds,
                    "max_abs_diff": difference,
                }
            )
            print(
                f"{workload:>5}  {devices:<28} {n_images[workload] / seconds:8.1f} img/s  "
                f"×{baseline_seconds / seconds:.2f}  max|Δ| {difference:.2e}",
                flush=True,
            )

    report = {
        "images": args.images,
        "size": args.size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "configs": configs,
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multi_device.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    hardware = ", ".join(report["cuda_devices"]) or f"CPU only ({os.cpu_count()} cores)"
    lines = [
        "# Inference over several devices",
        "",
        "Generated by `python benchmarks/multi_device.py` (see its docstring for the workloads).",
        f"Hardware: {hardware}; torch {torch.__version__}, {torch.get_num_threads()} intra-op "
        "threads in one process (each of N processes: cores / N). "
        f"{args.images} images of {args.size}² (CTE: × 4 candidates), "
        f"batch {args.batch_size} per process, best of {args.repeats} timed passes after a "
        "warm-up; times include starting the processes.",
        "",
        "| workload | devices | images/s | vs first row | max abs difference from first row |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workload']} | `{row['devices']}` | {row['images_per_s']:.1f} | "
            f"×{row['speedup']:.2f} | {row['max_abs_diff']:.1e} |"
        )
    lines.append("")
    if not report["cuda_devices"]:
        lines += [
            "No GPU was available for this run, so these are not multi-GPU numbers. `cpu,cpu`",
            "starts two CPU processes (ddp_spawn, gloo) on the same cores: its ratio is the cost",
            "of starting them and of writing and assembling the shards, set against what two",
            "forward passes gain by running side by side. The difference column checks that",
            "two processes compute the same embeddings and CTE scores as one; a difference",
            "near 1e-7 comes from the intra-op thread count (the one process uses every core,",
            "each of two processes half of them: oneDNN sums in another order), not from the",
            "split (tests/test_inference.py requires equality at equal thread counts). Rerun",
            "the script on a GPU machine for the multi-GPU numbers.",
            "",
        ]
    (args.out / "multi_device.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"written: {args.out / 'multi_device.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
