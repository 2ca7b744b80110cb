"""`round next`: select a batch, export it for annotators, commit the round.

Order of work, chosen so that a kill at any moment leaves the project consistent:

1. the selection is computed (nothing written);
2. everything the annotators get is written to ``rounds/.staging-NNN/`` (images, manifests in
   CSV and JSON, Label Studio tasks and labelling config, per-annotator assignment lists and a
   ``round.json`` with the sha256 of every file);
3. the staging folder is renamed to ``rounds/NNN``;
4. one transaction records the round, its selection and its assignments — the commit point.

A folder ``rounds/NNN`` that the state store does not know (a kill between 3 and 4) is removed by
recovery, so the round can simply be requested again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from alframe._atomic import atomic_write_bytes, fsync_folder
from alframe.annotate.assign import assign_annotators
from alframe.annotate.faults import checkpoint
from alframe.annotate.project import Project, ProjectSettings, check_annotators
from alframe.annotate.store import StateStore, now
from alframe.data.samples import Sample
from alframe.errors import ConfigError, DataError

EXPORT_FORMAT = "alframe.round-export/1"
_COPY_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass
class RoundExport:
    """What `round next` produced.

    Attributes:
        round: the new round's number (1-based).
        folder: ``rounds/NNN``.
        ids: selected ids in pick order.
        assignments: id → annotators (primary first).
        strategy: the strategy used.
        notes: warnings for the user (fewer items than asked, rounds still pending, pictures
            that could not be drawn).
        pictures: kind (``pool``, ``picked``) → PNG written after the commit
            (:mod:`alframe.annotate.pictures`).
    """

    round: int
    folder: Path
    ids: list[str]
    assignments: dict[str, list[str]]
    strategy: str
    notes: list[str] = field(default_factory=list)
    pictures: dict[str, Path] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _export_image(sample: Sample, in_channels: int, folder: Path, case: str) -> str:
    """Write the item's image for annotators; returns its file name.

    PNG / JPEG files are copied byte for byte; other sources (TIFF, NIfTI slices) are rendered to
    an 8-bit PNG (min-max scaled) because browsers and Label Studio cannot show them.
    """
    suffix = sample.image_path.suffix.lower()
    if sample.slice_index is None and suffix in _COPY_EXTENSIONS:
        name = case + suffix
        atomic_write_bytes(folder / name, sample.image_path.read_bytes())
        return name
    from alframe.data.io import read_image

    image = read_image(sample, in_channels)
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) * 255.0 if high > low else np.zeros_like(image)
    pixels = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, "PNG")
    name = case + ".png"
    atomic_write_bytes(folder / name, buffer.getvalue())
    return name


def labelstudio_config(class_names: Sequence[str]) -> str:
    """A Label Studio labelling interface: brush and polygon labels for every foreground class."""
    labels = [*class_names[1:], "ignore"]
    brush = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in labels)
    polygon = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in class_names[1:])
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <BrushLabels name="brush" toName="image">\n'
        f"{brush}\n"
        "  </BrushLabels>\n"
        '  <PolygonLabels name="polygon" toName="image">\n'
        f"{polygon}\n"
        "  </PolygonLabels>\n"
        "</View>\n"
    )


def next_round(
    project: Project,
    budget: int,
    strategy: str | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    annotators: Sequence[str] | None = None,
    overlap: float | None = None,
) -> RoundExport:
    """Select ``budget`` items, export them for annotators and commit the round.

    Args:
        project: the open project.
        budget: items to select (>= 1).
        strategy: strategy name (default: the recipe's ``select.strategy``).
        checkpoint_path: a segmentation checkpoint for uncertainty strategies; ``"latest"`` uses
            the latest `round train` model.
        annotators: new annotator names for this and later rounds (default: unchanged).
        overlap: new overlap fraction for this and later rounds (default: unchanged).

    Returns:
        The :class:`RoundExport`.

    Raises:
        ConfigError: bad budget, annotators or overlap; unknown strategy.
        DataError / StateError: nothing left to select, no checkpoint yet, unreadable images.
    """
    from alframe import strategies
    from alframe.strategies import BudgetClippedWarning
    from alframe.workflows.selection import picked_rows, select_from_recipe

    if budget < 1:
        raise ConfigError(f"--budget {budget}: give the number of items to select (>= 1)")
    settings = project.settings
    if annotators is not None or overlap is not None:
        names = check_annotators(
            annotators if annotators is not None else settings.annotators,
            overlap if overlap is not None else settings.overlap,
        )
        settings = ProjectSettings(
            annotators=names,
            overlap=overlap if overlap is not None else settings.overlap,
            ignore_value=settings.ignore_value,
            url_prefix=settings.url_prefix,
        )
    checkpoint_file: str | None = None
    if checkpoint_path is not None:
        if str(checkpoint_path) == "latest":
            latest = project.latest_checkpoint()
            if latest is None:
                raise DataError(
                    "--checkpoint latest: no model has been trained in this project yet; run "
                    "`alframe round train DIR` first or pass a checkpoint file"
                )
            checkpoint_file = str(latest)
        else:
            checkpoint_file = str(checkpoint_path)
    selected = {r["id"] for r in project.store.query("SELECT id FROM selections")}
    all_ids = project.item_ids()
    if len(selected) >= len(all_ids):
        raise DataError(
            f"all {len(all_ids)} pool items are already selected in earlier rounds; nothing is "
            "left to select — train on the labels (`alframe round train DIR`)"
        )
    strategy_name = strategy or project.recipe.select.strategy
    known = strategy_name in strategies.names()
    if known and "embeddings" in getattr(strategies.STRATEGIES.get(strategy_name), "requires", ()):
        from alframe.embed.pipeline import ensure_mae

        # The project owns its MAE: the first round that needs it trains it (once, cached).
        ensure_mae(project.recipe)
    with warnings.catch_warnings():
        # A budget clipped to what is left becomes the note below, not a second warning.
        warnings.simplefilter("ignore", BudgetClippedWarning)
        result = select_from_recipe(
            project.recipe,
            budget,
            strategy=strategy,
            checkpoint=checkpoint_file,
            labelled_ids=sorted(selected),
        )
    selection = result.selection
    picked = [result.ids[int(i)] for i in selection.indices]
    notes: list[str] = []
    if len(picked) < budget:
        notes.append(f"only {len(picked)} items were left to select (asked for {budget})")
    if not picked:
        raise DataError("the strategy selected nothing; check the pool and the budget")
    pending = project.store.query(
        "SELECT s.round AS round, COUNT(*) AS n FROM selections s WHERE NOT EXISTS "
        "(SELECT 1 FROM annotations a WHERE a.id = s.id) GROUP BY s.round ORDER BY s.round"
    )
    for row in pending:
        notes.append(f"round {row['round']} still has {row['n']} unlabelled items")

    round_index = max(project.round_numbers(), default=0) + 1
    assignments = assign_annotators(
        picked, settings.annotators, settings.overlap, [project.recipe.seed, round_index]
    )
    # score = priority from the pick order; the strategy's own score is the first term,
    # score_at_pick (picked_rows says why the two differ for greedy strategies).
    rows: list[dict[str, Any]] = [
        {
            "id": result.ids[row.index],
            "rank": row.rank,
            "score": _number(row.score),
            "terms": {name: _number(value) for name, value in row.terms.items()},
            "annotators": assignments[result.ids[row.index]],
        }
        for row in picked_rows(selection)
    ]
    folder = project.round_dir(round_index)
    staging = project.rounds_dir / f".staging-{round_index:03d}"
    if staging.exists():
        shutil.rmtree(staging)
    files = _write_export(project, staging, round_index, rows, settings, result.strategy)
    summary = {
        "format": EXPORT_FORMAT,
        "round": round_index,
        "strategy": result.strategy,
        "budget": budget,
        "created": now(),
        "embedding_hash": result.embedding_hash,
        "annotators": list(settings.annotators),
        "overlap": settings.overlap,
        "files": files,
    }
    summary_bytes = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write_bytes(staging / "round.json", summary_bytes)
    fsync_folder(staging)
    checkpoint("next:staged")
    os.replace(staging, folder)
    fsync_folder(project.rounds_dir)
    checkpoint("next:renamed")
    info = {"selection_info": getattr(selection, "info", {}) or {}, "notes": notes}
    with project.store.transaction() as conn:
        conn.execute(
            "INSERT INTO rounds(round, strategy, budget, created, embedding_hash, folder, "
            "export_sha256, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                round_index,
                result.strategy,
                budget,
                summary["created"],
                result.embedding_hash,
                folder.relative_to(project.root).as_posix(),
                hashlib.sha256(summary_bytes).hexdigest(),
                json.dumps(info, default=str, sort_keys=True),
            ),
        )
        conn.executemany(
            "INSERT INTO selections(round, id, rank, score, terms) VALUES (?, ?, ?, ?, ?)",
            [(round_index, r["id"], r["rank"], r["score"], json.dumps(r["terms"])) for r in rows],
        )
        checkpoint("next:selection-inserted")
        conn.executemany(
            "INSERT INTO assignments(round, id, annotator, is_primary) VALUES (?, ?, ?, ?)",
            [
                (round_index, item, name, int(k == 0))
                for item, names in assignments.items()
                for k, name in enumerate(names)
            ],
        )
        if settings != project.settings:
            StateStore.set_json(conn, "settings", settings.to_dict())
        StateStore.log_event(
            conn, "round", {"round": round_index, "n": len(picked), "strategy": result.strategy}
        )
    # After the commit: a picture that cannot be drawn is a note, never a lost round.
    from alframe.annotate.pictures import guarded, write_round_pictures

    pictures, picture_notes = guarded(
        f"round {round_index} pictures", lambda: write_round_pictures(project, round_index, result)
    )
    notes.extend(picture_notes)
    return RoundExport(round_index, folder, picked, assignments, result.strategy, notes, pictures)


def _write_export(
    project: Project,
    staging: Path,
    round_index: int,
    rows: list[dict[str, Any]],
    settings: ProjectSettings,
    strategy: str,
) -> dict[str, str]:
    """Write the round's files into ``staging``; returns relative path → sha256."""
    samples = project.samples()
    cases = project.case_of()
    export = staging / "export"
    images = export / "images"
    images.mkdir(parents=True)
    term_names = list(rows[0]["terms"]) if rows else []
    several = len(settings.annotators) > 1
    export_rel = f"rounds/{round_index:03d}/export"
    items: list[dict[str, Any]] = []
    for row in rows:
        name = _export_image(
            samples[row["id"]], project.recipe.data.in_channels, images, cases[row["id"]]
        )
        items.append(
            {
                "id": row["id"],
                "case": cases[row["id"]],
                "image": f"images/{name}",
                "round": round_index,
                "rank": row["rank"],
                "score": row["score"],
                "terms": row["terms"],
                "annotators": row["annotators"],
            }
        )
        checkpoint("next:image")
    header = ["id", "case", "image", "round", "rank", "score", "annotators", *term_names]
    csv_rows = [
        [
            it["id"],
            it["case"],
            it["image"],
            round_index,
            it["rank"],
            _fmt(it["score"]),
            ";".join(it["annotators"]),
            *[_fmt(it["terms"][t]) for t in term_names],
        ]
        for it in items
    ]
    documents: dict[str, bytes] = {
        "selection.csv": _csv_text(
            ["id", "rank", "score", *term_names],
            [
                [r["id"], r["rank"], _fmt(r["score"]), *[_fmt(r["terms"][t]) for t in term_names]]
                for r in rows
            ],
        ).encode("utf-8"),
        "export/manifest.csv": _csv_text(header, csv_rows).encode("utf-8"),
    }
    manifest = {
        "format": EXPORT_FORMAT,
        "round": round_index,
        "strategy": strategy,
        "classes": dict(project.recipe.data.classes),
        "ignore_value": settings.ignore_value,
        "mask_naming": "<case>.png (or .tif / .nii.gz) with class values or class indices",
        "items": items,
    }
    documents["export/manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")

    def tasks(subset: list[dict[str, Any]], annotator: str | None) -> bytes:
        out = []
        for it in subset:
            data = {
                "image": f"{settings.url_prefix}{export_rel}/{it['image']}",
                "alframe_id": it["id"],
                "alframe_case": it["case"],
                "alframe_round": round_index,
                "alframe_annotators": ",".join(it["annotators"]),
            }
            if annotator is not None:
                data["alframe_annotator"] = annotator
            out.append({"data": data})
        return (json.dumps(out, indent=2) + "\n").encode("utf-8")

    documents["export/labelstudio_tasks.json"] = tasks(items, None)
    documents["export/labelstudio_config.xml"] = labelstudio_config(project.class_names).encode()
    if several:
        for name in settings.annotators:
            mine = [it for it in items if name in it["annotators"]]
            documents[f"export/labelstudio/{name}.json"] = tasks(mine, name)
            documents[f"export/assignments/{name}.csv"] = _csv_text(
                ["id", "case", "image", "primary", "overlap"],
                [
                    [
                        it["id"],
                        it["case"],
                        it["image"],
                        int(it["annotators"][0] == name),
                        int(len(it["annotators"]) > 1),
                    ]
                    for it in mine
                ],
            ).encode("utf-8")
    for relative, data in documents.items():
        atomic_write_bytes(staging / relative, data)
    checkpoint("next:documents")
    files: dict[str, str] = {}
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            files[path.relative_to(staging).as_posix()] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return files
