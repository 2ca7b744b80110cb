"""Labelling rounds on a live Label Studio server: connect, push, sync, annotation effort.

``alframe project connect DIR --label-studio URL`` links a project to a Label Studio project
(created from the recipe's classes, or an existing one); the link lives in the state store
(``meta.labelstudio``: URL, project id, names of the labelling controls, user map, the *name* of
the environment variable that holds the token — never the token). Then:

- **push** (``round next`` on a connected project, or ``round push``): every pending
  (item, annotator) pair of the rounds gets one task: the image itself is uploaded, the task data
  carries ``alframe_id``, ``alframe_annotator``, ``alframe_round``, ``alframe_rank`` and
  ``alframe_score`` (the priority), and a pre-annotation (the latest ``round train`` model's
  prediction, or the recorded RPG pseudo-label) becomes a Label Studio *prediction* with a
  ``model_version``. Tasks already in Label Studio are found by their data and never duplicated,
  so a push that died half-way is simply run again.
- **sync** (``round sync``): Label Studio's JSON export is read; for every task alframe pushed,
  the latest submitted annotation per annotator that alframe has not recorded yet (a new one, or
  an edit: a newer ``updated_at``) goes through :func:`alframe.annotate.importer.import_labels`
  (same decoding and validation as ``round import``; replaces an older label). Then one
  transaction records each synced annotation version (with its effort) in ``ls_annotations``;
  older versions stay there and their label files stay under ``labelstudio/history/``.
  Skipped / cancelled annotations are reported, never imported.

Crash safety: labels are committed by the import's own transaction (all or nothing); the
annotation records follow in a second one, keyed by (annotation id, updated_at) and written with
``INSERT OR IGNORE``. A sync killed between the two finds the labels unchanged on the next run and
records them then: nothing is lost or doubled. Files (pre-annotations, history copies) are
content-addressed and written before the transaction that references them; unreferenced ones are
removed at the start of the next push / sync.

Effort: Label Studio's ``lead_time`` (seconds the annotator spent) and, where the task had a
pre-annotation, the fraction of pixels the annotator changed and the Dice between the
pre-annotation and the final mask (:func:`correction_effort`).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import secrets
import sqlite3
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe.annotate.faults import checkpoint
from alframe.annotate.formats import encode_label_png, label_sha256, read_label_png
from alframe.annotate.labelstudio_client import (
    LabelStudioClient,
    LabelStudioError,
    LabelStudioNotFound,
)
from alframe.annotate.project import STORED_IGNORE, Project
from alframe.annotate.store import StateStore, now
from alframe.errors import ConfigError, StateError
from alframe.loop.effort import correction_measures

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "LabelStudioError",
    "PushReport",
    "SyncReport",
    "brush_results",
    "class_colours",
    "connect_project",
    "correction_effort",
    "effort_summary",
    "encode_brush_rle",
    "labelling_config",
    "open_link",
    "push_round_tasks",
    "sync_annotations",
]

DEFAULT_TOKEN_ENV = "LABEL_STUDIO_API_KEY"
"""Environment variable read for the token unless ``--token-env`` names another one."""

LINK_KEY = "labelstudio"
HISTORY_DIR = "labelstudio/history"
PRE_DIR = "labelstudio/pre"

_TABLES = (
    """CREATE TABLE IF NOT EXISTS ls_tasks (
        task_id INTEGER PRIMARY KEY,
        id TEXT NOT NULL REFERENCES items(id),
        annotator TEXT NOT NULL,
        round INTEGER NOT NULL,
        pre_path TEXT,
        pre_sha256 TEXT,
        model_version TEXT,
        pushed TEXT NOT NULL,
        UNIQUE (id, annotator)
    )""",
    """CREATE TABLE IF NOT EXISTS ls_annotations (
        annotation_id INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        task_id INTEGER NOT NULL,
        id TEXT NOT NULL,
        annotator TEXT NOT NULL,
        round INTEGER NOT NULL,
        ls_user TEXT NOT NULL,
        label_sha256 TEXT NOT NULL,
        history_path TEXT NOT NULL,
        lead_time REAL,
        changed_fraction REAL,
        pre_dice REAL,
        model_version TEXT,
        synced TEXT NOT NULL,
        current INTEGER NOT NULL,
        PRIMARY KEY (annotation_id, updated_at)
    )""",
)

_PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#469990",
    "#9a6324",
    "#800000",
    "#808000",
    "#000075",
    "#fabed4",
    "#dcbeff",
    "#aaffc3",
)
IGNORE_COLOUR = "#808080"


# ------------------------------------------------------------------------------ brush RLE
_RLE_FIELD_BITS = (3, 4, 8, 16)
_RLE_MAX_RUN = 1 << _RLE_FIELD_BITS[-1]


def _field_index(length: int) -> int:
    return next(k for k, bits in enumerate(_RLE_FIELD_BITS) if length - 1 < (1 << bits))


def encode_brush_rle(values: np.ndarray) -> list[int]:
    """Encode a flat byte array as Label Studio's brush RLE (the inverse of
    :func:`alframe.annotate.formats.decode_brush_rle`).

    Runs of two or more equal values become repeat chunks; values that differ from both
    neighbours are gathered into literal chunks. Runs and literal groups longer than 65 536
    values are split.

    Args:
        values: (N,) integers in 0..255 (for a brush: the row-major RGBA image, N = H·W·4).

    Returns:
        The ``value.rle`` list of byte values.
    """
    data = np.asarray(values).ravel().astype(np.int64)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError("brush RLE encodes bytes (0..255)")
    fields: list[str] = [f"{data.size:032b}", f"{8 - 1:05b}"]
    fields += [f"{bits - 1:04b}" for bits in _RLE_FIELD_BITS]
    if data.size:
        starts = np.flatnonzero(np.r_[True, data[1:] != data[:-1]])
        lengths = np.diff(np.r_[starts, data.size])
        literals: list[int] = []

        def flush() -> None:
            for begin in range(0, len(literals), _RLE_MAX_RUN):
                chunk = literals[begin : begin + _RLE_MAX_RUN]
                k = _field_index(len(chunk))
                fields.append(f"0{k:02b}{len(chunk) - 1:0{_RLE_FIELD_BITS[k]}b}")
                fields.extend(f"{v:08b}" for v in chunk)
            literals.clear()

        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            value = int(data[start])
            if length == 1:
                literals.append(value)
                continue
            flush()
            while length > 0:
                run = min(length, _RLE_MAX_RUN)
                if run == 1:  # the last value of a long run on its own
                    literals.append(value)
                    break
                k = _field_index(run)
                fields.append(f"1{k:02b}{run - 1:0{_RLE_FIELD_BITS[k]}b}{value:08b}")
                length -= run
        flush()
    bits = "".join(fields)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def brush_results(
    labels: np.ndarray, class_names: Sequence[str], from_name: str, to_name: str
) -> list[dict[str, Any]]:
    """Label Studio brush results painting a stored label map: one region per foreground class.

    Args:
        labels: (H, W) uint8 class indices (0 = background, :data:`STORED_IGNORE` = unlabelled;
            neither is painted).
        class_names: class names in index order (background first).
        from_name: name of the BrushLabels control.
        to_name: name of the Image object.

    Returns:
        The ``result`` list of a prediction / annotation.
    """
    height, width = labels.shape
    out: list[dict[str, Any]] = []
    for index in range(1, len(class_names)):
        region = labels == index
        if not region.any():
            continue
        rgba = np.repeat(region.astype(np.uint8).ravel() * 255, 4)
        out.append(
            {
                "id": secrets.token_hex(5),
                "type": "brushlabels",
                "from_name": from_name,
                "to_name": to_name,
                "origin": "prediction",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": encode_brush_rle(rgba),
                    "brushlabels": [class_names[index]],
                },
            }
        )
    return out


# ------------------------------------------------------------------------- labelling config
def class_colours(count: int) -> list[str]:
    """``count`` distinct hex colours: a fixed palette, then evenly spread hues."""
    colours = list(_PALETTE[:count])
    golden = 0.618033988749895
    for k in range(count - len(colours)):
        r, g, b = colorsys.hsv_to_rgb((k * golden) % 1.0, 0.75, 0.9)
        colours.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return colours


def labelling_config(class_names: Sequence[str]) -> str:
    """A Label Studio labelling config: brush labels (one colour per foreground class, plus
    ``ignore`` for pixels to leave unlabelled) on the task's ``image``.

    Args:
        class_names: class names in index order (background first, not a label).
    """
    names = list(class_names[1:])
    colours = class_colours(len(names))
    labels = [
        f"    <Label value={quoteattr(n)} background={quoteattr(c)}/>"
        for n, c in zip(names, colours, strict=True)
    ]
    labels.append(f'    <Label value="ignore" background="{IGNORE_COLOUR}"/>')
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <BrushLabels name="brush" toName="image">\n' + "\n".join(labels) + "\n"
        "  </BrushLabels>\n"
        "</View>\n"
    )


def _controls(config: str, class_names: Sequence[str], where: str) -> dict[str, str]:
    """Names of the brush control, the image object and the image data key of a config."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as err:
        raise LabelStudioError(f"{where}: the labelling config is not valid XML ({err})") from None
    brush = next(iter(root.iter("BrushLabels")), None)
    if brush is None:
        raise LabelStudioError(
            f"{where} has no BrushLabels in its labelling config; attach to a project with "
            "brush labels, or let alframe create one (omit --project-id)"
        )
    to_name = brush.get("toName", "")
    image = next((e for e in root.iter("Image") if e.get("name") == to_name), None)
    if image is None or not str(image.get("value", "")).startswith("$"):
        raise LabelStudioError(
            f'{where}: the brush labels do not point at an <Image value="$..."> object; fix '
            "the labelling config"
        )
    labels = {str(e.get("value")).lower() for e in brush.iter("Label")}
    missing = [n for n in class_names[1:] if n.lower() not in labels]
    if missing:
        raise LabelStudioError(
            f"{where}: its brush labels lack the classes {', '.join(missing)} of the recipe; "
            "add them in Label Studio (Settings → Labeling Interface) or connect without "
            "--project-id to create a project"
        )
    return {
        "from_name": str(brush.get("name")),
        "to_name": to_name,
        "data_key": str(image.get("value"))[1:],
    }


