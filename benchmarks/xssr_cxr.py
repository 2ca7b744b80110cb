"""XSSR label-efficiency reproduction on chest X-rays (Montgomery → Shenzhen), methods/xssr.md.

Runs (or resumes) the budget experiment of ``recipes/xssr_cxr_budget.yaml`` — XSSR, CoreSet,
random and entropy at 22 / 44 / 88 labels × seeds 0, 1, 2, plus the full-data reference — and
writes ``docs/benchmarks/xssr_cxr.json`` and ``docs/benchmarks/xssr_cxr.md`` from its run folder.

Usage::

    export ALFRAME_DATA=../shared/data
    # the whole protocol (hours on 2 CPU cores; resumable: rerun the same command after a stop)
    nohup python benchmarks/xssr_cxr.py > benchmarks/_work/xssr_cxr.log 2>&1 &
    # report on whatever rounds are done so far (no training)
    python benchmarks/xssr_cxr.py --report-only
    # a few-minute smoke test of the whole pipeline on real data (64², 40-image pool, 2 rounds);
    # writes under benchmarks/_work/xssr_cxr_quick/, never to docs/
    python benchmarks/xssr_cxr.py --quick

Extra ``--set KEY=VALUE`` overrides go to the recipe (e.g. ``--set experiment.seeds=[0]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "xssr_cxr_budget.yaml"
DOCS = REPO / "docs" / "benchmarks"
QUICK_DIR = REPO / "benchmarks" / "_work" / "xssr_cxr_quick"

# What the paper reports (arXiv 2606.04301, abstract / summary; see methods/xssr.md).
PAPER = {
    "xssr_dice_at_5pct": 0.945,
    "xssr_pct_of_full_at_5pct": 99.3,
    "xssr_minus_coreset_dice_points": [0.4, 1.2],
    "note": "Montgomery → Shenzhen per a secondary summary; image size and U-Net recipe unknown",
}

# The protocol this repository's numbers come from: the recipe at 64² with 300 steps per round.
# The recipe's 128² × 400 steps needs about 4-5 h of 2-core CPU for the 36 rounds (1.07 s per U-Net
# step at batch 8 on one core, measured), more than one working session; 64² × 300 steps needs
# about 1.5 h. The MAE's masking patch shrinks with the image (16 px at 128² -> 8 px at 64²) so
# that an image still has 64 patches to mask. ``--recipe-size`` runs the recipe unchanged.
CPU_PROTOCOL = [
    "data.image_size=[64, 64]",
    "embed.mae.patch_size=8",
    "experiment.steps_per_round=300",
    "train.max_epochs=30",
    "train.early_stopping_patience=6",
    "output_dir=runs/{name}_64px",
    "tracking.experiment=xssr_cxr_budget_64px",
]

QUICK_OVERRIDES = [
    "tracking.experiment=xssr_cxr_quick",  # keep smoke runs out of the real experiment
    "data.image_size=[64, 64]",
    "train.max_epochs=4",
    "train.batch_size=8",
    "train.early_stopping_patience=0",
    "embed.mae.max_epochs=2",
    "experiment.seeds=[0]",
    "experiment.pool_size=40",
    'experiment.schedules=[{"name": "budget", "cumulative": [4, 8]}]',
    "experiment.steps_per_round=20",
]


def _round(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if value is not None and value == value else None


def build_report(
    run_dir: Path, recipe: Any, seconds: float | None, overrides: list[str]
) -> dict[str, Any]:
    """The JSON document: protocol, per strategy × budget results, reference, paper numbers."""
    from alframe.data import DataCatalog
    from alframe.loop import summarize_experiment
    from alframe.loop.experiment import load_manifests, plan_arms, pool_samples
    from alframe.loop.state import package_versions
    from alframe.loop.summary import REFERENCE_LABEL

    experiment = recipe.experiment
    primary = experiment.primary_set or next(iter(recipe.data.evaluate))
    manifests = load_manifests(run_dir)
    result = summarize_experiment(run_dir, manifests, title=recipe.name, set_order=[primary])
    pool_size = len(pool_samples(recipe, DataCatalog(recipe)))
    planned = plan_arms(recipe, pool_size)
    complete = [
        arm for arm in planned if len(manifests.get(arm.folder_name, [])) >= arm.schedule.n_rounds
    ]
    table = result.table[result.table["eval_set"] == primary]
    strategies: dict[str, Any] = {}
    for row in table.itertuples():
        if row.label == REFERENCE_LABEL:
            continue
        entry = strategies.setdefault(
            str(row.label), {"aulc_mean": _round(row.aulc_mean), "aulc_std": _round(row.aulc_std)}
        )
        entry.setdefault("budgets", []).append(
            {
                "n_labelled": int(row.n_labelled),
                "pct_of_pool": round(100 * int(row.n_labelled) / pool_size, 1),
                "n_seeds": int(row.n_seeds),
                "dice_mean": _round(row.dice_mean),
                "dice_std": _round(row.dice_std),
                "iou_mean": _round(row.iou_mean),
                "pct_of_full": _round(row.pct_of_full, 2),
            }
        )
    reference = table[table["label"] == REFERENCE_LABEL]
    full = None
    if len(reference):
        ref = reference.iloc[0]
        full = {
            "n_labelled": int(ref["n_labelled"]),
            "n_seeds": int(ref["n_seeds"]),
            "dice_mean": _round(ref["dice_mean"]),
            "dice_std": _round(ref["dice_std"]),
        }
    every = [m for runs in manifests.values() for m in runs]
    train_seconds = [m["fit"]["train_seconds"] for m in every if m.get("label") != REFERENCE_LABEL]
    import torch

    return {
        "benchmark": "xssr_cxr",
        "status": "complete" if len(complete) == len(planned) else "incomplete",
        "runs_complete": len(complete),
        "runs_planned": len(planned),
        "protocol": {
            "recipe": recipe.name,
            "overrides": overrides,
            "source": recipe.data.source.model_dump() if recipe.data.source else None,
            "pool": recipe.data.train.model_dump(),
            "pool_size": pool_size,
            "evaluation_set": primary,
            "image_size": list(recipe.data.image_size),
            "model": f"{recipe.model.arch}/{recipe.model.encoder}",
            "mae": recipe.embed.mae.model_dump(),
            "strategies": [s.model_dump() for s in experiment.strategies],
            "schedules": [s.model_dump(exclude_none=True) for s in experiment.schedules],
            "seeds": experiment.seeds,
            "retrain": experiment.retrain,
            "cold_start": experiment.cold_start,
            "steps_per_round": experiment.steps_per_round,
            "round_train": experiment.train,
            "reference_train": recipe.train.model_dump(),
        },
        "results": {"strategies": strategies, "full_reference": full},
        "paper": PAPER,
        "timing": {
            "wall_seconds_this_invocation": _round(seconds, 1) if seconds is not None else None,
            "round_train_seconds_mean": _round(sum(train_seconds) / len(train_seconds), 1)
            if train_seconds
            else None,
            "rounds": len(every),
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "versions": package_versions(),
        },
        "run_dir": str(run_dir),
        "files": {k: str(v) for k, v in result.files.items()},
    }


def _subset(ref: dict[str, Any] | None) -> str:
    if not ref:
        return "none"
    return f"{ref['dataset']}/{ref['split']}" if ref.get("split") else f"{ref['dataset']} (all)"


def diagnostics_markdown(diag: dict[str, Any] | None) -> list[str]:
    """The page's diagnostics section (benchmarks/xssr_cxr_analysis.py) and the notes."""
    if not diag:
        return []
    q = diag["embedding_quality"]
    lines = [
        "## Diagnostics (label-free, from `benchmarks/xssr_cxr_analysis.py`)",
        "",
        "Does the MAE embedding group images with similar lung masks? Mean Dice between a pool "
        f"image's mask and its nearest embedding neighbour's: **{q['nn_mask_dice']:.3f}**; a "
        f"random pair: {q['random_pair_mask_dice']:.3f}; its best match in the pool: "
        f"{q['best_match_mask_dice']:.3f}. Spearman of embedding distance vs mask dissimilarity "
        f"over all pairs: {q['spearman_distance_vs_mask_dissimilarity']:.2f}.",
        "",
        "First-round picks (22 labels): mask coverage = mean over the pool of the best Dice to "
        "a picked mask; embedding coverage cost = what XSSR's alpha minimises (lower is better).",
        "",
        "| run | mask coverage Dice | embedding coverage cost | lung fraction of picks |",
        "|---|---|---|---|",
    ]
    for folder, row in diag["first_round_picks"].items():
        lines.append(
            f"| {folder} | {row['mask_coverage_dice']:.4f} | "
            f"{row['embedding_coverage_cost']:.4f} | {row['lung_fraction_mean']:.3f} |"
        )
    pool = diag["pool"]
    lines += [
        "",
        f"Pool lung fraction {pool['lung_fraction_mean']:.3f} ± {pool['lung_fraction_std']:.3f}. "
        f"XSSR's calibrated alpha per round (seed 0): {diag['xssr_alpha_per_round'].get('seed0')}.",
        "",
        "Spread of test Dice over seeds (XSSR and CoreSet picks do not depend on the seed, so "
        "theirs is training noise alone):",
        "",
        "| strategy@labels | seeds | std | range |",
        "|---|---|---|---|",
    ]
    for key, row in diag["dice_spread_over_seeds"].items():
        lines.append(
            f"| {key} | {row['seeds']} | {row['dice_std']:.4f} | {row['dice_range']:.4f} |"
        )
    lines.append("")
    notes = Path(__file__).with_name("xssr_cxr_notes.md")
    if notes.is_file():
        lines += ["## Findings", "", notes.read_text(encoding="utf-8").strip(), ""]
    return lines


