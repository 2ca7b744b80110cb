"""Pictures of a labelling project, and its static HTML report (``round status --report``).

Written after the command's state is committed, so a picture that cannot be drawn costs a note,
never a round:

- ``round next`` → ``rounds/NNN/pictures/pool.png`` (the pool in a 2-D PCA of the embedding the
  strategy read: earlier rounds, this round's picks, the rest) and ``picked.png`` (the picks with
  the latest `round train` model's prediction, or alone before the first model); logged to the
  round's MLflow run (``labelling round NNN``) when tracking is on;
- ``round train`` → ``train/NNN/pictures/learning_curve.png`` (Dice of every run against its
  labelled count, per evaluation set, mean ± std where several runs share a count) and
  ``picked_round-RRR.png`` (the latest round's picks under the new model); logged to the
  training's MLflow run;
- ``round status --report`` → ``DIR/report.html``: one self-contained page (pictures embedded)
  with the learning curve, the latest pool picture, the latest picked picture and the tables
  ``round status`` prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe.annotate.project import Project
from alframe.errors import StateError
from alframe.report import (
    CurveSeries,
    ReportSection,
    figure_png_bytes,
    html_table,
    learning_curve_figure,
    render_report,
    save_figure,
)

PICTURES_DIR = "pictures"
REPORT_FILE = "report.html"

Pictures = dict[str, Path]
"""Kind of picture (``pool``, ``picked``, ``learning_curve``) → the written PNG."""


def round_pictures_dir(project: Project, round_index: int) -> Path:
    """``rounds/NNN/pictures``."""
    return project.round_dir(round_index) / PICTURES_DIR


def picked_picture_name(round_index: int) -> str:
    """File name of a training's picture of a round's picks."""
    return f"picked_round-{round_index:03d}.png"


def guarded(
    what: str, draw: Callable[[], tuple[Pictures, list[str]]]
) -> tuple[Pictures, list[str]]:
    """Run ``draw``; an error becomes a note (the command's state is committed already).

    Args:
        what: what is drawn, for the note (e.g. ``"round 3 pictures"``).
        draw: writes the pictures; returns them and its notes.

    Returns:
        ``draw``'s result, or no pictures and one note naming the error.
    """
    try:
        return draw()
    except Exception as err:  # a plot error must not turn a committed command into a failure
        return {}, [
            f"{what} not written ({type(err).__name__}: {err}); the command's work is "
            "committed, and `alframe round status DIR --report` draws what it can"
        ]


# ------------------------------------------------------------------------------- round next
def write_round_pictures(
    project: Project, round_index: int, result: Any
) -> tuple[Pictures, list[str]]:
    """The pictures of a committed round: pool projection and picked images.

    Args:
        project: the open project (the round is committed).
        round_index: the round.
        result: its :class:`~alframe.workflows.selection.SelectionResult` (labelled mask = the
            items selected in earlier rounds).

    Returns:
        ``(pictures, notes)``.
    """
    from alframe.workflows.pictures import write_selection_pictures

    folder = round_pictures_dir(project, round_index)
    model = project.latest_checkpoint()
    if model is not None and not model.is_file():
        model = None
    pictures, notes = write_selection_pictures(
        project.recipe,
        result,
        {"pool": folder / "pool.png", "picked": folder / "picked.png"},
        model=model,
        samples=project.samples(),
        labelled_name="earlier rounds",
        picked_name=f"picked in round {round_index}",
        title=f"round {round_index} ({result.strategy})",
    )
    notes.extend(log_round_pictures(project, round_index, pictures))
    return pictures, notes


def log_round_pictures(project: Project, round_index: int, pictures: Pictures) -> list[str]:
    """Log a round's pictures to its MLflow run when the recipe tracks (a failure is a note)."""
    recipe = project.recipe
    if not pictures or not recipe.tracking.enabled:
        return []
    from alframe.annotate.labelstudio import labelling_round_run
    from alframe.tracking import Tracker

    try:
        tracker = Tracker(recipe.tracking.experiment or recipe.name, recipe.tracking.uri)
        run_id = labelling_round_run(tracker, project, round_index)
        for path in pictures.values():
            tracker.log_artifact(run_id, path, PICTURES_DIR)
    except Exception as err:  # mlflow raises many types for an unreachable store
        return [f"round {round_index} pictures not logged to MLflow ({type(err).__name__}: {err})"]
    return []


# ------------------------------------------------------------------------------ round train
def learning_series(project: Project) -> list[CurveSeries]:
    """The Dice of every `round train` run against its labelled count: one series per evaluation
    set (validation Dice when the recipe evaluates on nothing), runs with pseudo-labels apart.

    Returns:
        The series (empty before the first training).
    """
    points: dict[str, list[tuple[float, float]]] = {}
    for row in project.store.query("SELECT n_labelled, n_pseudo, metrics FROM trainings"):
        metrics = json.loads(row["metrics"] or "{}")
        suffix = " + pseudo-labels" if int(row["n_pseudo"]) else ""
        scores = {
            name: stats.get("dice_mean", stats.get("dice"))
            for name, stats in (metrics.get("evaluation") or {}).items()
        }
        if not scores:
            scores = {"validation": metrics.get("best_val_dice")}
        for name, value in scores.items():
            if value is None or not math.isfinite(float(value)):
                continue
            points.setdefault(name + suffix, []).append((float(row["n_labelled"]), float(value)))
    return [
        CurveSeries(
            name,
            np.array([p[0] for p in values], dtype=np.float64),
            np.array([p[1] for p in values], dtype=np.float64),
        )
        for name, values in points.items()
    ]


def project_learning_curve(project: Project) -> Any:
    """The project's learning curve figure (see :func:`learning_series`)."""
    return learning_curve_figure(
        learning_series(project),
        title=f"{project.recipe.name}: Dice per round train run",
        repeat_name="trainings",
    )


def latest_round_picks(project: Project) -> tuple[int, list[str]] | None:
    """The latest round and its picks in rank order (None before the first round)."""
    rounds = project.round_numbers()
    if not rounds:
        return None
    ids = [
        r["id"]
        for r in project.store.query(
            "SELECT id FROM selections WHERE round = ? ORDER BY rank", (rounds[-1],)
        )
    ]
    return rounds[-1], ids


def write_training_pictures(
    project: Project,
    run: int,
    folder: Path,
    task: Any,
    tracker: Any = None,
    run_id: str | None = None,
) -> tuple[Pictures, list[str]]:
    """The pictures of a committed `round train` run: the learning curve and the latest round's
    picks under the new model.

    Args:
        project: the open project (the run is committed).
        run: the training's number.
        folder: ``train/NNN``.
        task: the new model (a :class:`~alframe.models.SegmentationTask`).
        tracker: the :class:`~alframe.tracking.Tracker` of the run (None: not logged).
        run_id: the run's MLflow id.

    Returns:
        ``(pictures, notes)``.
    """
    from alframe.workflows.pictures import write_picked_picture

    target = folder / PICTURES_DIR
    pictures: Pictures = {
        "learning_curve": save_figure(
            project_learning_curve(project), target / "learning_curve.png"
        )
    }
    latest = latest_round_picks(project)
    if latest is not None:
        round_index, ids = latest
        samples = project.samples()
        pictures["picked"] = write_picked_picture(
            project.recipe,
            [samples[i] for i in ids],
            target / picked_picture_name(round_index),
            f"round {round_index} picks under model run {run}",
            model=task,
        )
    notes: list[str] = []
    if tracker is not None and run_id is not None:
        try:
            for path in pictures.values():
                tracker.log_artifact(run_id, path, PICTURES_DIR)
        except Exception as err:  # mlflow raises many types for an unreachable store
            notes.append(f"run {run} pictures not logged to MLflow ({type(err).__name__}: {err})")
    return pictures, notes


# ---------------------------------------------------------------------------------- report
def _read_png(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None and path.is_file() else None


def _latest_picked_picture(project: Project) -> tuple[Path | None, str]:
    """The newest picture of the latest round's picks, and its caption.

    A picture drawn by the latest training shows the latest round under the newest model; else
    the round's own picture (drawn by `round next` with the model of that time).
    """
    latest = latest_round_picks(project)
    if latest is None:
        return None, ""
    round_index, _ = latest
    rows = project.store.query("SELECT run, folder FROM trainings ORDER BY run DESC LIMIT 1")
    if rows:
        trained = project.path(rows[0]["folder"]) / PICTURES_DIR / picked_picture_name(round_index)
        if trained.is_file():
            return trained, (
                f"round {round_index}'s picks with the prediction of the latest model "
                f"(`round train` run {int(rows[0]['run'])})"
            )
    own = round_pictures_dir(project, round_index) / "picked.png"
    return (own if own.is_file() else None), (
        f"round {round_index}'s picks as `round next` drew them (with the model of that time, "
        "if there was one)"
    )


def _latest_pool_picture(project: Project) -> tuple[Path | None, str]:
    for round_index in reversed(project.round_numbers()):
        path = round_pictures_dir(project, round_index) / "pool.png"
        if path.is_file():
            return path, (
                f"the pool when round {round_index} was picked: first two principal axes of the "
                "embedding the strategy read; stars are that round's picks, squares earlier "
                "rounds"
            )
    return None, ""


def _training_rows(project: Project) -> tuple[list[str], list[list[Any]]]:
    rows = project.store.query("SELECT run, n_labelled, n_pseudo, metrics FROM trainings")
    parsed = [(r, json.loads(r["metrics"] or "{}")) for r in rows]
    sets = list(dict.fromkeys(name for _, m in parsed for name in (m.get("evaluation") or {})))
    header = ["run", "labelled", "pseudo-labelled", *[f"Dice {s}" for s in sets]]
    header += ["validation Dice", "agreement with previous model"]

    def number(value: Any) -> str:
        return "" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"

    table = []
    for row, metrics in parsed:
        evaluation = metrics.get("evaluation") or {}
        agreement = (metrics.get("pool_agreement") or {}).get("value")
        table.append(
            [
                int(row["run"]),
                int(row["n_labelled"]),
                int(row["n_pseudo"]),
                *[number((evaluation.get(s) or {}).get("dice_mean")) for s in sets],
                number(metrics.get("best_val_dice")),
                number(agreement),
            ]
        )
    return header, table


def report_sections(project: Project, status: dict[str, Any]) -> list[ReportSection]:
    """The sections of the project's report (see :func:`write_project_report`)."""
    from alframe.annotate.status import format_model_agreement

    rounds_table = html_table(
        ["round", "strategy", "items", "labelled", "pending", "pseudo-labelled", "created"],
        [
            [
                r["round"],
                r["strategy"],
                r["items"],
                r["labelled"],
                r["pending"],
                r["pseudo_labelled"],
                r["created"],
            ]
            for r in status["rounds"]
        ],
    )
    annotators_table = html_table(
        ["round", "annotator", "assigned", "labelled", "pending"],
        [
            [r["round"], name, c["assigned"], c["labelled"], c["pending"]]
            for r in status["rounds"]
            for name, c in r["annotators"].items()
        ],
    )
    agreement = status["agreement"]
    agreement_text = (
        f"Inter-annotator Dice on {agreement['n_items']} items labelled twice: "
        f"{agreement['mean_dice']:.4f}."
        if agreement["n_items"]
        else "Inter-annotator Dice: no item is labelled by two annotators yet."
    )
    progress = ReportSection(
        "Progress",
        (
            f"Pool of {status['pool']} images: {status['selected']} selected, "
            f"{status['labelled']} labelled, {status['pending']} pending, "
            f"{status['pseudo_labelled']} pseudo-labelled.",
            agreement_text,
        ),
        tables_html=(rounds_table, annotators_table) if status["rounds"] else (),
    )
    header, rows = _training_rows(project)
    curve = ReportSection(
        "Learning curve",
        (
            "Dice of each `round train` run on the recipe's evaluation sets against the number "
            "of human-labelled images it trained on; where several runs share a count (e.g. "
            "other seeds), the line is their mean and the band mean ± std.",
            format_model_agreement(status["trainings"]) + ".",
        ),
        picture_png=figure_png_bytes(project_learning_curve(project)),
        picture_caption="Dice per labelled count, one line per evaluation set",
        tables_html=(html_table(header, rows),) if rows else (),
    )
    pool_path, pool_caption = _latest_pool_picture(project)
    pool = ReportSection(
        "The pool",
        ()
        if pool_path is not None
        else (
            "No pool picture yet: it is drawn by `round next` with a strategy that reads the "
            "embedding (xssr, coreset, typiclust, ...).",
        ),
        picture_png=_read_png(pool_path),
        picture_caption=pool_caption,
    )
    picked_path, picked_caption = _latest_picked_picture(project)
    picked = ReportSection(
        "Latest picks",
        ()
        if picked_path is not None
        else ("No picked images yet: run `alframe round next DIR --budget B`.",),
        picture_png=_read_png(picked_path),
        picture_caption=picked_caption,
    )
    return [progress, curve, pool, picked]


def write_project_report(project: Project, status: dict[str, Any] | None = None) -> Path:
    """Write ``DIR/report.html`` (atomically): one static page with the learning curve, the
    latest pool and picked pictures and the progress tables, readable from disk in a browser.

    Args:
        project: the open project (read only; the report is the one file written).
        status: :func:`~alframe.annotate.status.project_status` if already computed.

    Returns:
        The report's path.

    Raises:
        StateError: the project folder cannot be written.
    """
    from alframe.annotate.status import project_status
    from alframe.annotate.store import now

    if status is None:
        status = project_status(project)
    sections = report_sections(project, status)
    page = render_report(
        f"Labelling project {project.recipe.name}",
        sections,
        meta=f"{project.root.resolve()} · written {now()} by alframe round status --report",
    )
    target = project.root / REPORT_FILE
    try:
        return atomic_write_bytes(target, page.encode("utf-8"))
    except OSError as err:
        raise StateError(
            f"cannot write {target} ({err.strerror}); copy the project (cp -r) to a folder you "
            "can write to and run `alframe round status COPY --report` there"
        ) from None