# ------------------------------------------------------------------------------- the link
@dataclass
class Link:
    """A project's link to Label Studio (``meta.labelstudio``; the token is not in it)."""

    url: str
    project_id: int
    token_env: str
    from_name: str
    to_name: str
    data_key: str
    users: dict[str, str] = field(default_factory=dict)
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "url": self.url,
            "project_id": self.project_id,
            "token_env": self.token_env,
            "from_name": self.from_name,
            "to_name": self.to_name,
            "data_key": self.data_key,
            "users": dict(self.users),
            "title": self.title,
        }


def read_link(project: Project) -> Link | None:
    """The project's link, or None when it is not connected."""
    data = project.store.get_json(LINK_KEY)
    if not isinstance(data, dict):
        return None
    return Link(
        url=str(data["url"]),
        project_id=int(data["project_id"]),
        token_env=str(data.get("token_env", DEFAULT_TOKEN_ENV)),
        from_name=str(data.get("from_name", "brush")),
        to_name=str(data.get("to_name", "image")),
        data_key=str(data.get("data_key", "image")),
        users={str(k): str(v) for k, v in dict(data.get("users", {})).items()},
        title=str(data.get("title", "")),
    )


def _token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"${token_env} is not set: put your Label Studio access token in it (Account & "
            "Settings → Access Token); alframe reads it from the environment and never stores it"
        )
    return token


