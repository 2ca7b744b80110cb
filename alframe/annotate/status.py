"""`round status`: pending / labelled / pseudo-labelled per round and annotator, agreement
between annotators, and the label-free stopping signal (agreement between the last two trained
models on the unlabelled items, :func:`alframe.annotate.training.model_agreement`)."""

from __future__ import annotations

import json
import math
from typing import Any

from alframe.annotate.agreement import summarize_agreement
from alframe.annotate.formats import read_label_png
from alframe.annotate.labelstudio import effort_summary, format_effort
from alframe.annotate.project import Project


def project_status(project: Project) -> dict[str, Any]:
    """Counts per round and annotator, inter-annotator Dice and the latest training.

    Returns:
        JSON-friendly data: ``pool``, ``labelled``, ``pseudo_labelled``, ``pending``, ``rounds``
        (one entry per round with ``items``, ``labelled``, ``pending``, ``pseudo_labelled`` and
        ``annotators``: name → assigned / labelled / pending), ``agreement`` (``mean``,
        ``per_pair``, ``n_items``) and ``trainings`` (each with its ``pool_agreement`` record:
        ``value``, ``n_items``, ``previous_run``, ``previous_n_labelled``, ``note``; None for a
        run trained before alframe measured it).
    """
    store = project.store
    labelled_ids = {r["id"] for r in store.query("SELECT DISTINCT id FROM annotations")}
    pseudo_ids = {r["id"] for r in store.query("SELECT id FROM pseudo_labels")} - labelled_ids
    rounds: list[dict[str, Any]] = []
    for row in store.query("SELECT round, strategy, created FROM rounds ORDER BY round"):
        number = int(row["round"])
        ids = [r["id"] for r in store.query("SELECT id FROM selections WHERE round = ?", (number,))]
        per_annotator: dict[str, dict[str, int]] = {}
        for a in store.query(
            "SELECT s.annotator AS annotator, COUNT(*) AS assigned, COUNT(a.id) AS labelled "
            "FROM assignments s LEFT JOIN annotations a ON a.id = s.id AND "
            "a.annotator = s.annotator WHERE s.round = ? GROUP BY s.annotator "
            "ORDER BY s.annotator",
            (number,),
        ):
            per_annotator[a["annotator"]] = {
                "assigned": int(a["assigned"]),
                "labelled": int(a["labelled"]),
                "pending": int(a["assigned"]) - int(a["labelled"]),
            }
        n_labelled = sum(1 for i in ids if i in labelled_ids)
        rounds.append(
            {
                "round": number,
                "strategy": row["strategy"],
                "created": row["created"],
                "items": len(ids),
                "labelled": n_labelled,
                "pending": len(ids) - n_labelled,
                "pseudo_labelled": sum(1 for i in ids if i in pseudo_ids),
                "annotators": per_annotator,
            }
        )
    by_item: dict[str, list[tuple[str, str]]] = {}
    for r in store.query("SELECT id, annotator, path FROM annotations ORDER BY id, annotator"):
        by_item.setdefault(r["id"], []).append((r["annotator"], r["path"]))

    def pairs() -> Any:
        for item, entries in by_item.items():
            for i in range(len(entries)):
                for j in range(i + 1, len(entries)):
                    (name_a, path_a), (name_b, path_b) = entries[i], entries[j]
                    yield (
                        item,
                        name_a,
                        name_b,
                        read_label_png(project.path(path_a)),
                        read_label_png(project.path(path_b)),
                    )

    agreement = summarize_agreement(pairs(), len(project.class_names))
    trainings = [
        {
            "run": int(r["run"]),
            "created": r["created"],
            "n_labelled": int(r["n_labelled"]),
            "n_pseudo": int(r["n_pseudo"]),
            "folder": r["folder"],
            "checkpoint": r["checkpoint"],
            "pool_agreement": json.loads(r["metrics"] or "{}").get("pool_agreement"),
        }
        for r in store.query("SELECT * FROM trainings ORDER BY run")
    ]
    n_selected = sum(r["items"] for r in rounds)
    return {
        "pool": len(project.item_ids()),
        "selected": n_selected,
        "labelled": len(labelled_ids),
        "pseudo_labelled": len(pseudo_ids),
        "pending": n_selected - sum(r["labelled"] for r in rounds),
        "annotators": list(project.settings.annotators),
        "rounds": rounds,
        "agreement": {
            "mean_dice": None if math.isnan(agreement.mean) else agreement.mean,
            "per_pair": agreement.per_pair,
            "n_items": len({item for item, *_ in agreement.per_item}),
        },
        "trainings": trainings,
        "effort": effort_summary(store),
    }


def format_status(status: dict[str, Any]) -> str:
    """A terminal table of :func:`project_status`."""
    lines = [
        f"pool {status['pool']}: {status['selected']} selected, {status['labelled']} labelled, "
        f"{status['pending']} pending, {status['pseudo_labelled']} pseudo-labelled"
    ]
    if not status["rounds"]:
        lines.append("no rounds yet: run `alframe round next DIR --budget B`")
    for r in status["rounds"]:
        lines.append(
            f"round {r['round']:>3} ({r['strategy']}): {r['items']} items, {r['labelled']} "
            f"labelled, {r['pending']} pending, {r['pseudo_labelled']} pseudo-labelled"
        )
        for name, c in r["annotators"].items():
            lines.append(
                f"    {name:<16} assigned {c['assigned']:>4}  labelled {c['labelled']:>4}  "
                f"pending {c['pending']:>4}"
            )
    agreement = status["agreement"]
    if agreement["n_items"]:
        lines.append(
            f"inter-annotator Dice on {agreement['n_items']} overlapping items: "
            f"{agreement['mean_dice']:.4f}"
        )
        for pair, value in agreement["per_pair"].items():
            lines.append(f"    {pair.replace('|', ' vs '):<32} {value:.4f}")
    else:
        lines.append("inter-annotator Dice: no item is labelled by two annotators yet")
    if status["trainings"]:
        last = status["trainings"][-1]
        lines.append(
            f"latest model: run {last['run']} on {last['n_labelled']} labels "
            f"(+{last['n_pseudo']} pseudo): {last['checkpoint']}"
        )
    lines.append(format_model_agreement(status["trainings"]))
    lines.extend(format_effort(status.get("effort", {})))
    return "\n".join(lines)


def format_model_agreement(trainings: list[dict[str, Any]]) -> str:
    """One line on the stopping signal of the latest training (see :func:`project_status`)."""
    if len(trainings) < 2:
        return (
            "model agreement on the unlabelled pool: needs two trained rounds (run `alframe "
            "round train DIR` again after the next round's labels)"
        )
    last = trainings[-1]
    record = last.get("pool_agreement")
    if not record:
        return (
            f"model agreement on the unlabelled pool: not recorded for run {last['run']} "
            "(trained by an earlier alframe); the next `round train` measures it"
        )
    if record.get("value") is None:
        return (
            f"model agreement on the unlabelled pool: none for run {last['run']} "
            f"({record.get('note')})"
        )
    return (
        f"model agreement on {record['n_items']} unlabelled items: {record['value']:.4f} (run "
        f"{last['run']} on {last['n_labelled']} labels vs run {record['previous_run']} on "
        f"{record['previous_n_labelled']}; near 1: more labels barely change the model)"
    )
