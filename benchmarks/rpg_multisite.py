"""RPG pseudo-labels on the multi-site chest X-ray pool: do they pay where there is headroom?

Issue 15, item 3. On JSRT alone (``benchmarks/rpg_cxr.py``) 10 labels already reached 98.7 % of
full data and RPG added nothing. This benchmark reruns the comparison on the heterogeneous pool
of ``benchmarks/multisite_cxr.py`` (imported, not copied: same ``Protocol`` defaults, same
``compose`` of ``splits.csv``, same round recipe), where small budgets leave more room:

* **pool** — 440 images of the ``train`` split, 80 % Shenzhen / 12 % JSRT / 8 % Montgomery
  (pool seed 0), exactly the multi-site benchmark's pool; **test** — the ``test`` split of every
  site (188 images): mean Dice over all test images and the **worst site**'s Dice;
* **budgets** — 2.5 % and 5 % of the pool (11 and 22 labels); per seed the labelled items are a
  seeded random draw, the 22 containing the 11 (as cumulative rounds would);
* **arms** — ``supervised``: the U-Net on the labelled items only; ``rpg``: the same items, the
  same seed and the same number of steps, plus RPG pseudo-labels of the other pool items
  (``alframe.pseudolabel``: semi-supervised fit, pseudo-labels from the current decoder features
  of each step's labelled batch) with the **top-k similarity vote** and the **similarity filter**
  (pixels below the ``--filter-percentile``-th similarity percentile of their image get no
  pseudo-label);
* **training** — the multi-site benchmark's round recipe (``alframe.loop.rounds_recipe``): 64²,
  U-Net/ResNet-18 from scratch, 200 steps at batch 8, no validation (final weights); seeds 0 1 2;
* **measured per cell** — test Dice per site, mean and worst site; on the unlabelled pool, against
  its hidden masks (bookkeeping only, never trained on): the final model's own Dice and the Dice of
  the RPG pseudo-labels it gives (filtered pixels left out, with their coverage; and counted as
  misses), for both arms (for ``supervised``: the labels RPG would start from);
* **% of full data** — the full-data reference of the multi-site benchmark, read (never written)
  from ``docs/benchmarks/multisite_cxr.json`` or, until that page has it, from the reference
  manifests of its cache ``benchmarks/_work/multisite_cxr/full/run``; none yet → ``–``.

Every cell is cached as ``benchmarks/_work/rpg_multisite/cells/<arm>_n<labels>_seed<k>/
result.json`` (with ``--work``: under that folder); a rerun skips finished cells, and a changed
protocol or RPG setting is refused in an existing work folder. ``--report-only`` renders the page
from the cache; a page rendered before every cell is done says **PARTIAL**.

Usage::

    export ALFRAME_DATA=../shared/data
    # the whole benchmark on one core, in the background (resumable: rerun after a stop)
    OMP_NUM_THREADS=1 nohup nice python benchmarks/rpg_multisite.py \\
        > benchmarks/_work/rpg_multisite.log 2>&1 &
    # the page from the finished cells → docs/benchmarks/rpg_multisite.{md,json}
    python benchmarks/rpg_multisite.py --report-only
    # a two-minute smoke run (10 steps, 2.5 %, seed 0) in its own folder
    python benchmarks/rpg_multisite.py --smoke
    # other RPG settings need their own work folder
    python benchmarks/rpg_multisite.py --top-k 1 --filter-percentile 0 --work /tmp/rpg_top1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import multisite_cxr as ms  # noqa: E402  (the sibling benchmark: pool, protocol, summaries)

REPO = HERE.parent
DOCS = REPO / "docs" / "benchmarks"
WORK = REPO / "benchmarks" / "_work" / "rpg_multisite"
NAME = "rpg_multisite"
ARMS: tuple[str, ...] = ("supervised", "rpg")
DEFAULT_BUDGETS = (0.025, 0.05)
DEFAULT_SEEDS = (0, 1, 2)
MULTISITE_JSON = DOCS / "multisite_cxr.json"
MULTISITE_RUN = REPO / "benchmarks" / "_work" / "multisite_cxr" / "full" / "run"
HEADROOM_PCT = 95.0
"""Issue 15: where supervised training is below this % of full data, RPG must add ≥ 1 point."""
GAIN_NEEDED = 0.01

# Priors of the time estimate before any cell of an arm has finished (one torch thread on this
# project's 2-core machine with another benchmark on the other core): a supervised step at batch 8
# ≈ 0.4 s (multisite_cxr), a semi-supervised RPG step (8 labelled + 8 unlabelled images, top-5,
# stride 2) ≈ 1.0 s (measured: 60 steps in 58-71 s), and ≈ 40 s per cell for the test evaluation
# and the pool's predictions and pseudo-labels.
PRIOR_SECONDS_PER_STEP = {"supervised": 0.42, "rpg": 1.0}
PRIOR_CELL_OVERHEAD_S = 40.0


@dataclass(frozen=True)
class RPGSettings:
    """The semi-supervised RPG settings of the ``rpg`` arm (the recipe's ``pseudolabel``)."""

    top_k: int = 5
    temperature: float = 0.1
    filter_percentile: float = 20.0
    match_stride: int = 2
    max_per_class: int = 5000
    warmup_fraction: float = 0.05
    ramp_fraction: float = 0.25
    lambda_max: float = 1.0
    unlabelled_batch_size: int | None = None

    def section(self, enabled: bool) -> dict[str, Any]:
        """The recipe's ``pseudolabel`` section."""
        return {
            "enabled": enabled,
            "method": "rpg",
            "warmup_fraction": self.warmup_fraction,
            "ramp_fraction": self.ramp_fraction,
            "lambda_max": self.lambda_max,
            "unlabelled_batch_size": self.unlabelled_batch_size,
            "store": True,
            "rpg": {
                "top_k": self.top_k,
                "temperature": self.temperature,
                "max_per_class": self.max_per_class,
                "filter_percentile": self.filter_percentile or None,
                "match_stride": self.match_stride,
            },
        }


@dataclass
class Plan:
    """Arms × labelled-set sizes × seeds."""

    arms: list[str]
    sizes: list[int]
    seeds: list[int]

    def cells(self) -> list[tuple[str, int, int]]:
        """(arm, size, seed) in run order: seed by seed, so a partial page has paired cells."""
        return [(a, n, s) for s in self.seeds for n in self.sizes for a in self.arms]


def cell_dir(work: Path, arm: str, size: int, seed: int) -> Path:
    """Folder of one cell."""
    return work / "cells" / f"{arm}_n{size}_seed{seed}"


# ----------------------------------------------------------------------------------------------
# Recipe, picks, cells


def build_recipe(protocol: ms.Protocol, data_dir: Path, work: Path, settings: RPGSettings) -> Any:
    """The round recipe of the multi-site benchmark (supervised; ``with_pseudo`` turns RPG on)."""
    from alframe.config import recipe_from_dict
    from alframe.loop.experiment import rounds_recipe

    raw = ms.recipe_dict(
        protocol, data_dir, work / "run", [{"name": "random"}], [0.05], [0], False, None, NAME
    )
    raw["pseudolabel"] = settings.section(enabled=False)
    return rounds_recipe(recipe_from_dict(raw, f"{NAME} benchmark"))


def with_pseudo(recipe: Any, enabled: bool) -> Any:
    """``recipe`` with ``pseudolabel.enabled`` set."""
    return recipe.model_copy(
        update={"pseudolabel": recipe.pseudolabel.model_copy(update={"enabled": enabled})}
    )


def pick(ids: Sequence[str], seed: int, size: int) -> list[str]:
    """``size`` random pool ids for ``seed``; a larger size extends a smaller one (nested)."""
    import numpy as np

    order = np.random.default_rng([seed, 15, 3]).permutation(len(ids))
    return [ids[int(i)] for i in order[:size]]


def pool_measures(task: Any, recipe: Any, catalog: Any, labelled: Sequence[str]) -> dict[str, Any]:
    """The final model's Dice and its RPG pseudo-labels' Dice on the unlabelled pool.

    The pseudo-labels use the recipe's ``pseudolabel`` options (top-k vote, filter, stride) with
    the labelled items as references; the hidden masks only measure them.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from alframe.data import SegmentationDataset
    from alframe.models.metrics import foreground_mean, per_image_dice_iou
    from alframe.pseudolabel import pseudo_label_samples

    started = time.perf_counter()
    pool = catalog.samples(recipe.data.train)
    chosen = set(labelled)
    references = [s for s in pool if s.id in chosen]
    unlabelled = [s for s in pool if s.id not in chosen]
    cfg = recipe.pseudolabel.model_copy(update={"enabled": True})
    pseudo = pseudo_label_samples(
        task,
        references,
        unlabelled,
        recipe.data,
        recipe.num_classes,
        cfg,
        batch_size=recipe.train.batch_size,
        eval_transforms=recipe.augment.eval,
    )
    dataset = SegmentationDataset(unlabelled, recipe.data, recipe.augment.eval, train=False)
    loader = DataLoader(dataset, batch_size=recipe.train.batch_size, shuffle=False)
    model_dice: list[np.ndarray] = []
    covered_dice: list[np.ndarray] = []
    start = 0
    with torch.no_grad():
        for batch in loader:
            truth = batch["mask"].long()
            pred = task.predict_proba(batch["image"]).argmax(dim=1).cpu()
            per_class, _ = per_image_dice_iou(pred, truth, recipe.num_classes)
            model_dice.append(foreground_mean(per_class).numpy())
            stop = start + truth.shape[0]
            labels = torch.from_numpy(pseudo.labels[start:stop].astype(np.int64))
            kept = torch.where(labels >= 0, truth, torch.full_like(truth, -1))
            per_class, _ = per_image_dice_iou(labels, kept, recipe.num_classes)
            covered_dice.append(foreground_mean(per_class).numpy())
            start = stop
    model = np.concatenate(model_dice)
    covered = np.concatenate(covered_dice)
    sites = np.asarray([ms.site_of(s.id) for s in unlabelled])

    def by_site(values: np.ndarray) -> dict[str, float]:
        return {
            site: round(float(values[sites == site].mean()), 5)
            for site in ms.SITES
            if (sites == site).any()
        }

    return {
        "n_items": len(unlabelled),
        "model_dice": round(float(model.mean()), 5),
        "model_dice_by_site": by_site(model),
        "pseudo_dice_covered": round(float(covered.mean()), 5),
        "pseudo_dice_covered_by_site": by_site(covered),
        "pseudo_dice_all_pixels": round(float(np.nanmean(pseudo.dice)), 5),
        "pseudo_coverage": round(float(pseudo.coverage.mean()), 5),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_cell(
    recipe: Any, catalog: Any, arm: str, size: int, seed: int, work: Path, keep: bool
) -> dict[str, Any]:
    """Train one cell, measure it and cache ``result.json`` (returned as is when cached)."""
    from alframe.loop import LightningLearner
    from alframe.loop.state import atomic_write_json

    out = cell_dir(work, arm, size, seed)
    done = out / "result.json"
    if done.is_file():
        return dict(json.loads(done.read_text(encoding="utf-8")))
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(s.id for s in catalog.samples(recipe.data.train))
    labelled = pick(ids, seed, size)
    arm_recipe = with_pseudo(recipe, arm == "rpg")
    started = time.perf_counter()
    learner = LightningLearner(arm_recipe, catalog=catalog)
    fit = learner.fit(labelled, out / "model", seed=seed)
    fitted = time.perf_counter()
    metrics = learner.evaluate(None)
    pool = pool_measures(learner._current_task(), arm_recipe, catalog, labelled)
    result = {
        "arm": arm,
        "seed": seed,
        "n_labelled": len(labelled),
        "labelled_ids": labelled,
        "metrics": metrics,
        "pool": pool,
        "fit": {
            "steps": fit.steps,
            "train_seconds": round(fit.train_seconds, 1),
            **{k: v for k, v in fit.extra.items() if k != "init_weights"},
        },
        "eval_seconds": round(time.perf_counter() - fitted, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(done, result)
    if not keep:
        shutil.rmtree(out / "model", ignore_errors=True)
    return result


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """A cell as multisite_cxr's cell summary (mean / per-site / worst-site Dice, picks) plus
    the pool measures."""
    manifest = {
        "seed": result["seed"],
        "n_labelled": result["n_labelled"],
        "metrics": result["metrics"],
        "labelled_ids": result["labelled_ids"],
        "fit": result["fit"],
        "strategy_used": result["arm"],
    }
    cell = ms.cell_summary(manifest)
    cell["seconds"] = float(result["seconds"])
    cell["pool"] = result["pool"]
    return cell


# ----------------------------------------------------------------------------------------------
# Full-data reference (the multi-site benchmark's, read only)


def multisite_reference() -> dict[str, Any] | None:
    """The multi-site benchmark's full-data reference: mean Dice, worst-site Dice and source.

    Its page (``docs/benchmarks/multisite_cxr.json``) first; else its cache's reference
    manifests (read only); None when neither has one yet.
    """
    if MULTISITE_JSON.is_file():
        try:
            page = json.loads(MULTISITE_JSON.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            page = {}
        ref = page.get("full_reference") or {}
        if ref.get("dice_mean") is not None and ref.get("worst_site_dice_mean") is not None:
            return {
                "source": "docs/benchmarks/multisite_cxr.json",
                "n_seeds": ref.get("n_seeds"),
                "dice_mean": ref["dice_mean"],
                "worst_site_dice_mean": ref["worst_site_dice_mean"],
                "site_dice": ref.get("site_dice"),
            }
    if not MULTISITE_RUN.is_dir():
        return None
    from alframe.loop import load_manifests
    from alframe.loop.summary import REFERENCE_LABEL

    try:
        manifests = load_manifests(MULTISITE_RUN)
    except Exception as err:  # a round being written meanwhile: no reference this time
        print(f"note: multisite_cxr cache not readable now ({err})", flush=True)
        return None
    cells = [
        ms.cell_summary(m)
        for rounds in manifests.values()
        for m in rounds
        if m.get("label") == REFERENCE_LABEL
    ]
    if not cells:
        return None
    agg = ms.aggregate(cells)
    return {
        "source": "benchmarks/_work/multisite_cxr/full/run (reference manifests)",
        "n_seeds": agg["n_seeds"],
        "dice_mean": agg["dice_mean"],
        "worst_site_dice_mean": agg["worst_site_dice_mean"],
        "site_dice": agg["site_dice"],
    }


# ----------------------------------------------------------------------------------------------
# Summaries, goal, report


def _stat(values: Sequence[float | None]) -> dict[str, Any]:
    mean, std = ms._mean_std([v for v in values if v is not None])
    return {"mean": ms._r(mean), "std": ms._r(std), "n": len([v for v in values if v is not None])}


def summarize(
    cells: Mapping[tuple[str, int, int], dict[str, Any]],
    plan: Plan,
    reference: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Per size × arm: seeds aggregated; per size: paired RPG − supervised differences."""
    rows: list[dict[str, Any]] = []
    diffs: list[dict[str, Any]] = []
    for size in plan.sizes:
        for arm in plan.arms:
            group = [cells[(arm, size, s)] for s in plan.seeds if (arm, size, s) in cells]
            row: dict[str, Any] = {"arm": arm, "n_labelled": size, "n_seeds": len(group)}
            if group:
                row.update(ms.aggregate(group))
                for key in (
                    "model_dice",
                    "pseudo_dice_covered",
                    "pseudo_dice_all_pixels",
                    "pseudo_coverage",
                ):
                    row[f"pool_{key}"] = _stat([c["pool"][key] for c in group])
                row["train_seconds"] = _stat([c["train_seconds"] for c in group])
                if reference:
                    row["pct_of_full"] = ms._r(100 * row["dice_mean"] / reference["dice_mean"], 2)
                    row["worst_site_pct_of_full"] = ms._r(
                        100 * row["worst_site_dice_mean"] / reference["worst_site_dice_mean"], 2
                    )
            rows.append(row)
        paired = [
            (cells[("supervised", size, s)], cells[("rpg", size, s)])
            for s in plan.seeds
            if ("supervised", size, s) in cells and ("rpg", size, s) in cells
        ]
        diffs.append(
            {
                "n_labelled": size,
                "seeds": [int(sup["seed"]) for sup, _ in paired],
                "dice": _stat([r["dice_mean"] - sup["dice_mean"] for sup, r in paired]),
                "worst_site_dice": _stat(
                    [r["worst_site_dice"] - sup["worst_site_dice"] for sup, r in paired]
                ),
                "site_dice": {
                    site: _stat(
                        [r["site_dice"][site] - sup["site_dice"][site] for sup, r in paired]
                    )
                    for site in ms.SITES
                },
            }
        )
    return {"rows": rows, "differences": diffs}


def goal_check(
    table: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Issue 15's goal per budget and metric (mean, worst site): RPG ≥ supervised, and ≥ +1 Dice
    point where supervised is below 95 % of full data."""
    checks: list[dict[str, Any]] = []
    supervised = {r["n_labelled"]: r for r in table["rows"] if r["arm"] == "supervised"}
    for diff in table["differences"]:
        size = diff["n_labelled"]
        sup = supervised.get(size, {})
        for metric, pct_key in (
            ("dice", "pct_of_full"),
            ("worst_site_dice", "worst_site_pct_of_full"),
        ):
            d = diff[metric]
            entry: dict[str, Any] = {
                "n_labelled": size,
                "metric": "mean Dice" if metric == "dice" else "worst-site Dice",
                "n_pairs": d["n"],
                "difference": d["mean"],
                "difference_std": d["std"],
                "supervised_pct_of_full": sup.get(pct_key),
            }
            if not d["n"]:
                entry["verdict"] = "no paired cells yet"
                checks.append(entry)
                continue
            not_below = d["mean"] >= 0
            noise = d["std"] is not None and abs(d["mean"]) <= d["std"]
            entry["rpg_not_below"] = not_below
            pct = sup.get(pct_key)
            if reference is None or pct is None:
                entry["headroom"] = None
            else:
                entry["headroom"] = pct < HEADROOM_PCT
            if entry["headroom"]:
                entry["gain_met"] = d["mean"] >= GAIN_NEEDED
            verdict = "RPG ≥ supervised" if not_below else "RPG < supervised"
            if noise:
                verdict += " (within seed noise)"
            if entry["headroom"] is None:
                verdict += "; headroom unknown (no full-data reference yet)"
            elif entry["headroom"]:
                verdict += f"; supervised {pct:.1f} % of full < {HEADROOM_PCT:g} %: +1 point " + (
                    "met" if entry["gain_met"] else "NOT met"
                )
            else:
                verdict += f"; supervised {pct:.1f} % of full ≥ {HEADROOM_PCT:g} % (no +1 needed)"
            entry["verdict"] = verdict
            checks.append(entry)
    return checks


def estimate(
    plan: Plan, cells: Mapping[tuple[str, int, int], dict[str, Any]], steps: int
) -> dict[str, Any]:
    """Seconds per cell of each arm (measured where cells are done, else priors) and left."""
    per_cell: dict[str, float] = {}
    source: dict[str, str] = {}
    for arm in plan.arms:
        done = [c for (a, _, _), c in cells.items() if a == arm]
        if done:
            per_cell[arm] = statistics.fmean(c["seconds"] for c in done)
            source[arm] = f"measured over {len(done)} cells"
        else:
            per_cell[arm] = PRIOR_SECONDS_PER_STEP[arm] * steps + PRIOR_CELL_OVERHEAD_S
            source[arm] = "prior"
    missing = [c for c in plan.cells() if c not in cells]
    return {
        "cell_seconds": {a: round(v, 1) for a, v in per_cell.items()},
        "source": source,
        "seconds_total": round(sum(per_cell[a] for a, _, _ in plan.cells()), 1),
        "seconds_left": round(sum(per_cell[a] for a, _, _ in missing), 1),
        "cells_left": len(missing),
    }


def _print_estimate(plan: Plan, guess: Mapping[str, Any]) -> None:
    arms = ", ".join(
        f"{a} ≈ {guess['cell_seconds'][a]:.0f} s ({guess['source'][a]})" for a in plan.arms
    )
    print(
        f"plan: {len(plan.arms)} arms × sizes {plan.sizes} × seeds {plan.seeds} = "
        f"{len(plan.cells())} cells; a cell on one core: {arms}; whole plan ≈ "
        f"{ms._hours(guess['seconds_total'])}, left: {guess['cells_left']} cells ≈ "
        f"{ms._hours(guess['seconds_left'])}",
        flush=True,
    )


def _pm(stat: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    std = "" if stat.get("std") is None else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std}"


def _signed(stat: Mapping[str, Any]) -> str:
    if stat.get("mean") is None:
        return "–"
    std = "" if stat.get("std") is None else f" ± {100 * stat['std']:.2f}"
    return f"{100 * stat['mean']:+.2f}{std}"


def build_markdown(report: Mapping[str, Any]) -> str:
    """The page."""
    p = report["protocol"]
    s = p["rpg"]
    counts = p["composition"]
    ref = report["full_reference"]
    partial = report["status"] != "complete"
    title = "# RPG pseudo-labels on the multi-site chest X-ray pool" + (
        " — PARTIAL" if partial else ""
    )
    lines = [
        title,
        "",
        f"Generated by `benchmarks/rpg_multisite.py` (issue 15, item 3). Status: "
        f"**{'PARTIAL' if partial else 'complete'}** ({report['cells_done']} of "
        f"{report['cells_planned']} arm × budget × seed cells).",
        "",
    ]
    if partial:
        lines += [
            "**PARTIAL:** the numbers below cover the finished cells only; missing: "
            + ", ".join(report["missing"])
            + ".",
            "",
        ]
    pool = counts["pool"]
    test = counts["test"]
    lines += [
        f"Pool: the multi-site benchmark's ({sum(pool.values())} images of the `train` split: "
        + ", ".join(f"{ms.SITE_TITLES[x]} {pool[x]}" for x in ms.SITES)
        + f"; pool seed {p['pool_seed']}). Test: the `test` split of every site ("
        + ", ".join(f"{ms.SITE_TITLES[x]} {test[x]}" for x in ms.SITES)
        + f"). {p['image_size']}×{p['image_size']} (a 2-CPU-core budget), U-Net/ResNet-18 from "
        f"scratch, {p['steps']} steps at batch {p['batch_size']} for every arm, no validation "
        f"(final weights); budgets {', '.join(f'{100 * b:g} %' for b in p['budgets'])} = "
        f"{p['sizes']} labels, a seeded random draw per seed (the larger set contains the "
        f"smaller); both arms of a seed share the labels and the training seed. Seeds "
        f"{p['seeds']}.",
        "",
        f"RPG arm (`alframe.pseudolabel`, semi-supervised fit): the other {p['n_unlabelled']} "
        f"pool images get pseudo-labels at every step from the current decoder features of the "
        f"step's labelled batch — **top-{s['top_k']} similarity vote** (temperature "
        f"{s['temperature']:g}), **similarity filter at the {s['filter_percentile']:g}th "
        f"percentile** per image (filtered pixels carry no loss), matching at stride "
        f"{s['match_stride']}, ≤ {s['max_per_class']} reference pixels per class; "
        f"{s['unlabelled_batch_size'] or p['batch_size']} unlabelled images per step; "
        f"supervised warm-up {100 * s['warmup_fraction']:g} % of the steps, sigmoid ramp over "
        f"{100 * s['ramp_fraction']:g} %, λ_max = {s['lambda_max']:g}.",
        "",
        "| labels | arm | seeds | mean Dice | worst-site Dice | % of full (mean / worst) "
        "| model Dice on pool | pseudo-label Dice (covered) | coverage | pseudo-label Dice (all "
        "pixels) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]["rows"]:
        size = f"{row['n_labelled']}"
        if not row["n_seeds"]:
            lines.append(f"| {size} | {row['arm']} | 0 | – | – | – | – | – | – | – | – |")
            continue
        which = ms.worst_site_cell(row)
        pct = ms.pct_of_full_cell(row)
        lines.append(
            f"| {size} | {row['arm']} | {row['n_seeds']} | "
            f"{_pm({'mean': row['dice_mean'], 'std': row['dice_std']})} | "
            f"{_pm({'mean': row['worst_site_dice_mean'], 'std': row['worst_site_dice_std']})} "
            f"({which}) | {pct} | {_pm(row['pool_model_dice'])} | "
            f"{_pm(row['pool_pseudo_dice_covered'])} | {_pm(row['pool_pseudo_coverage'], 3)} | "
            f"{_pm(row['pool_pseudo_dice_all_pixels'])} | {row['train_seconds']['mean']:.0f} |"
        )
    if ref:
        lines.append(
            f"| {sum(pool.values())} | full reference ({ref['n_seeds']} seed(s), multisite_cxr) "
            f"| {ref['n_seeds']} | {ref['dice_mean']:.4f} | {ref['worst_site_dice_mean']:.4f} "
            "| 100 | – | – | – | – | – |"
        )
    lines += [
        "",
        "Mean ± std over seeds. **Mean Dice**: over all test images (sites pooled). **Worst "
        "site**: per seed the lowest per-site Dice (which site, over the seeds, in brackets). "
        "**% of full**: against the full-data reference of `multisite_cxr` "
        + (f"({ref['source']}, {ref['n_seeds']} seed(s))" if ref else "(not available yet: –)")
        + ". **On the pool** (the unlabelled items, against their hidden masks; bookkeeping "
        "only): *model Dice* = the final model's own predictions; *pseudo-label Dice* = the RPG "
        "labels the final model's decoder features give with the settings above and the labelled "
        "items as references — *covered*: on the pixels the filter keeps (*coverage* = their "
        "share), *all pixels*: filtered pixels counted as background. For `supervised` these are "
        "the labels RPG would start from.",
        "",
        "Paired differences RPG − supervised (same labels and training seed), in Dice points "
        "(mean ± std over seeds):",
        "",
        "| labels | seeds | mean Dice | worst-site Dice | "
        + " | ".join(ms.SITE_TITLES[x] for x in ms.SITES)
        + " |",
        "|---|---|---|---|" + "---|" * len(ms.SITES),
    ]
    for d in report["results"]["differences"]:
        sites = " | ".join(_signed(d["site_dice"][x]) for x in ms.SITES)
        lines.append(
            f"| {d['n_labelled']} | {d['seeds']} | {_signed(d['dice'])} | "
            f"{_signed(d['worst_site_dice'])} | {sites} |"
        )
    lines += [
        "",
        "Dice per test site (mean ± std over seeds):",
        "",
        "| labels | arm | " + " | ".join(ms.SITE_TITLES[x] for x in ms.SITES) + " |",
        "|---|---|" + "---|" * len(ms.SITES),
    ]
    for row in report["results"]["rows"]:
        if row["n_seeds"]:
            sites = " | ".join(_pm(row["site_dice"][x]) for x in ms.SITES)
            lines.append(f"| {row['n_labelled']} | {row['arm']} | {sites} |")
    lines += [
        "",
        f"## Goal check (issue 15: RPG ≥ supervised everywhere; ≥ +{100 * GAIN_NEEDED:g} Dice "
        f"point where supervised is below {HEADROOM_PCT:g} % of full data)",
        "",
        "| labels | metric | pairs | RPG − supervised (points) | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in report["goal"]:
        diff = _signed({"mean": c["difference"], "std": c["difference_std"]})
        lines.append(
            f"| {c['n_labelled']} | {c['metric']} | {c['n_pairs']} | {diff} | {c['verdict']} |"
        )
    timing = report["timing"]
    env = report["environment"]
    lines += [
        "",
        'Verdicts are computed from the table: "within seed noise" = |mean difference| ≤ its '
        "std over the seed pairs.",
        "",
        "Timing (one CPU core, another benchmark on the other): a cell ≈ "
        + ", ".join(
            f"{a} {timing['cell_seconds'][a]:.0f} s ({timing['source'][a]})" for a in p["arms"]
        )
        + f" (fit + test evaluation + pool measures); the whole plan ≈ "
        f"{ms._hours(timing['seconds_total'])}. Environment: Python {env['python']}, "
        f"{env['cpu_count']} CPUs, torch threads {env['torch_threads']}.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Main


def check_protocol(work: Path, recorded: Mapping[str, Any]) -> None:
    """Write ``<work>/protocol.json`` or refuse a different one.

    Raises:
        SystemExit: the folder holds cells of other settings.
    """
    from alframe.loop.state import atomic_write_json

    path = work / "protocol.json"
    current = json.loads(json.dumps(recorded))
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != current:
            changed = sorted(k for k in set(old) | set(current) if old.get(k) != current.get(k))
            raise SystemExit(
                f"{work} was made with other settings ({', '.join(changed)} differ); pass "
                "--work with a new folder or restore them"
            )
        return
    atomic_write_json(path, current)


def load_cells(work: Path, plan: Plan) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Finished cells of the plan, summarised."""
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    for arm, size, seed in plan.cells():
        path = cell_dir(work, arm, size, seed) / "result.json"
        if path.is_file():
            found[(arm, size, seed)] = summary(json.loads(path.read_text(encoding="utf-8")))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=os.environ.get("ALFRAME_DATA"))
    parser.add_argument("--work", type=Path, default=None, help="cache folder")
    parser.add_argument("--docs", type=Path, default=None, help="where the page goes")
    parser.add_argument("--report-only", action="store_true", help="no training: the page only")
    parser.add_argument("--smoke", action="store_true", help="10 steps, 2.5 %%, seed 0, own folder")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--budgets", nargs="+", type=float, default=None, metavar="FRACTION")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps per fit")
    parser.add_argument("--top-k", type=int, default=RPGSettings.top_k)
    parser.add_argument("--temperature", type=float, default=RPGSettings.temperature)
    parser.add_argument(
        "--filter-percentile",
        type=float,
        default=RPGSettings.filter_percentile,
        help="per image, pixels below this similarity percentile get no pseudo-label (0: off)",
    )
    parser.add_argument("--match-stride", type=int, default=RPGSettings.match_stride)
    parser.add_argument("--max-per-class", type=int, default=RPGSettings.max_per_class)
    parser.add_argument("--lambda-max", type=float, default=RPGSettings.lambda_max)
    parser.add_argument("--keep-checkpoints", action="store_true")
    args = parser.parse_args(argv)

    if not args.data_root:
        raise SystemExit(
            "set ALFRAME_DATA (e.g. export ALFRAME_DATA=../shared/data) or --data-root"
        )
    cxr_root = Path(args.data_root).expanduser().resolve() / "cxr_lungs"
    work = (args.work or (WORK.parent / f"{NAME}_smoke" if args.smoke else WORK)).resolve()
    docs = (args.docs or (work if args.smoke or args.work else DOCS)).resolve()
    protocol = ms.Protocol(steps_per_round=args.steps or (10 if args.smoke else 200))
    settings = RPGSettings(
        top_k=args.top_k,
        temperature=args.temperature,
        filter_percentile=args.filter_percentile,
        match_stride=args.match_stride,
        max_per_class=args.max_per_class,
        lambda_max=args.lambda_max,
    )
    budgets = list(args.budgets or ([0.025] if args.smoke else DEFAULT_BUDGETS))
    from alframe.loop.schedule import BudgetSchedule

    sizes = list(BudgetSchedule.from_fractions(budgets, protocol.pool_size).cumulative)
    plan = Plan(
        arms=list(args.arms),
        sizes=sizes,
        seeds=list(args.seeds or ([0] if args.smoke else DEFAULT_SEEDS)),
    )

    composition = ms.compose(ms.read_splits(cxr_root), protocol)
    work.mkdir(parents=True, exist_ok=True)
    check_protocol(
        work,
        {"protocol": asdict(protocol), "composition": asdict(composition), "rpg": asdict(settings)},
    )
    data_dir = work / "data"
    ms.build_data_folder(data_dir, cxr_root, composition)
    os.chdir(REPO)  # the recipe's data root is relative to the repository
    recipe = build_recipe(protocol, data_dir, work, settings)

    cells = load_cells(work, plan)
    guess = estimate(plan, cells, protocol.steps_per_round)
    _print_estimate(plan, guess)
    seconds = None
    if not args.report_only and len(cells) < len(plan.cells()):
        import logging
        import warnings

        from alframe.data import DataCatalog

        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        for logger in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        catalog = DataCatalog(recipe)
        started = time.perf_counter()
        todo = [c for c in plan.cells() if c not in cells]
        for index, (arm, size, seed) in enumerate(todo, 1):
            result = summary(
                run_cell(recipe, catalog, arm, size, seed, work, args.keep_checkpoints)
            )
            cells[(arm, size, seed)] = result
            guess = estimate(plan, cells, protocol.steps_per_round)
            pool = result["pool"]
            print(
                f"  cell {index}/{len(todo)}: {arm} n={size} seed {seed}: mean Dice "
                f"{result['dice_mean']:.4f}, worst site {result['worst_site']} "
                f"{result['worst_site_dice']:.4f}; pool: model {pool['model_dice']:.4f}, "
                f"pseudo-labels {pool['pseudo_dice_covered']:.4f} (coverage "
                f"{pool['pseudo_coverage']:.3f}); {result['seconds']:.0f} s; ≈ "
                f"{ms._hours(guess['seconds_left'])} left",
                flush=True,
            )
        seconds = time.perf_counter() - started

    import torch

    from alframe.loop.state import package_versions

    reference = multisite_reference()
    table = summarize(cells, plan, reference)
    missing = [f"{a} @ {n} labels seed {s}" for a, n, s in plan.cells() if (a, n, s) not in cells]
    report = {
        "benchmark": NAME,
        "status": "complete" if not missing else "partial",
        "smoke": args.smoke,
        "cells_done": len(plan.cells()) - len(missing),
        "cells_planned": len(plan.cells()),
        "missing": missing,
        "protocol": {
            "pool_size": protocol.pool_size,
            "proportions": protocol.proportions,
            "pool_seed": protocol.pool_seed,
            "composition": composition.counts(),
            "n_unlabelled": " / ".join(str(protocol.pool_size - n) for n in sizes),
            "image_size": protocol.image_size,
            "steps": protocol.steps_per_round,
            "batch_size": protocol.round_batch_size,
            "budgets": budgets,
            "sizes": sizes,
            "seeds": plan.seeds,
            "arms": plan.arms,
            "model": "Unet/resnet18",
            "rpg": asdict(settings),
        },
        "full_reference": reference,
        "results": table,
        "goal": goal_check(table, reference),
        "timing": {**estimate(plan, cells, protocol.steps_per_round), "run_seconds": seconds},
        "runs": [
            {k: v for k, v in c.items() if k not in ("strategy_used", "cold_start", "alpha")}
            | {"arm": a}
            for (a, _, _), c in cells.items()
        ],
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "versions": package_versions(),
        },
    }
    from alframe.loop.state import atomic_write_json, atomic_write_text

    docs.mkdir(parents=True, exist_ok=True)
    atomic_write_json(docs / f"{NAME}.json", report)
    atomic_write_text(docs / f"{NAME}.md", build_markdown(report))
    print(f"wrote {docs / (NAME + '.json')} and {docs / (NAME + '.md')} ({report['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