def client_for(url: str, token_env: str) -> LabelStudioClient:
    """A client for ``url`` with the token from ``$token_env``."""
    return LabelStudioClient(url, _token(token_env), token_source=f"the token in ${token_env}")


def open_link(project: Project) -> tuple[Link, LabelStudioClient]:
    """The project's link and a client whose server and token were checked.

    Raises:
        StateError: the project is not connected.
        LabelStudioError / ConfigError: no token, server down, token refused, project deleted.
    """
    link = read_link(project)
    if link is None:
        raise StateError(
            f"{project.root} is not connected to Label Studio; run `alframe project connect "
            f"{project.root} --label-studio URL` first"
        )
    client = client_for(link.url, link.token_env)
    client.whoami()
    try:
        client.project(link.project_id)
    except LabelStudioNotFound:
        raise LabelStudioError(
            f"Label Studio project {link.project_id} at {link.url} no longer exists; connect "
            f"again (`alframe project connect {project.root} --label-studio {link.url} "
            "--replace`)"
        ) from None
    return link, client


def _ensure_tables(conn: sqlite3.Connection) -> None:
    for statement in _TABLES:
        conn.execute(statement)


def has_tables(store: StateStore) -> bool:
    """Whether the project has ever been connected (its Label Studio tables exist)."""
    rows = store.query("SELECT name FROM sqlite_master WHERE type='table' AND name='ls_tasks'")
    return bool(rows)


