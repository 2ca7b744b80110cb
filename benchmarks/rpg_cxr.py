"""Reference-guided pseudo-labels on chest X-rays (methods/rpg.md, reproduction protocol).

JSRT lungs (splits.csv: 185 train / 62 test). With 5 % of the train split labelled (9 images):

* ``supervised``      — the U-Net on the 9 labelled images only;
* ``rpg_random``      — the same 9 images (random picks) + RPG pseudo-labels of the other 176;
* ``rpg_xssr``        — 9 images picked by XSSR (embeddings of the Montgomery-trained MAE) + RPG;
* ``full``            — all 185 train images labelled (fully supervised);

each for seeds 0, 1, 2, with Dice / IoU on the JSRT test split and the Dice of the pool's
pseudo-labels against their hidden ground truth (pseudo-label quality, never used to train on
the truth). Every arm trains for the same number of optimisation steps (batch 8), so the arms
differ only in their labels.

Usage::

    export ALFRAME_DATA=../shared/data
    nohup python benchmarks/rpg_cxr.py > benchmarks/_work/rpg_cxr.log 2>&1 &   # resumable
    python benchmarks/rpg_cxr.py --report-only      # → docs/benchmarks/rpg_cxr.{json,md}

Finished arms are kept in ``benchmarks/_work/rpg_cxr/<arm>_seed<k>/result.json``; a rerun skips
them. The XSSR arm reuses the MAE of the XSSR benchmark (``runs/xssr_cxr_budget_64px/mae``) when
it exists and trains one on Montgomery otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "rpg_cxr"
DOCS = REPO / "docs" / "benchmarks"
MAE_FROM_XSSR = REPO / "runs" / "xssr_cxr_budget_64px" / "mae" / "mae.ckpt"
ARMS = ("supervised", "rpg_random", "rpg_xssr", "full")
PAPER = {
    "claim": "RPG matches full supervision with 95 % fewer labelled images on X-ray anatomy "
    "(JSRT-like); no official code (Seibold et al., AAAI 2022)",
}


def recipe_dict(data_root: str, image_size: int, steps: int, mae: Path) -> dict[str, Any]:
    """The benchmark's recipe: JSRT pool and test split, Montgomery as the MAE's source."""
    return {
        "name": "rpg_cxr",
        "seed": 0,
        "data": {
            "root": f"{data_root}/cxr_lungs",
            "classes": {"background": 0, "lung": 255},
            "image_size": [image_size, image_size],
            "in_channels": 1,
            "normalization": {"method": "percentile", "low": 0.5, "high": 99.5},
            "datasets": {
                "jsrt": {
                    "path": "jsrt",
                    "mask_format": "binary",
                    "split": {"kind": "csv", "csv": "splits.csv", "filter": {"source": "jsrt"}},
                },
                "montgomery": {"path": "montgomery", "mask_format": "binary"},
            },
            "train": {"dataset": "jsrt", "split": "train"},
            "val_fraction": 0.0,
            "source": {"dataset": "montgomery"},
            "evaluate": {"jsrt_test": {"dataset": "jsrt", "split": "test"}},
        },
        "model": {"arch": "Unet", "encoder": "resnet18"},
        "train": {
            "max_epochs": 100000,
            "max_steps": steps,
            "batch_size": 8,
            "lr": 0.001,
            "early_stopping_patience": 0,
            "progress": False,
        },
        "embed": {
            "backbone": "mae",
            "weights": str(mae),
            "mae": {"encoder": "resnet18", "patch_size": 8, "max_epochs": 100, "batch_size": 16},
            "cache_dir": str(WORK / "embeddings"),
        },
        "tracking": {"enabled": False},
        "output_dir": str(WORK / "run"),
    }


def ensure_mae(recipe: Any) -> Path:
    """The MAE checkpoint: the XSSR benchmark's one, or train one on Montgomery (unlabelled)."""
    path = Path(recipe.embed.weights)
    if path.is_file():
        return path
    from alframe.embed import train_mae

    print(f"training the MAE on Montgomery → {path}", flush=True)
    train_mae(recipe, out_dir=path.parent)
    return path


