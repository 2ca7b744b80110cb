"""Results of a budget experiment: the long results table, learning curves, AULC, % of full data.

Everything here works from round manifests (plain dicts), so a summary can be rebuilt from a run
directory at any time (:func:`alframe.loop.experiment.summarize_experiment`).

Definitions:
- per (strategy, schedule, budget, evaluation set): mean ± std over seeds of the per-seed mean
  Dice (std with ddof=1; 0 for a single seed);
- % of full data: 100 × that mean / the mean over seeds of the full-data reference's Dice;
- AULC: per seed, the trapezoid area under Dice(n_labelled) divided by the n_labelled range
  (so it is a Dice-like number in [0, 1]; a single round gives its Dice), then mean ± std;
- pool agreement (the label-free stopping signal, :mod:`alframe.loop.pool_agreement`): per
  (strategy, schedule, budget), mean ± std over the seeds that have a value (none in round 0).
  It does not depend on the evaluation set; every set's rows repeat it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_LABEL = "full"

REFERENCE_TOLERANCE = 0.005
"""Dice by which the full-data reference may fall below a subset model (seed noise) before the
set's percentages of full data are withheld (:func:`summary_table`)."""

RESULT_COLUMNS = [
    "label",
    "strategy",
    "schedule",
    "seed",
    "round",
    "n_labelled",
    "eval_set",
    "n_images",
    "dice_mean",
    "dice_std",
    "iou_mean",
    "iou_std",
    "strategy_used",
    "cold_start",
    "train_seconds",
    "steps",
    "pool_agreement",
    "pool_agreement_items",
    "estimated_effort",
]