def _parse_user_map(pairs: Sequence[str], annotators: Sequence[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for pair in pairs:
        who, sep, name = pair.partition("=")
        if not sep or not who.strip() or not name.strip():
            raise ConfigError(
                f"--user {pair!r}: expected LABEL_STUDIO_EMAIL_OR_USERNAME=ANNOTATOR, e.g. "
                "--user alice@lab.org=alice"
            )
        if name.strip() not in annotators:
            raise ConfigError(
                f"--user {pair!r}: {name.strip()!r} is not an annotator of the project "
                f"({', '.join(annotators)})"
            )
        users[who.strip().lower()] = name.strip()
    return users


def connect_project(
    project: Project,
    url: str,
    token_env: str = DEFAULT_TOKEN_ENV,
    project_id: int | None = None,
    title: str | None = None,
    users: Sequence[str] = (),
    replace: bool = False,
) -> dict[str, Any]:
    """Link ``project`` to a Label Studio project (created, or an existing one).

    Args:
        project: the open project (writable).
        url: the Label Studio server.
        token_env: the environment variable holding the token (its name is stored, not its
            value).
        project_id: attach to this existing Label Studio project (its brush labels must cover
            the recipe's classes); default: create one.
        title: title of a created project (default: the recipe name).
        users: ``LS_EMAIL_OR_USERNAME=ANNOTATOR`` pairs; users not listed map to the annotator
            of the same name (or e-mail local part), else to the task's annotator.
        replace: replace an existing link to another Label Studio project.

    Returns:
        ``{"url", "project_id", "title", "created"}``.

    Raises:
        StateError: already connected elsewhere (without ``replace``).
        LabelStudioError / ConfigError: no token, server down, token refused, unusable project.
    """
    previous = read_link(project)
    user_map = _parse_user_map(users, project.settings.annotators)
    client = client_for(url, token_env)
    client.whoami()
    created = False
    if project_id is None and previous is not None and previous.url == client.url:
        project_id = previous.project_id  # connecting again: keep the same project
    if project_id is not None:
        try:
            info = client.project(project_id)
        except LabelStudioNotFound:
            raise LabelStudioError(
                f"Label Studio at {client.url} has no project {project_id}; give an existing "
                "project's id (it is in the project's URL) or omit --project-id to create one"
            ) from None
        controls = _controls(
            str(info.get("label_config", "")), project.class_names, f"project {project_id}"
        )
    else:
        config = labelling_config(project.class_names)
        info = client.create_project(
            title or project.recipe.name,
            config,
            f"alframe labelling project {project.root.resolve().name} ({project.recipe.name})",
        )
        created = True
        controls = _controls(config, project.class_names, "the new project")
    if (
        previous is not None
        and (previous.url, previous.project_id) != (client.url, int(info["id"]))
        and not replace
    ):
        raise StateError(
            f"the project is already connected to Label Studio project {previous.project_id} "
            f"at {previous.url}; pass --replace to link it to another one"
        )
    link = Link(
        url=client.url,
        project_id=int(info["id"]),
        token_env=token_env,
        users={**(previous.users if previous else {}), **user_map},
        title=str(info.get("title", "")),
        **controls,
    )
    with project.store.transaction() as conn:
        _ensure_tables(conn)
        if previous is not None and (previous.url, previous.project_id) != (
            link.url,
            link.project_id,
        ):
            conn.execute("DELETE FROM ls_tasks")  # tasks of the old project are not ours now
        StateStore.set_json(conn, LINK_KEY, link.to_dict())
        StateStore.log_event(
            conn,
            "labelstudio-connect",
            {"url": link.url, "project_id": link.project_id, "created": created},
        )
    return {
        "url": link.url,
        "project_id": link.project_id,
        "title": link.title,
        "created": created,
    }


# --------------------------------------------------------------------------- pre-annotations
def model_pre_annotations(
    project: Project, ids: Sequence[str]
) -> tuple[dict[str, np.ndarray], str]:
    """The latest ``round train`` model's argmax labels for ``ids`` at each image's own size.

    Returns:
        (id → (H, W) uint8 labels, model version ``alframe-train-NNN``).

    Raises:
        StateError: no model has been trained yet.
    """
    from PIL import Image

    from alframe.annotate.importer import _image_shape
    from alframe.annotate.training import _predictor
    from alframe.loop.pool_agreement import predict_label_maps
    from alframe.models import load_task

    rows = project.store.query("SELECT run, checkpoint FROM trainings ORDER BY run DESC LIMIT 1")
    if not rows:
        raise StateError(
            "--pre-annotate model: no model has been trained in this project yet; run `alframe "
            "round train DIR` first, or use --pre-annotate none"
        )
    samples = project.samples()
    task = load_task(project.path(rows[0]["checkpoint"]))
    task.eval()
    labels, _ = predict_label_maps(_predictor(project.recipe, task, samples), list(ids))
    out: dict[str, np.ndarray] = {}
    for item, label in zip(ids, labels, strict=True):
        height, width = _image_shape(samples[item], project.recipe.data.in_channels)
        resized = Image.fromarray(label.astype(np.uint8)).resize(
            (width, height), Image.Resampling.NEAREST
        )
        out[item] = np.asarray(resized, dtype=np.uint8)
    return out, f"alframe-train-{int(rows[0]['run']):03d}"


def rpg_pre_annotations(project: Project, ids: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """The recorded pseudo-labels (``round pseudolabel``) of ``ids`` that have one."""
    rows = project.store.query("SELECT id, path, source FROM pseudo_labels")
    found = {r["id"]: r for r in rows if r["id"] in set(ids)}
    if not found:
        raise StateError(
            "--pre-annotate rpg: no pseudo-label is recorded for these items; run `alframe "
            "round pseudolabel DIR` before `round next`, or use --pre-annotate model"
        )
    sources = sorted({str(r["source"]) for r in found.values()})
    return (
        {i: read_label_png(project.path(r["path"])) for i, r in found.items()},
        "alframe-" + "+".join(sources).replace(":", "-"),
    )


def check_pre_annotate(project: Project, mode: str) -> None:
    """Refuse a pre-annotation mode that cannot work, before ``round next`` selects anything.

    Raises:
        ConfigError: unknown mode.
        StateError: ``model`` without a trained model, ``rpg`` without recorded pseudo-labels.
    """
    if mode not in ("auto", "model", "rpg", "none"):
        raise ConfigError(f"--pre-annotate {mode!r}: expected auto, model, rpg or none")
    if mode == "model" and project.latest_checkpoint() is None:
        raise StateError(
            "--pre-annotate model: no model has been trained in this project yet; run `alframe "
            "round train DIR` first, or use --pre-annotate none (nothing was selected)"
        )
    if mode == "rpg" and not project.store.query("SELECT 1 FROM pseudo_labels LIMIT 1"):
        raise StateError(
            "--pre-annotate rpg: no pseudo-labels are recorded; run `alframe round pseudolabel "
            "DIR` first, or use --pre-annotate model (nothing was selected)"
        )


def _pre_annotations(
    project: Project, ids: Sequence[str], mode: str
) -> tuple[dict[str, np.ndarray], str | None]:
    check_pre_annotate(project, mode)
    if not ids or mode == "none":
        return {}, None
    if mode == "rpg":
        return rpg_pre_annotations(project, ids)
    if mode == "auto" and project.latest_checkpoint() is None:
        return {}, None
    return model_pre_annotations(project, ids)


# ------------------------------------------------------------------------------------ push
@dataclass
class PushReport:
    """Outcome of a push.

    Attributes:
        created: (id, annotator, task id) of the tasks created now.
        adopted: tasks found in Label Studio from an interrupted push, recorded now.
        pre_annotated: how many of the created tasks carry a pre-annotation.
        model_version: the pre-annotations' model version (None without).
        notes: for the user.
    """

    created: list[tuple[str, str, int]] = field(default_factory=list)
    adopted: list[tuple[str, str, int]] = field(default_factory=list)
    pre_annotated: int = 0
    model_version: str | None = None
    notes: list[str] = field(default_factory=list)


def _remove_unreferenced(project: Project) -> None:
    """Pre-annotation and history files no record references (left by a killed command)."""
    referenced = {
        r["p"]
        for r in project.store.query(
            "SELECT pre_path AS p FROM ls_tasks WHERE pre_path IS NOT NULL "
            "UNION SELECT history_path AS p FROM ls_annotations"
        )
    }
    for folder in (PRE_DIR, HISTORY_DIR):
        base = project.path(folder)
        if base.is_dir():
            for file in sorted(base.rglob("*")):
                if file.is_file() and file.relative_to(project.root).as_posix() not in referenced:
                    file.unlink()


def _round_images(project: Project, round_index: int) -> dict[str, Path]:
    folder = project.round_dir(round_index) / "export"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return {str(it["id"]): folder / str(it["image"]) for it in manifest["items"]}


def push_round_tasks(
    project: Project,
    link: Link,
    client: LabelStudioClient,
    pre_annotate: str = "auto",
) -> PushReport:
    """Create a Label Studio task for every pending (item, annotator) pair that has none.

    Args:
        project: the open, connected project (writable).
        link: its link.
        client: a checked client (:func:`open_link`).
        pre_annotate: ``auto`` (the latest model's prediction when a model exists), ``model``,
            ``rpg`` (recorded pseudo-labels) or ``none``.

    Returns:
        The :class:`PushReport`.
    """
    store = project.store
    _remove_unreferenced(project)
    live = {int(t["id"]): t for t in client.tasks(link.project_id)}
    known = {
        (r["id"], r["annotator"]): int(r["task_id"])
        for r in store.query("SELECT id, annotator, task_id FROM ls_tasks")
    }
    pending = store.query(
        "SELECT s.round AS round, s.id AS id, s.annotator AS annotator, sel.rank AS rank, "
        "sel.score AS score FROM assignments s JOIN selections sel ON sel.id = s.id "
        "WHERE NOT EXISTS (SELECT 1 FROM annotations a WHERE a.id = s.id AND "
        "a.annotator = s.annotator) ORDER BY s.round, sel.rank, s.is_primary DESC, s.annotator"
    )
    missing = [r for r in pending if known.get((r["id"], r["annotator"])) not in live]
    report = PushReport()
    if not missing:
        return report
    by_data = {}
    for task in live.values():
        data = task.get("data") or {}
        key = (str(data.get("alframe_id")), str(data.get("alframe_annotator")))
        by_data[key] = int(task["id"])
    cases = project.case_of()
    names = project.class_names
    to_create = [r for r in missing if (r["id"], r["annotator"]) not in by_data]
    adopted = [r for r in missing if (r["id"], r["annotator"]) in by_data]
    pre, model_version = _pre_annotations(
        project, sorted({r["id"] for r in to_create}), pre_annotate
    )
    report.model_version = model_version
    rows: list[tuple[Any, ...]] = []
    for row in adopted:
        task_id = by_data[(row["id"], row["annotator"])]
        report.adopted.append((row["id"], row["annotator"], task_id))
        rows.append((task_id, row["id"], row["annotator"], int(row["round"]), None, None, None))
    images: dict[int, dict[str, Path]] = {}
    tasks: list[dict[str, Any]] = []
    pending_rows: list[tuple[Any, ...]] = []
    for row in to_create:
        item, who, round_index = str(row["id"]), str(row["annotator"]), int(row["round"])
        if round_index not in images:
            images[round_index] = _round_images(project, round_index)
        image = images[round_index][item]
        url = client.upload_file(link.project_id, image.name, image.read_bytes())
        checkpoint("push:uploaded")
        data = {
            link.data_key: url,
            "alframe_id": item,
            "alframe_case": cases[item],
            "alframe_annotator": who,
            "alframe_round": round_index,
            "alframe_rank": int(row["rank"]),
            "alframe_score": None if row["score"] is None else float(row["score"]),
        }
        new_task: dict[str, Any] = {"data": data}
        pre_path = pre_sha = None
        if item in pre:
            labels = pre[item]
            pre_sha = label_sha256(labels)
            pre_path = f"{PRE_DIR}/{cases[item]}.{pre_sha[:12]}.png"
            if not project.path(pre_path).exists():
                atomic_write_bytes(project.path(pre_path), encode_label_png(labels))
            new_task["predictions"] = [
                {
                    "model_version": model_version,
                    "score": None if row["score"] is None else float(row["score"]),
                    "result": brush_results(labels, names, link.from_name, link.to_name),
                }
            ]
            report.pre_annotated += 1
        tasks.append(new_task)
        pending_rows.append((item, who, round_index, pre_path, pre_sha, model_version))
    if tasks:
        task_ids = client.import_tasks(link.project_id, tasks)
        checkpoint("push:imported")
        if report.pre_annotated:
            # The settings page's "use predictions to pre-label tasks" with this model (Label
            # Studio accepts only a model version that its predictions already have).
            client.update_project(
                link.project_id, {"model_version": model_version, "show_collab_predictions": True}
            )
        for task_id, (item, who, round_index, pre_path, pre_sha, version) in zip(
            task_ids, pending_rows, strict=True
        ):
            rows.append(
                (task_id, item, who, round_index, pre_path, pre_sha, version if pre_path else None)
            )
            report.created.append((item, who, task_id))
    with store.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO ls_tasks(task_id, id, annotator, round, pre_path, pre_sha256, "
            "model_version, pushed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*r, now()) for r in rows],
        )
        StateStore.log_event(
            conn,
            "labelstudio-push",
            {
                "created": len(report.created),
                "adopted": len(report.adopted),
                "pre_annotated": report.pre_annotated,
                "model_version": model_version,
            },
        )
    return report


# ------------------------------------------------------------------------------------ sync
@dataclass
class SyncReport:
    """Outcome of a sync.

    Attributes:
        new / replaced / unchanged: (id, annotator) pairs, as :class:`ImportReport` counts them.
        recorded: annotation versions recorded now (with their effort).
        skipped: (task id, id, annotator, Label Studio user) of skipped / cancelled annotations
            whose item the annotator has not labelled (reported, never imported).
        pending: items of committed rounds still without any label.
        notes: for the user.
    """

    new: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    recorded: int = 0
    skipped: list[tuple[int, str, str, str]] = field(default_factory=list)
    pending: int = 0
    notes: list[str] = field(default_factory=list)


def _user_names(who: Any, users: Mapping[int, dict[str, Any]]) -> list[str]:
    if isinstance(who, int) and who in users:
        who = users[who]
    if isinstance(who, dict):
        names = [str(who.get(k)) for k in ("email", "username") if who.get(k)]
        return names + [n.split("@", 1)[0] for n in names if "@" in n]
    if isinstance(who, str):
        return [who, who.split("@", 1)[0]]
    return [str(who)]


def _annotator_of(
    who: Any, task_annotator: str, link: Link, annotators: Sequence[str], users: Any
) -> tuple[str, str]:
    """(project annotator, Label Studio user shown) of an annotation."""
    names = _user_names(who, users)
    shown = names[0] if names else "?"
    for name in names:
        if name.lower() in link.users:
            return link.users[name.lower()], shown
    for name in names:
        if name in annotators:
            return name, shown
    return task_annotator, shown


def correction_effort(pre: np.ndarray, final: np.ndarray, num_classes: int) -> tuple[float, float]:
    """How much an annotator changed a pre-annotation.

    Args:
        pre: (H, W) the pre-annotation's class indices.
        final: (H, W) the submitted mask's class indices (:data:`STORED_IGNORE` = unlabelled).
        num_classes: K.

    Returns:
        (fraction of pixels whose class changed, foreground Dice between pre and final) — the
        measure the simulated oracle's effort model uses (:mod:`alframe.loop.effort`).
    """
    if pre.shape != final.shape:
        raise ValueError(f"shapes differ: {pre.shape} vs {final.shape}")
    changed, dice = correction_measures(pre[None], final[None], num_classes, STORED_IGNORE)
    return float(changed[0]), float(dice[0])


def _when(annotation: Mapping[str, Any]) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def sync_annotations(
    project: Project,
    link: Link,
    client: LabelStudioClient,
    unpainted: str = "background",
    track: bool = True,
) -> SyncReport:
    """Fetch the annotations submitted or edited since the last sync and commit them.

    Args:
        project: the open, connected project (writable).
        link: its link.
        client: a checked client.
        unpainted: pixels no region covers: ``background`` or ``ignore``.
        track: log effort to MLflow when the recipe enables tracking.

    Returns:
        The :class:`SyncReport`.

    Raises:
        LabelStudioError: a pending task was deleted in Label Studio (nothing is synced).
        DataError: an annotation fails validation (nothing is synced).
    """
    from alframe.annotate.importer import _pending_count, import_labels

    store = project.store
    settings = project.settings
    _remove_unreferenced(project)
    export = {int(t["id"]): t for t in client.export(link.project_id)}
    tasks = {int(r["task_id"]): r for r in store.query("SELECT * FROM ls_tasks")}
    labelled = {
        (r["id"], r["annotator"]) for r in store.query("SELECT id, annotator FROM annotations")
    }
    report = SyncReport()
    gone = [r for t, r in sorted(tasks.items()) if t not in export]
    lost = [r for r in gone if (r["id"], r["annotator"]) not in labelled]
    if lost:
        first = lost[0]
        raise LabelStudioError(
            f"task {first['task_id']} ({first['id']} for {first['annotator']}) was deleted in "
            f"Label Studio{f' (and {len(lost) - 1} more)' if len(lost) > 1 else ''}; run "
            f"`alframe round push {project.root}` to upload it again (nothing was synced)"
        )
    if gone:
        report.notes.append(
            f"{len(gone)} tasks of labelled items were deleted in Label Studio; their labels stay"
        )
    recorded = {
        (int(r["annotation_id"]), r["updated_at"])
        for r in store.query("SELECT annotation_id, updated_at FROM ls_annotations")
    }
    users: dict[int, dict[str, Any]] = {}
    if any(
        isinstance(a.get("completed_by"), int)
        for t in export.values()
        for a in t.get("annotations", [])
    ):
        users = {int(u["id"]): u for u in client.users()}
    chosen: dict[tuple[str, str], tuple[int, dict[str, Any], str]] = {}
    for task_id, row in sorted(tasks.items()):
        task = export.get(task_id)
        if task is None:
            continue
        for annotation in task.get("annotations") or []:
            who, shown = _annotator_of(
                annotation.get("completed_by"),
                row["annotator"],
                link,
                settings.annotators,
                users,
            )
            if annotation.get("was_cancelled"):
                report.skipped.append((task_id, row["id"], who, shown))
                continue
            key = (str(row["id"]), who)
            best = chosen.get(key)
            if best is None or (_when(annotation), int(annotation.get("id", 0))) > (
                _when(best[1]),
                int(best[1].get("id", 0)),
            ):
                chosen[key] = (task_id, annotation, shown)
    # A skip is news only while its (item, annotator) has no label: once someone submitted,
    # reporting it on every sync would be noise.
    report.skipped = [
        s for s in report.skipped if (s[1], s[2]) not in labelled and (s[1], s[2]) not in chosen
    ]
    fresh = {
        key: value
        for key, value in chosen.items()
        if (int(value[1].get("id", 0)), _when(value[1])) not in recorded
    }
    if not fresh:
        report.pending = _pending_count(store)
        return report
    document = [
        {
            "id": task_id,
            "data": {"alframe_id": item, "alframe_annotator": who},
            "annotations": [annotation],
        }
        for (item, who), (task_id, annotation, _) in sorted(fresh.items())
    ]
    with tempfile.TemporaryDirectory(prefix="alframe-ls-") as tmp:
        source = Path(tmp) / f"label-studio-project-{link.project_id}.json"
        source.write_text(json.dumps(document), encoding="utf-8")
        imported = import_labels(project, source, replace=True, unpainted=unpainted)
    checkpoint("sync:imported")
    report.new, report.replaced, report.unchanged = (
        imported.new,
        imported.replaced,
        imported.unchanged,
    )
    stored = {
        (r["id"], r["annotator"]): r
        for r in store.query("SELECT id, annotator, path, label_sha256, round FROM annotations")
    }
    cases = project.case_of()
    records: list[tuple[Any, ...]] = []
    for (item, who), (task_id, annotation, shown) in sorted(fresh.items()):
        label_row = stored[(item, who)]
        final = read_label_png(project.path(label_row["path"]))
        sha = str(label_row["label_sha256"])
        history = f"{HISTORY_DIR}/{who}/{cases[item]}.{sha[:12]}.png"
        if not project.path(history).exists():
            atomic_write_bytes(project.path(history), project.path(label_row["path"]).read_bytes())
        checkpoint("sync:history-written")
        task_row = tasks[task_id]
        changed = dice = None
        if task_row["pre_path"] and project.path(task_row["pre_path"]).is_file():
            pre = read_label_png(project.path(task_row["pre_path"]))
            if pre.shape == final.shape:
                changed, dice = correction_effort(pre, final, len(project.class_names))
        lead = annotation.get("lead_time")
        records.append(
            (
                int(annotation.get("id", 0)),
                _when(annotation),
                task_id,
                item,
                who,
                int(label_row["round"]),
                shown,
                sha,
                history,
                float(lead) if isinstance(lead, int | float) and math.isfinite(lead) else None,
                changed,
                dice,
                task_row["model_version"] if changed is not None else None,
                now(),
            )
        )
    with store.transaction() as conn:
        for record in records:
            conn.execute(
                "UPDATE ls_annotations SET current = 0 WHERE id = ? AND annotator = ?",
                (record[3], record[4]),
            )
            conn.execute(
                "INSERT OR IGNORE INTO ls_annotations(annotation_id, updated_at, task_id, id, "
                "annotator, round, ls_user, label_sha256, history_path, lead_time, "
                "changed_fraction, pre_dice, model_version, synced, current) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                record,
            )
            checkpoint("sync:row")
        StateStore.log_event(
            conn,
            "labelstudio-sync",
            {
                "recorded": len(records),
                "new": len(report.new),
                "replaced": len(report.replaced),
                "skipped": len(report.skipped),
            },
        )
    report.recorded = len(records)
    report.pending = _pending_count(store)
    if track and project.recipe.tracking.enabled:
        report.notes.extend(log_effort(project, sorted({int(r[5]) for r in records})))
    return report


# ---------------------------------------------------------------------------------- effort
def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def effort_summary(store: StateStore) -> dict[str, Any]:
    """Annotation effort of the current synced annotations, per round and per annotator.

    Returns:
        ``{"n": N, "rounds": [{"round": r, "annotators": {name: stats}, **stats}]}`` where stats
        are ``n``, ``lead_time_mean`` (seconds), ``n_pre_annotated``, ``lead_time_pre_mean`` /
        ``lead_time_scratch_mean`` (with / without a pre-annotation), ``changed_fraction_mean``
        and ``pre_dice_mean`` (None where nothing was measured). Empty when never connected.
    """
    if not has_tables(store):
        return {"n": 0, "rounds": []}
    rows = store.query(
        "SELECT round, annotator, lead_time, changed_fraction, pre_dice FROM ls_annotations "
        "WHERE current = 1 ORDER BY round, annotator"
    )

    def stats(subset: Sequence[sqlite3.Row]) -> dict[str, Any]:
        pre = [r for r in subset if r["changed_fraction"] is not None]
        scratch = [r for r in subset if r["changed_fraction"] is None]
        return {
            "n": len(subset),
            "lead_time_mean": _mean([r["lead_time"] for r in subset]),
            "n_pre_annotated": len(pre),
            "lead_time_pre_mean": _mean([r["lead_time"] for r in pre]),
            "lead_time_scratch_mean": _mean([r["lead_time"] for r in scratch]),
            "changed_fraction_mean": _mean([r["changed_fraction"] for r in pre]),
            "pre_dice_mean": _mean([r["pre_dice"] for r in pre]),
        }

    rounds = []
    for number in sorted({int(r["round"]) for r in rows}):
        mine = [r for r in rows if int(r["round"]) == number]
        per = {
            name: stats([r for r in mine if r["annotator"] == name])
            for name in sorted({r["annotator"] for r in mine})
        }
        rounds.append({"round": number, **stats(mine), "annotators": per})
    return {"n": len(rows), "rounds": rounds}


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def format_effort(summary: Mapping[str, Any]) -> list[str]:
    """Terminal lines of :func:`effort_summary` (none when nothing was synced)."""
    if not summary.get("n"):
        return []
    lines = ["annotation effort (Label Studio; time per label, correction of pre-annotations):"]

    def line(label: str, s: Mapping[str, Any]) -> str:
        return (
            f"{label:<20} {s['n']:>4} labels  time {_fmt(s['lead_time_mean'], '{:.1f}')} s "
            f"(pre-annotated {s['n_pre_annotated']}: {_fmt(s['lead_time_pre_mean'], '{:.1f}')} "
            f"s, from scratch: {_fmt(s['lead_time_scratch_mean'], '{:.1f}')} s)  changed "
            f"{_fmt(s['changed_fraction_mean'], '{:.2%}')} of pixels  Dice pre→final "
            f"{_fmt(s['pre_dice_mean'], '{:.3f}')}"
        )

    for entry in summary["rounds"]:
        lines.append(line(f"round {entry['round']:>3}", entry))
        for name, stats in entry["annotators"].items():
            lines.append(line(f"    {name}", stats))
    return lines


def effort_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metrics of one round of :func:`effort_summary` (``effort.*`` and
    ``effort.<annotator>.*``; unmeasured values left out)."""
    keys = (
        "n",
        "lead_time_mean",
        "n_pre_annotated",
        "lead_time_pre_mean",
        "lead_time_scratch_mean",
        "changed_fraction_mean",
        "pre_dice_mean",
    )
    out = {f"effort.{k}": float(entry[k]) for k in keys if entry.get(k) is not None}
    for name, stats in entry["annotators"].items():
        out.update(
            {f"effort.{name}.{k}": float(stats[k]) for k in keys if stats.get(k) is not None}
        )
    return out


def labelling_round_run(tracker: Any, project: Project, number: int) -> str:
    """The MLflow run of a labelling round (``labelling round NNN``, tagged with the round and
    the project's folder): found again by its tags, or created (and ended) on first use. Runs
    of `round next` pictures and of `round sync` effort share it.

    Args:
        tracker: an :class:`alframe.tracking.Tracker`.
        project: the open project.
        number: the round.

    Returns:
        The run id.
    """
    project_tag = str(project.root.resolve())
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=(
            f"tags.`alframe.labelling_round` = '{number}' and "
            f"tags.`alframe.project` = '{project_tag}'"
        ),
    )
    if runs:
        return str(runs[0].info.run_id)
    run_id: str = tracker.start_run(
        f"labelling round {number:03d}",
        tags={"alframe.labelling_round": str(number), "alframe.project": project_tag},
    )
    tracker.end_run(run_id)
    return run_id


def log_effort(project: Project, rounds: Sequence[int]) -> list[str]:
    """Log the effort of ``rounds`` to MLflow: one run per round (``labelling round NNN``),
    found again by its tag and updated with a new step on each sync.

    Returns:
        Notes (a tracking failure is a note, not an error: the labels are committed already).
    """
    from alframe.errors import AlframeError
    from alframe.tracking import Tracker

    summary = {e["round"]: e for e in effort_summary(project.store)["rounds"]}
    recipe = project.recipe
    try:
        tracker = Tracker(recipe.tracking.experiment or recipe.name, recipe.tracking.uri)
        for number in rounds:
            if number not in summary:
                continue
            run_id = labelling_round_run(tracker, project, number)
            step = int(summary[number]["n"])
            tracker.log_metrics(run_id, effort_metrics(summary[number]), step=step)
    except AlframeError as err:
        return [f"effort not logged to MLflow: {err}"]
    return [f"effort of round(s) {', '.join(map(str, rounds))} logged to MLflow ({tracker.uri})"]


def effort_status_lines(project: Project) -> list[str]:
    """Effort lines for ``round status`` (empty when the project never synced)."""
    return format_effort(effort_summary(project.store))
