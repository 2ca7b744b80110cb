"""Does the recommended strategy hold on the single-site benchmark? XSSR ``combine: add`` vs random.

Issue 15 asks that the recommended strategy never falls below random sampling (beyond seed noise)
on mean Dice at any budget of any of our benchmarks. The multi-site pool
(``benchmarks/multisite_cxr.py``) is where XSSR with ``combine: add`` wins; this script checks the
other label-efficiency benchmark, Montgomery → Shenzhen (``benchmarks/xssr_cxr.py``, where plain
XSSR fell below random at 22 labels), with the same 64² CPU protocol:

* ``xssr_add`` (``{"alpha": "auto", "combine": "add"}``) and ``random``, in the same run;
* budgets 22 / 44 / 88 labels (5 / 10 / 20 % of the 440-image Shenzhen pool), seeds 0, 1, 2;
* the MAE trained on Montgomery only (as XSSR prescribes), in this run's own folder.

It writes ``docs/benchmarks/xssr_cxr_recommended.{json,md}``: per budget the mean ± std over seeds
of both strategies, the paired difference per seed (same seed = same training seed and the same
cold start), and the main run's committed rows for context. Resumable: rerun the same command.

Usage::

    export ALFRAME_DATA=../shared/data
    nohup python benchmarks/xssr_cxr_recommended.py > benchmarks/_work/xssr_cxr_recommended.log 2>&1 &
    python benchmarks/xssr_cxr_recommended.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

HERE = Path(__file__).resolve().parent
NAME = "xssr_cxr_recommended"
RECOMMENDED = {"name": "xssr", "label": "xssr_add", "params": {"alpha": "auto", "combine": "add"}}
BASELINE = {"name": "random"}
OVERRIDES = [
    f"output_dir=runs/{NAME}_64px",
    f"tracking.experiment={NAME}_64px",
    "experiment.full_reference=false",
    "experiment.strategies=" + json.dumps([RECOMMENDED, BASELINE]),
]


def per_seed_dice(
    manifests: dict[str, list[dict[str, Any]]], primary: str
) -> dict[str, dict[int, dict[int, float]]]:
    """label → n_labelled → seed → mean Dice on ``primary``, from the committed round manifests."""
    found: dict[str, dict[int, dict[int, float]]] = {}
    for rounds in manifests.values():
        for manifest in rounds:
            metrics = manifest.get("metrics", {}).get(primary)
            if metrics is None:
                continue
            cell = found.setdefault(str(manifest["label"]), {}).setdefault(
                int(manifest["n_labelled"]), {}
            )
            cell[int(manifest["seed"])] = float(metrics["dice_mean"])
    return found


def stop_rule_check(
    manifests: dict[str, list[dict[str, Any]]], primary: str, threshold: float, n_rounds: int
) -> dict[str, Any]:
    """The multi-site page's stop rule (``multisite_cxr.stop_round``: stop after the first round
    r ≥ 1 whose pool agreement ≥ τ) applied out of sample: labels used and Dice lost against the
    last budget, per run."""
    from multisite_cxr import stop_round

    rows = []
    for folder, rounds in sorted(manifests.items()):
        if len(rounds) < n_rounds or any(m.get("pool_agreement") is None for m in rounds[1:]):
            continue
        dice = [float(m["metrics"][primary]["dice_mean"]) for m in rounds]
        stop = stop_round(rounds, threshold)
        rows.append(
            {
                "run": folder,
                "agreements": [float(m["pool_agreement"]) for m in rounds[1:]],
                "stop_labels": int(rounds[stop]["n_labelled"]),
                "last_labels": int(rounds[-1]["n_labelled"]),
                "loss_points": round(100 * (dice[-1] - dice[stop]), 2),
            }
        )
    return {"threshold": threshold, "runs": rows}


def compare(dice: dict[str, dict[int, dict[int, float]]]) -> list[dict[str, Any]]:
    """Per budget: both strategies' mean ± std and the paired (same seed) difference."""
    from multisite_cxr import seed_noise

    rows = []
    ours, base = dice.get("xssr_add", {}), dice.get("random", {})
    for n_labelled in sorted(set(ours) | set(base)):
        a, b = ours.get(n_labelled, {}), base.get(n_labelled, {})
        paired = sorted(set(a) & set(b))
        differences = np.array([a[s] - b[s] for s in paired])
        ours_stats, base_stats = _stats(list(a.values())), _stats(list(b.values()))
        noise = seed_noise(ours_stats["std"], base_stats["std"])
        rows.append(
            {
                "n_labelled": n_labelled,
                "xssr_add": ours_stats,
                "random": base_stats,
                "seed_noise_points": round(100 * noise, 2),
                "below_random_beyond_noise": bool(paired) and bool(differences.mean() < -noise),
                "paired_seeds": paired,
                "difference_points": [round(100 * float(d), 2) for d in differences],
                "difference_mean_points": round(100 * float(differences.mean()), 2)
                if paired
                else None,
            }
        )
    return rows