def build_markdown(report: dict[str, Any], run_dir: Path, out_dir: Path) -> str:
    """The human-readable table of the report (the learning curve is copied beside it)."""
    import shutil

    import pandas as pd

    from alframe.loop.summary import markdown_table

    shutil.copyfile(run_dir / "learning_curve.png", out_dir / "xssr_cxr_learning_curve.png")
    protocol = report["protocol"]
    table = pd.read_csv(run_dir / "summary_table.csv")
    table = table[table["eval_set"] == protocol["evaluation_set"]]
    lines = [
        "# XSSR label efficiency on chest X-rays (Montgomery → Shenzhen)",
        "",
        f"Status: **{report['status']}** ({report['runs_complete']} of {report['runs_planned']} "
        "runs finished).",
        "",
        f"Source (MAE only, unlabelled): {_subset(protocol['source'])}; pool: "
        f"{_subset(protocol['pool'])} "
        f"({protocol['pool_size']} images); evaluation: {protocol['evaluation_set']}; "
        f"{protocol['image_size'][0]}×{protocol['image_size'][1]}; {protocol['model']}; "
        f"seeds {protocol['seeds']}; each round retrained from {protocol['retrain']} for "
        f"{protocol['steps_per_round']} steps; cold start {protocol['cold_start']}.",
        "",
        "Cells: mean ± std over seeds of the mean per-image Dice (% of the full-data Dice). "
        "AULC: area under Dice(n_labelled) / n_labelled range.",
        "",
        markdown_table(table),
        "## Paper (for comparison)",
        "",
        f"XSSR at 5 % (22 labels): Dice {PAPER['xssr_dice_at_5pct']}, "
        f"{PAPER['xssr_pct_of_full_at_5pct']} % of full data; +0.4 … +1.2 Dice points over "
        "CoreSet across data sets. Their image size and U-Net recipe are unknown, so compare "
        "ratios (% of full, differences between strategies) rather than absolute Dice.",
        "",
        "![learning curve](xssr_cxr_learning_curve.png)",
        "",
        *diagnostics_markdown(report.get("diagnostics")),
        f"Environment: Python {report['environment']['python']}, "
        f"{report['environment']['cpu_count']} CPUs, torch threads "
        f"{report['environment']['torch_threads']}; mean round training time "
        f"{report['timing']['round_train_seconds_mean']} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--report-only", action="store_true", help="no training: report only")
    parser.add_argument("--quick", action="store_true", help="few-minute smoke run (64², 2 rounds)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--recipe-size",
        action="store_true",
        help="run the recipe as written (128², 400 steps per round) instead of the 64² CPU protocol",
    )
    args = parser.parse_args(argv)

    from alframe.config import load_recipe
    from alframe.loop import run_experiment

    overrides = list(args.overrides)
    if not args.recipe_size:
        overrides = [*CPU_PROTOCOL, *overrides]
    if args.quick:
        overrides = [*QUICK_OVERRIDES, f"output_dir={QUICK_DIR / 'run'}", *overrides]
    os.chdir(REPO)  # the recipe's output_dir (runs/...) and mlflow.db are relative to the repo
    recipe = load_recipe(args.recipe, overrides)
    run_dir = Path(recipe.run_dir).resolve()
    seconds = None
    if not args.report_only:
        import logging
        import warnings

        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal noise
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        started = time.perf_counter()
        run_experiment(recipe, resume=True, track=not args.no_track)
        seconds = time.perf_counter() - started
    report = build_report(run_dir, recipe, seconds, overrides)
    if not args.quick:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from xssr_cxr_analysis import analyse

        report["diagnostics"] = analyse(recipe, run_dir)
    out_dir = QUICK_DIR if args.quick else DOCS
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "xssr_cxr.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "xssr_cxr.md").write_text(build_markdown(report, run_dir, out_dir), encoding="utf-8")
    print(f"wrote {out_dir / 'xssr_cxr.json'} and {out_dir / 'xssr_cxr.md'} ({report['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