def results_frame(manifests: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (run, round, evaluation set) from round manifests.

    Args:
        manifests: round manifests of every run (reference included).

    Returns:
        A frame with :data:`RESULT_COLUMNS`, sorted by label, schedule, seed, round, set.
    """
    rows = []
    for manifest in manifests:
        fit = manifest.get("fit") or {}
        for set_name, stats in (manifest.get("metrics") or {}).items():
            rows.append(
                {
                    "label": manifest.get("label"),
                    "strategy": manifest.get("strategy"),
                    "schedule": manifest.get("schedule"),
                    "seed": manifest.get("seed"),
                    "round": manifest.get("round"),
                    "n_labelled": manifest.get("n_labelled"),
                    "eval_set": set_name,
                    "n_images": stats.get("n"),
                    "dice_mean": stats.get("dice_mean"),
                    "dice_std": stats.get("dice_std"),
                    "iou_mean": stats.get("iou_mean"),
                    "iou_std": stats.get("iou_std"),
                    "strategy_used": manifest.get("strategy_used"),
                    "cold_start": manifest.get("cold_start"),
                    "train_seconds": fit.get("train_seconds"),
                    "steps": fit.get("steps"),
                    "pool_agreement": manifest.get("pool_agreement"),
                    "pool_agreement_items": manifest.get("pool_agreement_items"),
                    "estimated_effort": (manifest.get("effort") or {}).get("cumulative"),
                }
            )
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if len(frame):
        # Evaluation sets keep the recipe's order (the manifests' metrics are in that order).
        frame = frame.sort_values(["label", "schedule", "seed", "round"], kind="stable")
    return frame.reset_index(drop=True)


def aulc(n_labelled: Sequence[float], scores: Sequence[float]) -> float:
    """Area under a learning curve, normalised by the n_labelled range.

    Args:
        n_labelled: (R,) labelled-set sizes (any order; sorted here).
        scores: (R,) the metric at each size.

    Returns:
        ``trapezoid(scores, n_labelled) / (max - min)``; the score itself for one point; NaN
        for none.
    """
    x = np.asarray(n_labelled, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return math.nan
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x.size == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def _finite(values: Iterable[Any]) -> np.ndarray:
    """The finite numbers among ``values`` (None / NaN dropped) as float64."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    array = numbers.to_numpy(dtype=np.float64)
    return array[np.isfinite(array)]


def reference_scores(results: pd.DataFrame) -> dict[str, tuple[float, float, int]]:
    """Per evaluation set: (mean, std, n seeds) of the full-data reference's Dice."""
    reference = results[results["label"] == REFERENCE_LABEL]
    scores = {}
    for set_name, group in reference.groupby("eval_set", sort=False):
        values = group["dice_mean"].to_numpy(dtype=np.float64)
        scores[str(set_name)] = (float(values.mean()), _std(values), int(values.size))
    return scores


def summary_table(results: pd.DataFrame, set_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean ± std over seeds per (label, schedule, evaluation set, n_labelled), with % of full
    data and AULC.

    Args:
        results: a frame from :func:`results_frame`.
        set_order: evaluation sets in display order (default: order of appearance); sets not
            listed follow.

    Returns:
        Columns ``label, schedule, eval_set, n_labelled, n_seeds, dice_mean, dice_std,
        iou_mean, iou_std, pct_of_full, aulc_mean, aulc_std, agreement_mean, agreement_std``
        (the reference has one row per set with pct_of_full 100; agreement is NaN where no seed
        has a value). pct_of_full is None for every row of a set whose reference Dice is below
        some subset's mean Dice by more than :data:`REFERENCE_TOLERANCE`: such a reference is not a ceiling (see
        :func:`reference_below_subsets`).
    """
    columns = [
        "label",
        "schedule",
        "eval_set",
        "n_labelled",
        "n_seeds",
        "dice_mean",
        "dice_std",
        "iou_mean",
        "iou_std",
        "pct_of_full",
        "aulc_mean",
        "aulc_std",
        "agreement_mean",
        "agreement_std",
    ]
    if not len(results):
        return pd.DataFrame(columns=columns)
    reference = reference_scores(results)
    aulcs: dict[tuple[str, str, str], list[float]] = {}
    for (label, schedule, set_name, _seed), group in results.groupby(
        ["label", "schedule", "eval_set", "seed"], sort=False
    ):
        value = aulc(group["n_labelled"].tolist(), group["dice_mean"].tolist())
        aulcs.setdefault((str(label), str(schedule), str(set_name)), []).append(value)
    # A reference clearly below some subset model is no ceiling (e.g. a too-short training): a
    # percentage of it would read as "more than full data". Such sets get no percentage.
    subsets = results[results["label"] != REFERENCE_LABEL]
    best_subset = subsets.groupby(["label", "schedule", "eval_set", "n_labelled"])[
        "dice_mean"
    ].mean()
    best_by_set = best_subset.groupby(level="eval_set").max().to_dict() if len(subsets) else {}
    rows = []
    for (label, schedule, set_name, n_labelled), group in results.groupby(
        ["label", "schedule", "eval_set", "n_labelled"], sort=False
    ):
        dice = group["dice_mean"].to_numpy(dtype=np.float64)
        iou = group["iou_mean"].to_numpy(dtype=np.float64)
        ref = reference.get(str(set_name))
        if ref and ref[0] < best_by_set.get(set_name, -math.inf) - REFERENCE_TOLERANCE:
            ref = None
        area = np.asarray(aulcs[(str(label), str(schedule), str(set_name))], dtype=np.float64)
        agreement = _finite(group["pool_agreement"]) if "pool_agreement" in group else _finite([])
        rows.append(
            {
                "label": label,
                "schedule": schedule,
                "eval_set": set_name,
                "n_labelled": int(n_labelled),
                "n_seeds": int(dice.size),
                "dice_mean": float(dice.mean()),
                "dice_std": _std(dice),
                "iou_mean": float(iou.mean()),
                "iou_std": _std(iou),
                "pct_of_full": 100.0 * float(dice.mean()) / ref[0] if ref and ref[0] > 0 else None,
                "aulc_mean": float(area.mean()),
                "aulc_std": _std(area),
                "agreement_mean": float(agreement.mean()) if agreement.size else math.nan,
                "agreement_std": _std(agreement) if agreement.size else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=columns)
    # The reference last; strategies in order of appearance.
    order = list(dict.fromkeys([*(set_order or []), *results["eval_set"].tolist()]))
    table["_set"] = table["eval_set"].map({name: i for i, name in enumerate(order)})
    table["_ref"] = table["label"] == REFERENCE_LABEL
    table = table.sort_values(["_set", "_ref", "n_labelled"], kind="stable")
    return table.drop(columns=["_set", "_ref"]).reset_index(drop=True)


def band_legend(axis: Any, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """A legend whose entries may be ``(line, band)`` tuples, drawn as the line over its band."""
    from matplotlib.legend_handler import HandlerTuple

    axis.legend(
        list(handles),
        list(labels),
        handler_map={tuple: HandlerTuple(ndivide=1)},
        loc="best",
        fontsize="small",
    )


def reference_below_subsets(table: pd.DataFrame) -> list[str]:
    """Evaluation sets whose full-data reference is below a subset model (no % of full data).

    Args:
        table: a frame from :func:`summary_table`.
    """
    sets = []
    for set_name, part in table.groupby("eval_set", sort=False):
        is_ref = part["label"] == REFERENCE_LABEL
        if is_ref.any() and part.loc[is_ref, "pct_of_full"].isna().all():
            sets.append(str(set_name))
    return sets


def _curve_label(label: str, schedule: str, schedules: Sequence[str]) -> str:
    return label if len(schedules) <= 1 else f"{label} ({schedule})"


def _seeds_text(counts: Iterable[Any]) -> str:
    """``"mean ± std over 3 seeds"`` (or ``2–3 seeds``), or ``"1 seed"`` (no band), from
    per-point seed counts."""
    values = [int(c) for c in counts] or [1]
    low, high = min(values), max(values)
    if high <= 1:
        return "1 seed"
    return f"mean ± std over {low if low == high else f'{low}–{high}'} seeds"


def learning_curves_figure(table: pd.DataFrame, title: str = "", metric: str = "dice") -> Any:
    """The learning-curve figure of :func:`plot_learning_curves` (for inspection and writing).

    Per strategy, a line through the mean over seeds at each budget (gid
    ``"curve:<label>"``) and, where a budget has several seeds, the band mean ± std (gid
    ``"band:<label>"``); the full-data reference is a black dashed line at its mean (gid
    ``"reference"``) with a grey band mean ± std when it has several seeds (gid
    ``"reference_band"``). Each legend entry is drawn with the same artists as its curve (line
    over band) and says how many seeds the band spans ("1 seed": no band).

    Args:
        table: a frame from :func:`summary_table`.
        title: figure title.
        metric: ``"dice"`` or ``"iou"``.

    Returns:
        The :class:`matplotlib.figure.Figure` (Agg canvas).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = list(dict.fromkeys(table["eval_set"].tolist())) or ["(no results)"]
    figure = Figure(figsize=(5.5 * len(sets), 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(sets), squeeze=False)[0]
    curves = table[table["label"] != REFERENCE_LABEL]
    schedules = list(dict.fromkeys(curves["schedule"].tolist()))
    for axis, set_name in zip(axes, sets):
        handles: list[Any] = []
        labels: list[str] = []
        part = curves[curves["eval_set"] == set_name]
        for (label, schedule), group in part.groupby(["label", "schedule"], sort=False):
            group = group.sort_values("n_labelled")
            name = _curve_label(str(label), str(schedule), schedules)
            x = group["n_labelled"].to_numpy(dtype=np.float64)
            y = group[f"{metric}_mean"].to_numpy(dtype=np.float64)
            err = group[f"{metric}_std"].to_numpy(dtype=np.float64)
            seeds = group["n_seeds"].to_numpy(dtype=np.int64)
            (line,) = axis.plot(x, y, marker="o", gid=f"curve:{name}", zorder=3)
            if (seeds > 1).any():
                band = axis.fill_between(
                    x, y - err, y + err, color=line.get_color(), alpha=0.2, gid=f"band:{name}"
                )
                handles.append((band, line))
            else:
                handles.append(line)
            labels.append(f"{name} ({_seeds_text(seeds)})")
        reference = table[(table["label"] == REFERENCE_LABEL) & (table["eval_set"] == set_name)]
        if len(reference):
            mean = float(reference[f"{metric}_mean"].iloc[0])
            std = float(reference[f"{metric}_std"].iloc[0])
            n_full = int(reference["n_labelled"].iloc[0])
            n_seeds = int(reference["n_seeds"].iloc[0])
            level = axis.axhline(mean, color="black", linestyle="--", linewidth=1, gid="reference")
            if n_seeds > 1:
                span = axis.axhspan(
                    mean - std, mean + std, color="grey", alpha=0.25, gid="reference_band"
                )
                handles.append((span, level))
            else:
                handles.append(level)
            labels.append(f"full data (n={n_full}, {_seeds_text([n_seeds])})")
        budgets = sorted({int(n) for n in part["n_labelled"]})
        if 0 < len(budgets) <= 12:
            axis.set_xticks(budgets)
        axis.set_title(str(set_name))
        axis.set_xlabel("labelled images")
        axis.set_ylabel(metric.capitalize())
        axis.grid(alpha=0.3)
        if handles:
            band_legend(axis, handles, labels)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_learning_curves(
    table: pd.DataFrame, path: str | os.PathLike[str], title: str = "", metric: str = "dice"
) -> Path:
    """Learning curves (mean ± std over seeds per strategy) with the full-data reference.

    One panel per evaluation set; x = labelled images, y = Dice. Drawn with matplotlib's Agg
    canvas (no pyplot, no display, no global backend change); see
    :func:`learning_curves_figure`.

    Args:
        table: a frame from :func:`summary_table`.
        path: the PNG to write (atomically).
        title: figure title.
        metric: ``"dice"`` or ``"iou"``.

    Returns:
        The written path.
    """
    figure = learning_curves_figure(table, title, metric)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp")
    figure.savefig(temp, format="png")
    os.replace(temp, target)
    return target


def _cell(mean: Any, std: Any, pct: Any = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.3f} ± {std:.3f}"
    if pct is not None and not (isinstance(pct, float) and math.isnan(pct)):
        text += f" ({pct:.1f} %)"
    return text


def markdown_table(table: pd.DataFrame) -> str:
    """One markdown table per evaluation set: Dice (% of full) per budget, and AULC; then,
    when any round has one, the pool agreement per budget (:func:`agreement_markdown`)."""
    lines: list[str] = []
    for set_name, part in table.groupby("eval_set", sort=False):
        curves = part[part["label"] != REFERENCE_LABEL]
        budgets = sorted({int(n) for n in curves["n_labelled"]})
        schedules = list(dict.fromkeys(curves["schedule"].tolist()))
        lines += [f"### {set_name}", ""]
        header = ["strategy", *[f"n={n}" for n in budgets], "AULC"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * len(header)) + "|")
        for (label, schedule), group in curves.groupby(["label", "schedule"], sort=False):
            by_n = {int(row.n_labelled): row for row in group.itertuples()}
            cells = [_curve_label(str(label), str(schedule), schedules)]
            for n in budgets:
                row = by_n.get(n)
                cells.append(_cell(row.dice_mean, row.dice_std, row.pct_of_full) if row else "")
            first = group.iloc[0]
            cells.append(_cell(first["aulc_mean"], first["aulc_std"]))
            lines.append("| " + " | ".join(cells) + " |")
        reference = part[part["label"] == REFERENCE_LABEL]
        if len(reference):
            row = reference.iloc[0]
            lines += [
                "",
                f"Full-data reference (n={int(row['n_labelled'])}, {int(row['n_seeds'])} "
                f"seed(s)): Dice {_cell(row['dice_mean'], row['dice_std'])}.",
            ]
        lines.append("")
    lines += agreement_markdown(table)
    return "\n".join(lines)


def agreement_markdown(table: pd.DataFrame) -> list[str]:
    """Lines of the pool-agreement table: mean ± std over seeds per strategy and budget.

    Args:
        table: a frame from :func:`summary_table` (a table written before the stopping signal
            existed, without ``agreement_*`` columns, gives no lines).

    Returns:
        Markdown lines, empty when no round has an agreement value.
    """
    if "agreement_mean" not in table.columns or not len(table):
        return []
    curves = table[table["label"] != REFERENCE_LABEL]
    # The value does not depend on the evaluation set: read the first set's rows.
    curves = curves[curves["eval_set"] == curves["eval_set"].iloc[0]] if len(curves) else curves
    measured = curves[np.isfinite(pd.to_numeric(curves["agreement_mean"], errors="coerce"))]
    if not len(measured):
        return []
    budgets = sorted({int(n) for n in measured["n_labelled"]})
    schedules = list(dict.fromkeys(curves["schedule"].tolist()))
    lines = [
        "### Pool agreement (label-free stopping signal)",
        "",
        "Mean foreground Dice between the previous and the current round's predictions on the "
        "items still unlabelled, mean ± std over seeds; near 1 means another batch of labels "
        "barely changed the model.",
        "",
    ]
    header = ["strategy", *[f"n={n}" for n in budgets]]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for (label, schedule), group in measured.groupby(["label", "schedule"], sort=False):
        by_n = {int(row.n_labelled): row for row in group.itertuples()}
        cells = [_curve_label(str(label), str(schedule), schedules)]
        for n in budgets:
            row = by_n.get(n)
            cells.append(_cell(row.agreement_mean, row.agreement_std) if row else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines
