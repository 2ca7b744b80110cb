"""Full-data reference: U-Net on the whole Shenzhen pool, and Montgomery → Shenzhen without adaptation.

Writes ``docs/benchmarks/train_full.json`` and ``docs/benchmarks/train_full.md``. The Shenzhen
full-data Dice is the reference every label-efficiency claim is measured against.

Usage::

    ALFRAME_DATA=../shared/data python benchmarks/train_full.py [--image-size 256] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "cxr_montgomery_to_shenzhen.yaml"


def run_setting(name: str, overrides: list[str], out_root: Path) -> dict:
    from alframe.config import load_recipe
    from alframe.workflows import train_and_evaluate

    recipe = load_recipe(RECIPE, overrides)
    started = time.perf_counter()
    result = train_and_evaluate(recipe, out_dir=out_root / name, track=False)
    total = time.perf_counter() - started
    from alframe.data import SegmentationDataModule

    dm = SegmentationDataModule(recipe)
    dm.setup()
    return {
        "setting": name,
        "train": f"{recipe.data.train.dataset}/{recipe.data.train.split or 'all'}",
        "n_train": len(dm.train_samples),
        "n_val": len(dm.val_samples),
        "epochs_run": result.epochs_run,
        "best_val_dice": result.best_val_dice,
        "train_seconds": round(result.train_seconds, 1),
        "total_seconds": round(total, 1),
        "evaluation": {
            k: {m: round(v, 4) for m, v in stats.items()} for k, stats in result.summary.items()
        },
        "n_eval": {k: len(v) for k, v in result.evaluations.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "_work" / "train_full")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args()
    if not os.environ.get("ALFRAME_DATA"):
        print("set ALFRAME_DATA to the folder containing cxr_lungs/", file=sys.stderr)
        return 2

    size = args.image_size
    common = [
        f"data.image_size=[{size}, {size}]",
        f"train.max_epochs={args.epochs}",
        f"seed={args.seed}",
        "train.progress=false",
    ]
    settings = {
        # Shenzhen pool (440, splits.csv "train") → Shenzhen test (110) and all of Montgomery.
        "shenzhen_full": common,
        # Montgomery (all 138) → Shenzhen test, no adaptation: the cross-site gap.
        "montgomery_to_shenzhen": [
            *common,
            "data.train={dataset: montgomery}",
            "data.evaluate={shenzhen_test: {dataset: shenzhen, split: test}}",
        ],
    }
    rows = []
    for name, overrides in settings.items():
        print(f"== {name}", flush=True)
        rows.append(run_setting(name, overrides, args.out))
        print(json.dumps(rows[-1], indent=2), flush=True)

    import torch

    doc = {
        "benchmark": "train_full",
        "recipe": str(RECIPE.relative_to(REPO)),
        "image_size": [size, size],
        "max_epochs": args.epochs,
        "seed": args.seed,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
        "results": rows,
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "train_full.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Full-data reference: U-Net on chest X-ray lungs",
        "",
        "Produced by `benchmarks/train_full.py` (rerun: "
        f"`ALFRAME_DATA=../shared/data python benchmarks/train_full.py --image-size {size} "
        f"--epochs {args.epochs}`).",
        "",
        f"Recipe `{doc['recipe']}`: smp U-Net, ResNet-18 encoder from random init (nothing is "
        f"downloaded), Dice + BCE, AdamW + cosine, early stopping on validation Dice; images "
        f"{size}×{size}; at most {args.epochs} epochs; seed {args.seed}; {doc['machine']}. "
        "Validation = a seeded 10 % of the training images (grouped by image).",
        "",
        "Train times are wall-clock on the machine named above and depend on what else it runs "
        "(the published run shared its 2 cores with other jobs, with `OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}`); compare them only within one run.",
        "",
        "| setting | trained on | n train | epochs | val Dice | evaluated on | n | Dice (mean ± std) | IoU (mean ± std) | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for set_name, stats in row["evaluation"].items():
            lines.append(
                f"| {row['setting']} | {row['train']} | {row['n_train']} | {row['epochs_run']} | "
                f"{row['best_val_dice']:.4f} | {set_name} | {row['n_eval'][set_name]} | "
                f"{stats['dice_mean']:.4f} ± {stats['dice_std']:.4f} | "
                f"{stats['iou_mean']:.4f} ± {stats['iou_std']:.4f} | {row['train_seconds']:.0f} s |"
            )
    ref = rows[0]["evaluation"]["shenzhen_test"]["dice_mean"]
    lines += [
        "",
        f"**Reference for label-efficiency claims:** full-data Shenzhen test Dice = {ref:.4f} "
        f"at {size}².",
        "",
    ]
    (args.docs / "train_full.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