def pick_references(recipe: Any, arm: str, seed: int, budget: int) -> list[str]:
    """The labelled ids of an arm: XSSR or random picks (seeded) from the JSRT train pool."""
    from alframe.data import DataCatalog

    ids = [s.id for s in DataCatalog(recipe).samples(recipe.data.train)]
    if arm == "full":
        return ids
    if arm == "rpg_xssr":
        from alframe.workflows.selection import select_from_recipe

        picked = select_from_recipe(
            recipe.model_copy(update={"seed": seed}), budget, "xssr", {"alpha": "auto"}
        )
        return [picked.ids[int(i)] for i in picked.selection.indices]
    import numpy as np

    rng = np.random.default_rng([seed, 5])
    return [ids[int(i)] for i in rng.choice(len(ids), size=budget, replace=False)]


def run_arm(recipe: Any, arm: str, seed: int, budget: int) -> dict[str, Any]:
    """Train one arm and measure it (test Dice/IoU; pseudo-label Dice on the pool)."""
    from alframe.loop import LightningLearner

    out = WORK / f"{arm}_seed{seed}"
    done = out / "result.json"
    if done.is_file():
        return dict(json.loads(done.read_text(encoding="utf-8")))
    out.mkdir(parents=True, exist_ok=True)
    semi = arm.startswith("rpg")
    arm_recipe = recipe.model_copy(
        update={"pseudolabel": recipe.pseudolabel.model_copy(update={"enabled": semi})}
    )
    started = time.perf_counter()
    labelled = pick_references(arm_recipe, arm, seed, budget)
    learner = LightningLearner(arm_recipe)
    fit = learner.fit(labelled, out / "model", seed=seed)
    metrics = learner.evaluate(out)
    pseudo = learner.pseudo_label(labelled, out) if semi else None
    result = {
        "arm": arm,
        "seed": seed,
        "n_labelled": len(labelled),
        "labelled_ids": labelled,
        "test": metrics["jsrt_test"],
        "pseudolabels": pseudo,
        "fit": {
            "steps": fit.steps,
            "train_seconds": round(fit.train_seconds, 1),
            **{k: v for k, v in fit.extra.items() if k != "init_weights"},
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    done.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds per arm."""

    def stats(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"mean": None, "std": None}
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}

    table: dict[str, Any] = {}
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        if not rows:
            continue
        pseudo = [r["pseudolabels"]["dice_mean"] for r in rows if r.get("pseudolabels")]
        table[arm] = {
            "n_seeds": len(rows),
            "n_labelled": rows[0]["n_labelled"],
            "dice": stats([r["test"]["dice_mean"] for r in rows]),
            "iou": stats([r["test"]["iou_mean"] for r in rows]),
            "pseudo_label_dice": stats(pseudo),
            "train_seconds": stats([r["fit"]["train_seconds"] for r in rows]),
        }
    full = table.get("full", {}).get("dice", {}).get("mean")
    for entry in table.values():
        mean = entry["dice"]["mean"]
        entry["pct_of_full"] = round(100 * mean / full, 2) if full and mean is not None else None
    return table


def build_markdown(report: dict[str, Any]) -> str:
    protocol = report["protocol"]
    lines = [
        "# Reference-guided pseudo-labels (RPG) on chest X-rays",
        "",
        f"Generated by `benchmarks/rpg_cxr.py`. Status: **{report['status']}** "
        f"({report['arms_done']} of {report['arms_planned']} arm × seed runs).",
        "",
        f"JSRT lungs, pool = splits.csv train ({protocol['pool_size']} images), test = splits.csv "
        f"test ({protocol['test_size']}); {protocol['image_size']}×{protocol['image_size']}; "
        f"U-Net/ResNet-18 from random init; {protocol['steps']} steps of batch 8 for every arm; "
        f"{protocol['budget']} labelled images ({protocol['budget_pct']} %) except `full`; seeds "
        f"{protocol['seeds']}. RPG: decoder features matched at stride {protocol['match_stride']}, "
        f"top-1, {protocol['max_per_class']} reference pixels per class, warm-up 5 %, sigmoid ramp "
        "over 25 % of the steps, λ_max = 1. "
        "`rpg_xssr` takes its references from XSSR (MAE trained on Montgomery, unlabelled).",
        "",
        "| arm | labelled | test Dice | test IoU | % of full Dice | pseudo-label Dice (pool) "
        "| train s |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(s: dict[str, Any]) -> str:
        return "–" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"

    for arm, entry in report["results"].items():
        pct = "–" if entry["pct_of_full"] is None else f"{entry['pct_of_full']:.1f} %"
        lines.append(
            f"| {arm} | {entry['n_labelled']} | {cell(entry['dice'])} | {cell(entry['iou'])} | "
            f"{pct} | {cell(entry['pseudo_label_dice'])} | {entry['train_seconds']['mean']:.0f} |"
        )
    lines += [
        "",
        "Mean ± std over seeds. Pseudo-label Dice: the final model's RPG labels of the unlabelled "
        "pool against their hidden masks (bookkeeping only: training never sees those masks).",
        "",
        f"Paper: {PAPER['claim']}.",
        "",
        f"Environment: Python {report['environment']['python']}, "
        f"{report['environment']['cpu_count']} CPUs, torch threads "
        f"{report['environment']['torch_threads']}.",
        "",
    ]
    if report.get("findings"):
        lines += ["## Findings", "", report["findings"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--fraction", type=float, default=0.05, help="labelled share of the pool")
    parser.add_argument(
        "--match-stride",
        type=int,
        default=2,
        help="RPG matches decoder features at this stride (methods/rpg.md: stride 1-4); 2 makes "
        "the per-step matching ~5x cheaper on CPU than stride 1",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--findings",
        default=str(Path(__file__).with_name("rpg_cxr_notes.md")),
        help="text file with findings to add to the page (default: rpg_cxr_notes.md beside "
        "this script, when it exists)",
    )
    parser.add_argument(
        "--work",
        help="work folder (default benchmarks/_work/rpg_cxr); a smoke "
        "run with other settings must use its own",
    )
    args = parser.parse_args(argv)
    global WORK
    if args.work:
        WORK = Path(args.work).resolve()

    import torch

    from alframe.config import recipe_from_dict
    from alframe.data import DataCatalog

    data_root = os.environ.get("ALFRAME_DATA", str(REPO.parent / "shared" / "data"))
    os.chdir(REPO)
    WORK.mkdir(parents=True, exist_ok=True)
    mae = MAE_FROM_XSSR if MAE_FROM_XSSR.is_file() else WORK / "mae" / "mae.ckpt"
    raw = recipe_dict(data_root, args.image_size, args.steps, mae)
    raw["pseudolabel"] = {"enabled": False, "rpg": {"match_stride": args.match_stride}}
    recipe = recipe_from_dict(raw)
    catalog = DataCatalog(recipe)
    pool_size = len(catalog.samples(recipe.data.train))
    test_size = len(catalog.samples(recipe.data.evaluate["jsrt_test"]))
    budget = max(1, round(args.fraction * pool_size))
    planned = [(arm, seed) for seed in args.seeds for arm in args.arms]
    if not args.report_only:
        import logging
        import warnings

        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if "rpg_xssr" in args.arms:
            ensure_mae(recipe)
        for arm, seed in planned:
            result = run_arm(recipe, arm, seed, budget)
            pseudo = result.get("pseudolabels") or {}
            print(
                f"[{arm} seed {seed}] n_labelled={result['n_labelled']} "
                f"test dice={result['test']['dice_mean']:.4f} "
                f"pseudo-label dice={pseudo.get('dice_mean', float('nan')):.4f} "
                f"({result['seconds']:.0f} s)",
                flush=True,
            )
    results = []
    for arm, seed in planned:
        path = WORK / f"{arm}_seed{seed}" / "result.json"
        if path.is_file():
            results.append(json.loads(path.read_text(encoding="utf-8")))
    from alframe.loop.state import package_versions

    report = {
        "benchmark": "rpg_cxr",
        "status": "complete" if len(results) == len(planned) else "incomplete",
        "arms_done": len(results),
        "arms_planned": len(planned),
        "protocol": {
            "pool": "jsrt/train",
            "pool_size": pool_size,
            "test_size": test_size,
            "image_size": args.image_size,
            "steps": args.steps,
            "budget": budget,
            "budget_pct": round(100 * budget / pool_size, 1),
            "seeds": args.seeds,
            "max_per_class": recipe.pseudolabel.rpg.max_per_class,
            "match_stride": recipe.pseudolabel.rpg.match_stride,
            "mae": str(mae.relative_to(REPO)) if mae.is_relative_to(REPO) else str(mae),
        },
        "results": summarize(results),
        "runs": [{k: v for k, v in r.items() if k != "labelled_ids"} for r in results],
        "paper": PAPER,
        "findings": Path(args.findings).read_text(encoding="utf-8")
        if args.findings and Path(args.findings).is_file()
        else None,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "versions": package_versions(),
        },
    }
    docs = WORK if args.work else DOCS  # smoke runs never overwrite the published page
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "rpg_cxr.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (docs / "rpg_cxr.md").write_text(build_markdown(report), encoding="utf-8")
    print(f"wrote {docs / 'rpg_cxr.json'} and {docs / 'rpg_cxr.md'} ({report['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