def _stats(values: list[float]) -> dict[str, Any]:
    from multisite_cxr import _mean_std, _r

    mean, std = _mean_std(values)
    return {"n_seeds": len(values), "mean": _r(mean), "std": _r(std)}


def _cell(stats: dict[str, Any]) -> str:
    if not stats["n_seeds"]:
        return "–"
    spread = f" ± {stats['std']:.4f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.4f}{spread} ({stats['n_seeds']})"


def build_markdown(report: dict[str, Any]) -> str:
    """The page: the comparison table, the verdict per budget and the main run's rows."""
    complete = report["status"] == "complete"
    lines = [
        "# Recommended strategy on Montgomery → Shenzhen: XSSR (combine: add) vs random",
        "",
        *(
            []
            if complete
            else [
                f"> **PARTIAL** — {report['runs_complete']} of {report['runs_planned']} runs "
                "finished; rerun `python benchmarks/xssr_cxr_recommended.py` to complete.",
                "",
            ]
        ),
        f"Generated by `benchmarks/{NAME}.py`. Protocol of [xssr_cxr.md](xssr_cxr.md) at 64×64 "
        "(a 2-CPU-core budget): MAE on Montgomery only, pool = Shenzhen train (440), test = "
        "Shenzhen test (110), Unet/resnet18 from scratch every round for 300 steps, random cold "
        "start, seeds 0, 1, 2. Both strategies run in the same experiment; a seed fixes the "
        "training seed and the cold start, so the per-seed differences are paired.",
        "",
        "| labels | xssr_add Dice (seeds) | random Dice (seeds) | xssr_add − random per seed "
        "(points) | mean difference (points) | below random beyond seed noise? |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["comparison"]:
        per_seed = ", ".join(f"{d:+.2f}" for d in row["difference_points"]) or "–"
        mean = row["difference_mean_points"]
        lines.append(
            f"| {row['n_labelled']} | {_cell(row['xssr_add'])} | {_cell(row['random'])} | "
            f"{per_seed} | {'–' if mean is None else f'{mean:+.2f}'} | "
            f"{'**yes**' if row['below_random_beyond_noise'] else 'no'} "
            f"(noise {row['seed_noise_points']:.2f}) |"
        )
    main_rows = report.get("main_run_rows") or {}
    if main_rows:
        lines += [
            "",
            "For context, the main run of [xssr_cxr.md](xssr_cxr.md) (same protocol, another "
            "session's run, 3 seeds): "
            + "; ".join(
                f"{label} " + " / ".join(f"{b['dice_mean']:.4f}@{b['n_labelled']}" for b in budgets)
                for label, budgets in main_rows.items()
            )
            + ".",
        ]
    stop = report.get("stop_rule_check")
    if stop and stop["runs"]:
        losses = [r["loss_points"] for r in stop["runs"]]
        lines += [
            "",
            "## The multi-site stop rule, out of sample",
            "",
            f"[multisite_cxr.md](multisite_cxr.md) suggests stopping after the first round whose "
            f"pool agreement ≥ τ = {stop['threshold']:g}, chosen on its own runs. Applied "
            "unchanged to this pool's runs (loss = Dice at the last budget − Dice at the stop, "
            "in points):",
            "",
            "| run | agreement per round (from round 2) | stops at | of | loss (pts) |",
            "|---|---|---|---|---|",
            *(
                f"| {r['run']} | {', '.join(f'{a:.4f}' for a in r['agreements'])} | "
                f"{r['stop_labels']} | {r['last_labels']} | {r['loss_points']:+.2f} |"
                for r in stop["runs"]
            ),
            "",
            f"Mean loss {sum(losses) / len(losses):+.2f} points, worst {max(losses):+.2f}, over "
            f"{len(losses)} runs.",
        ]
    lines += [
        "",
        "Seed noise (as on the multi-site page): a mean difference below minus the larger of "
        "the two stds over seeds (in points, in brackets) counts as below random.",
        "",
        f"Environment: {report['environment']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--report-only", action="store_true", help="no training: report only")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import xssr_cxr

    from alframe.config import load_recipe
    from alframe.data import DataCatalog
    from alframe.loop import run_experiment
    from alframe.loop.experiment import load_manifests, plan_arms, pool_samples

    os.chdir(xssr_cxr.REPO)
    recipe = load_recipe(xssr_cxr.RECIPE, [*xssr_cxr.CPU_PROTOCOL, *OVERRIDES])
    run_dir = Path(recipe.run_dir).resolve()
    seconds = None
    if not args.report_only:
        import logging
        import warnings

        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        started = time.perf_counter()
        run_experiment(recipe, resume=True, track=True)
        seconds = time.perf_counter() - started
    primary = recipe.experiment.primary_set or next(iter(recipe.data.evaluate))
    manifests = load_manifests(run_dir)
    planned = plan_arms(recipe, len(pool_samples(recipe, DataCatalog(recipe))))
    complete = [a for a in planned if len(manifests.get(a.folder_name, [])) >= a.schedule.n_rounds]
    multisite_json = xssr_cxr.DOCS / "multisite_cxr.json"
    stop_check = None
    if multisite_json.is_file():
        suggested = json.loads(multisite_json.read_text(encoding="utf-8"))["stopping_signal"][
            "stop_rule"
        ].get("suggested")
        if suggested:
            n_rounds = len(recipe.experiment.schedules[0].cumulative or [])
            stop_check = stop_rule_check(
                manifests, primary, float(suggested["threshold"]), n_rounds
            )
    main_json = xssr_cxr.DOCS / "xssr_cxr.json"
    main_rows = {}
    if main_json.is_file():
        results = json.loads(main_json.read_text(encoding="utf-8"))["results"]["strategies"]
        main_rows = {k: results[k]["budgets"] for k in ("random", "xssr") if k in results}
    import platform

    import torch

    report = {
        "benchmark": NAME,
        "status": "complete" if len(complete) == len(planned) else "incomplete",
        "runs_complete": len(complete),
        "runs_planned": len(planned),
        "overrides": [*xssr_cxr.CPU_PROTOCOL, *OVERRIDES],
        "comparison": compare(per_seed_dice(manifests, primary)),
        "main_run_rows": main_rows,
        "stop_rule_check": stop_check,
        "wall_seconds_this_invocation": None if seconds is None else round(seconds, 1),
        "environment": f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}",
        "run_dir": str(run_dir),
    }
    docs = xssr_cxr.DOCS
    (docs / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (docs / f"{NAME}.md").write_text(build_markdown(report), encoding="utf-8")
    print(f"wrote {docs / NAME}.{{json,md}} ({report['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
