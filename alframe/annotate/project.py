"""A labelling project: a folder with the resolved recipe, the state store and the rounds.

Layout::

    DIR/project.json             what this is (format, creation time); written last by init
    DIR/recipe.yaml              the resolved recipe; its paths are relative to DIR
    DIR/state.db                 SQLite state store (items, rounds, assignments, annotations, ...)
    DIR/pool.csv                 the pool index: id, case name, image, group
    DIR/rounds/NNN/              selection.csv, export/ (images, manifests, Label Studio tasks)
    DIR/labels/<annotator>/      imported masks: <case>.<hash>.png, class indices, 255 = ignore
    DIR/pseudo/                  pseudo-labels recorded through the extension point
    DIR/train/NNN/               one `round train` run (checkpoint, evaluation, summary,
                                 pool_predictions.npz for the stopping signal)

Every command opens the project with :func:`open_project`, which takes the project lock and
runs :meth:`Project.recover`: files left by a killed command (staging folders, unreferenced
label files, half-written temporaries) are removed, because the database never references them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alframe._atomic import atomic_write_bytes, fsync_folder
from alframe.annotate.faults import checkpoint
from alframe.annotate.store import ProjectLock, StateStore, now
from alframe.config import Recipe, recipe_from_dict, recipe_to_dict
from alframe.config.loading import PROJECT_MARKER, project_recipe_paths, rebase_recipe_paths
from alframe.data.samples import Sample
from alframe.errors import ConfigError, DataError, StateError

PROJECT_FORMAT = "alframe.project/1"
PROJECT_FILE = PROJECT_MARKER
RECIPE_FILE = "recipe.yaml"
STATE_FILE = "state.db"
POOL_FILE = "pool.csv"
LOCK_FILE = ".lock"
OPEN_RUNS_KEY = "open_mlflow_runs"
"""State-store key: MLflow runs a `round train` has started and not yet ended (see recover)."""

STORED_IGNORE = 255
"""Value of unlabelled (ignored) pixels in the label files the project stores."""

DEFAULT_ANNOTATOR = "annotator"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ProjectSettings:
    """Mutable settings of a project (stored in the state store).

    Attributes:
        annotators: annotator names; items are assigned among them.
        overlap: fraction of each round given to two annotators (inter-annotator agreement).
        ignore_value: mask value that marks unlabelled pixels in imported mask files.
        url_prefix: prefix of image URLs in Label Studio task files.
    """

    annotators: tuple[str, ...] = (DEFAULT_ANNOTATOR,)
    overlap: float = 0.0
    ignore_value: int = 255
    url_prefix: str = "/data/local-files/?d="

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "annotators": list(self.annotators),
            "overlap": self.overlap,
            "ignore_value": self.ignore_value,
            "url_prefix": self.url_prefix,
        }


def check_annotators(names: Sequence[str], overlap: float) -> tuple[str, ...]:
    """Validate annotator names and the overlap fraction.

    Raises:
        ConfigError: a name is empty, repeated or has characters unsafe in file names, or the
            overlap is outside [0, 1].
    """
    cleaned = tuple(n.strip() for n in names if n.strip())
    if not cleaned:
        raise ConfigError("--annotators is empty; give names such as --annotators alice,bob")
    for name in cleaned:
        if not _NAME_PATTERN.match(name):
            raise ConfigError(
                f"annotator name {name!r} may use only letters, digits, '_', '.' and '-' (it "
                "names folders); choose another name"
            )
    if len(set(cleaned)) != len(cleaned):
        raise ConfigError(f"annotator names repeat ({', '.join(cleaned)}); list each once")
    if not 0.0 <= overlap <= 1.0:
        raise ConfigError(f"--overlap {overlap}: expected a fraction between 0 and 1, e.g. 0.2")
    return cleaned


def default_ignore_value(class_values: Sequence[int]) -> int:
    """The largest value <= 255 that is neither a class value nor a class index."""
    taken = set(class_values) | set(range(len(class_values)))
    for value in range(255, -1, -1):
        if value not in taken:
            return value
    raise ConfigError("no free mask value for unlabelled pixels; pass --ignore-value")


def case_names(ids: Sequence[str]) -> dict[str, str]:
    """File-name-safe, unique case names for item ids (``ds/a:0003`` → ``ds__a_0003``)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for item in sorted(ids):
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", item.replace("/", "__")).strip(".") or "case"
        name, k = base, 2
        while name.lower() in used:  # case-insensitive: some file systems are
            name, k = f"{base}_{k}", k + 1
        used.add(name.lower())
        names[item] = name
    return names


# ------------------------------------------------------------------------------ recipe paths
def _recipe_for_project(recipe: Recipe, project_dir: Path) -> str:
    raw = recipe_to_dict(recipe)
    rebase_recipe_paths(raw, to_relative=project_dir.resolve())
    return yaml.safe_dump(raw, sort_keys=False)


def load_project_recipe(project_dir: Path) -> Recipe:
    """The project's recipe with every path made absolute (relative to the project folder)."""
    path = project_dir / RECIPE_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise StateError(
            f"{path} cannot be read ({err}); restore it or create the project again"
        ) from None
    if not isinstance(raw, dict):
        raise StateError(f"{path} is not a recipe mapping; restore it or create the project again")
    project_recipe_paths(raw, project_dir)
    return recipe_from_dict(raw, str(path))


# --------------------------------------------------------------------------------- project
@dataclass
class Project:
    """An open labelling project (use :func:`open_project`).

    Attributes:
        root: the project folder.
        store: its state store.
        recipe: the resolved recipe with absolute paths.
        notes: what recovery did when the project was opened (for the CLI to print).
    """

    root: Path
    store: StateStore
    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    _samples: dict[str, Sample] | None = None

    # ------------------------------------------------------------------------ paths & settings
    @property
    def rounds_dir(self) -> Path:
        """``DIR/rounds``."""
        return self.root / "rounds"

    def round_dir(self, round_index: int) -> Path:
        """``DIR/rounds/NNN``."""
        return self.rounds_dir / f"{round_index:03d}"

    @property
    def labels_dir(self) -> Path:
        """``DIR/labels``."""
        return self.root / "labels"

    @property
    def pseudo_dir(self) -> Path:
        """``DIR/pseudo``."""
        return self.root / "pseudo"

    @property
    def train_dir(self) -> Path:
        """``DIR/train``."""
        return self.root / "train"

    def path(self, relative: str) -> Path:
        """A path stored in the state store (relative to the project) as a real path."""
        return self.root / relative

    @property
    def settings(self) -> ProjectSettings:
        """The current annotators, overlap, ignore value and URL prefix."""
        data = self.store.get_json("settings", {})
        return ProjectSettings(
            annotators=tuple(data.get("annotators", (DEFAULT_ANNOTATOR,))),
            overlap=float(data.get("overlap", 0.0)),
            ignore_value=int(data.get("ignore_value", 255)),
            url_prefix=str(data.get("url_prefix", ProjectSettings.url_prefix)),
        )

    @property
    def class_names(self) -> list[str]:
        """Class names in index order (background first)."""
        return list(self.recipe.data.classes)

    # ------------------------------------------------------------------------------ items
    def item_ids(self) -> list[str]:
        """Pool ids in pool order."""
        return [r["id"] for r in self.store.query("SELECT id FROM items ORDER BY position")]

    def case_of(self) -> dict[str, str]:
        """Item id → case name."""
        return {
            r["id"]: r["case_name"] for r in self.store.query("SELECT id, case_name FROM items")
        }

    def samples(self) -> dict[str, Sample]:
        """Item id → sample, discovered from the data folders (once per open project).

        Raises:
            StateError: items of the project are no longer on disk.
        """
        if self._samples is None:
            from alframe.data.catalog import DataCatalog

            found = {s.id: s for s in DataCatalog(self.recipe).samples(self.recipe.data.train)}
            missing = [i for i in self.item_ids() if i not in found]
            if missing:
                raise StateError(
                    f"{len(missing)} images of the project are no longer in the data (e.g. "
                    f"{missing[0]}); restore them under data.root "
                    f"({self.recipe.data.root}) — the project keeps their labels by id"
                )
            self._samples = found
        return self._samples

    def label_files(self) -> dict[str, Path]:
        """Item id → the label used for training and export, for every labelled item.

        With several annotators on an item, the primary annotator's label is used (the others
        serve agreement); without it, the first annotator by name.
        """
        rows = self.store.query(
            "SELECT a.id AS id, a.path AS path FROM annotations a LEFT JOIN assignments s "
            "ON s.id = a.id AND s.annotator = a.annotator "
            "ORDER BY a.id, COALESCE(s.is_primary, 0) DESC, a.annotator"
        )
        chosen: dict[str, Path] = {}
        for row in rows:
            chosen.setdefault(row["id"], self.path(row["path"]))
        return chosen

    def round_numbers(self) -> list[int]:
        """Committed rounds, ascending."""
        return [int(r["round"]) for r in self.store.query("SELECT round FROM rounds ORDER BY 1")]

    def latest_checkpoint(self) -> Path | None:
        """Checkpoint of the latest committed `round train`, if any."""
        rows = self.store.query("SELECT checkpoint FROM trainings ORDER BY run DESC LIMIT 1")
        return self.path(rows[0]["checkpoint"]) if rows else None

    # ---------------------------------------------------------------------------- recovery
    def recover(self) -> list[str]:
        """Remove what killed commands left behind; check what the state store references.

        Returns:
            One note per kind of leftover removed (empty when there was nothing to do).

        Raises:
            StateError: a file the state store references is missing or damaged.
        """
        notes: list[str] = []
        rounds = set(self.round_numbers())
        trainings = {int(r["run"]) for r in self.store.query("SELECT run FROM trainings")}
        for folder, committed, what in (
            (self.rounds_dir, rounds, "round next"),
            (self.train_dir, trainings, "round train"),
        ):
            if not folder.is_dir():
                continue
            for child in sorted(folder.iterdir()):
                number = int(child.name) if child.name.isdigit() else None
                if child.name.startswith(".staging-") or (
                    number is not None and number not in committed
                ):
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
                    notes.append(
                        f"removed {child.relative_to(self.root)} left by an interrupted `{what}` "
                        "(it was never committed; run the command again)"
                    )
                    checkpoint("recover:removed-folder")
        referenced = {
            r["path"]
            for r in self.store.query(
                "SELECT path FROM annotations UNION SELECT path FROM pseudo_labels"
            )
        }
        removed = 0
        for base in (self.labels_dir, self.pseudo_dir):
            if not base.is_dir():
                continue
            for file in sorted(base.rglob("*")):
                if file.is_file() and file.relative_to(self.root).as_posix() not in referenced:
                    file.unlink()
                    removed += 1
                    checkpoint("recover:removed-label")
        if removed:
            notes.append(
                f"removed {removed} label files that no committed import references (left by an "
                "interrupted or superseded import; nothing committed was lost)"
            )
        # Half-written files of atomic writes: in the project root and in the pictures folders.
        for pattern in (".*.tmp", "rounds/*/pictures/.*.tmp", "train/*/pictures/.*.tmp"):
            for leftover in self.root.glob(pattern):
                leftover.unlink()
        notes.extend(self._end_abandoned_runs())
        missing = [p for p in sorted(referenced) if not self.path(p).is_file()]
        if missing:
            raise StateError(
                f"{len(missing)} label files recorded in {STATE_FILE} are missing (e.g. "
                f"{missing[0]}); restore the project's labels/ folder from a backup, or import "
                "those items again with `alframe round import DIR --from ... --replace`"
            )
        if notes:
            fsync_folder(self.root)
        return notes

    def _end_abandoned_runs(self) -> list[str]:
        """Mark MLflow runs of killed `round train` commands KILLED (with the reason as a tag).

        Only called with the project lock held, so no live process owns these runs.
        """
        runs = self.store.get_json(OPEN_RUNS_KEY, [])
        if not runs:
            return []
        from alframe.errors import AlframeError
        from alframe.tracking import end_abandoned_runs

        notes: list[str] = []
        left = []
        for uri in sorted({r["uri"] for r in runs}):
            of_store = [r for r in runs if r["uri"] == uri]
            reason = (
                "killed: the `alframe round train` that ran it ended without finishing it (e.g. "
                "kill -9); marked by a later alframe command on the project"
            )
            try:
                marked = end_abandoned_runs(uri, [r["run_id"] for r in of_store], reason)
            except AlframeError as err:
                left.extend(of_store)  # tried again by the next command
                notes.append(f"could not mark abandoned MLflow runs as KILLED ({err})")
                continue
            if marked:
                trainings = ", ".join(str(r["training"]) for r in of_store if r["run_id"] in marked)
                notes.append(
                    f"marked {len(marked)} MLflow run(s) of interrupted `round train` (training "
                    f"{trainings}) as KILLED in {uri}"
                )
        with self.store.transaction() as conn:
            StateStore.set_json(conn, OPEN_RUNS_KEY, left)
        return notes

    def close(self) -> None:
        """Close the state store."""
        self.store.close()


def _check_project_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StateError(
            f"{root} is a file, not a project folder; pass the folder that `alframe project "
            "init` created"
        )
    if not root.is_dir():
        raise StateError(
            f"{root} does not exist; create a project there with "
            f"`alframe project init {root} --recipe RECIPE`"
        )
    if not (root / PROJECT_FILE).is_file():
        if (root / STATE_FILE).exists():
            raise StateError(
                f"{root} is an incomplete project (`project init` was interrupted); run "
                f"`alframe project init {root} --recipe RECIPE` again"
            )
        raise StateError(
            f"{root} is not an alframe labelling project (no {PROJECT_FILE}); create one with "
            f"`alframe project init {root} --recipe RECIPE`"
        )
    try:
        meta = json.loads((root / PROJECT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StateError(f"{root / PROJECT_FILE} cannot be read ({err}); restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != PROJECT_FORMAT:
        raise StateError(
            f"{root / PROJECT_FILE} is not a {PROJECT_FORMAT} project file; use the alframe "
            "version that created the project"
        )


def project_is_writable(root: Path) -> bool:
    """Whether this process may change the project (folder, state store and lock file).

    ``os.access`` asks the kernel the question a write would: it is False for another user's
    folder and for a read-only mount, and True for root wherever root can write.
    """
    # A missing state store is reported by StateStore, not as a permission problem.
    paths = [root, *(p for p in (root / STATE_FILE, root / LOCK_FILE) if p.exists())]
    return all(os.access(path, os.W_OK) for path in paths)


@contextmanager
def open_project(
    directory: str | os.PathLike[str], write: bool = True, wait: bool = False
) -> Iterator[Project]:
    """Open a project: take its lock, recover from interrupted commands, yield it.

    A project this process cannot write (another user's folder, a read-only mount) opens for
    reading only: no lock file is created, nothing is recovered, the state store is opened
    read-only.

    Args:
        directory: the project folder.
        write: take the lock (every command that changes the project). Read-only users
            (status) pass False: they still recover when nobody else holds the lock.
        wait: when another command holds the lock, wait for it instead of refusing (``round
            watch``: a ``round status`` run meanwhile holds the lock for a moment, and a
            long-running loop should outlast it, not stop).

    Raises:
        StateError: not a project, the project is read-only (``write``), or another command
            holds the lock (``write``).
    """
    root = Path(directory)
    _check_project_dir(root)
    writable = project_is_writable(root)
    if write and not writable:
        raise StateError(
            f"the project is read-only: this user cannot write to {root} (its folder, "
            f"{STATE_FILE} or {LOCK_FILE}); ask its owner for write access, or copy it "
            "(cp -r) and work on the copy"
        )
    lock = ProjectLock(root / LOCK_FILE)
    locked = lock.acquire(wait=wait and writable, read_only=not writable)
    if write and not locked:
        raise StateError(
            f"another alframe command is working on {root} (it holds {root / LOCK_FILE}); wait "
            "for it to finish and run this command again"
        )
    try:
        store = StateStore(root / STATE_FILE, read_only=not writable)
    except BaseException:
        lock.release()
        raise
    try:
        project = Project(root=root, store=store, recipe=load_project_recipe(root))
        if locked and writable:
            project.notes = project.recover()
        yield project
    finally:
        store.close()
        lock.release()


def _pool_csv(rows: list[tuple[str, str, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "case", "image", "group"])
    writer.writerows(rows)
    return buffer.getvalue()


def parse_classes(text: str) -> dict[str, int]:
    """``background=0,lung=255`` → ``{"background": 0, "lung": 255}`` (background first).

    Raises:
        ConfigError: a part without ``=``, a value that is not an integer, or fewer than two.
    """
    classes: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise ConfigError(
                f"--classes: {part!r} is not NAME=VALUE; write e.g. --classes background=0,lung=255 "
                "(mask value of each class, background first)"
            )
        classes[name.strip()] = int(value)
    if len(classes) < 2:
        raise ConfigError(
            "--classes needs at least two classes, background first, e.g. background=0,lung=255"
        )
    return classes


def _image_channels(folder: Path) -> int:
    """1 for grey images, 3 when the first image file is colour (RGB / RGBA / palette)."""
    from PIL import Image

    for file in sorted(folder.iterdir()):
        if file.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}:
            try:
                with Image.open(file) as image:
                    return 3 if image.mode in {"RGB", "RGBA", "P", "CMYK"} else 1
            except OSError:
                continue
    return 1


def recipe_for_images(
    project_dir: str | os.PathLike[str],
    images: str | os.PathLike[str],
    classes: dict[str, int],
    masks: str | os.PathLike[str] | None = None,
    image_size: tuple[int, int] = (256, 256),
    in_channels: int | None = None,
) -> Recipe:
    """A recipe for a project on one folder of images, without writing one by hand.

    The pool is every image of ``images``; there is no separate source site, so the MAE is
    trained on the pool itself and XSSR runs without its novelty term. Everything the project
    makes (MAE, embeddings, runs, MLflow store) goes inside ``project_dir``.

    Args:
        project_dir: the project folder (its name becomes the recipe name).
        images: folder of image files (PNG, JPEG, TIFF).
        classes: class name → mask value, background first.
        masks: optional folder of masks with the images' file stems (every image needs one),
            e.g. existing labels that ``round import --from`` can take the picked items from.
        image_size: (height, width) images are resized to (multiples of 32).
        in_channels: 1 or 3; default from the first image.

    Raises:
        ConfigError: a missing folder or invalid settings.
    """
    image_dir = Path(images).expanduser().resolve()
    for flag, folder in (("--images", image_dir), ("--masks", masks)):
        if folder is not None and not Path(folder).expanduser().is_dir():
            raise ConfigError(f"{flag} {folder}: no such folder; pass the folder of the files")
    mask_dir = Path(masks).expanduser().resolve() if masks is not None else None
    root = Path(os.path.commonpath([image_dir, *([mask_dir] if mask_dir else [])]))
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(project_dir).resolve().name) or "project"
    raw: dict[str, Any] = {
        "name": name,
        "data": {
            "root": str(root),
            "classes": classes,
            "image_size": list(image_size),
            "in_channels": in_channels or _image_channels(image_dir),
            "datasets": {
                "pool": {
                    "path": ".",
                    "images": os.path.relpath(image_dir, root),
                    "masks": os.path.relpath(mask_dir, root) if mask_dir else None,
                    "mask_format": "binary" if len(classes) == 2 else "semantic",
                }
            },
            "train": {"dataset": "pool"},
        },
        "output_dir": str(Path(project_dir).resolve() / "runs"),
    }
    return recipe_from_dict(raw, "project init --images")


_INIT_FILES = (RECIPE_FILE, STATE_FILE, POOL_FILE, LOCK_FILE, STATE_FILE + "-journal")


def init_project(
    directory: str | os.PathLike[str],
    recipe: Recipe,
    annotators: Sequence[str] = (DEFAULT_ANNOTATOR,),
    overlap: float = 0.0,
    ignore_value: int | None = None,
    url_prefix: str | None = None,
) -> dict[str, Any]:
    """Create a labelling project for ``recipe.data.train`` (the pool).

    ``project.json`` is written last: a folder without it is an interrupted init, which a new
    ``init`` replaces.

    Args:
        directory: the project folder (new, empty, or left by an interrupted init).
        recipe: the validated recipe; its relative paths are relative to the working directory.
        annotators: annotator names.
        overlap: fraction of each round labelled by two annotators.
        ignore_value: mask value of unlabelled pixels in imported files (default: the largest
            value <= 255 that is neither a class value nor a class index).
        url_prefix: image URL prefix in Label Studio task files.

    Returns:
        A summary: ``{"pool": N, "annotators": [...], "ignore_value": v}``.

    Raises:
        StateError: the folder holds something else or already a project.
        ConfigError: bad annotators, overlap or ignore value, or too many classes.
        DataError: the pool cannot be read.
    """
    from alframe.data.catalog import DataCatalog

    root = Path(directory)
    names = check_annotators(annotators, overlap)
    class_values = list(recipe.data.classes.values())
    if len(class_values) > 254:
        raise ConfigError(
            f"data.classes has {len(class_values)} classes; labelling projects store masks as "
            "8-bit class indices (at most 254 classes)"
        )
    if ignore_value is None:
        ignore_value = default_ignore_value(class_values)
    elif ignore_value in class_values or 0 <= ignore_value < len(class_values):
        raise ConfigError(
            f"--ignore-value {ignore_value} is a class value or class index of data.classes "
            f"{dict(recipe.data.classes)}; choose a value no class uses, e.g. "
            f"{default_ignore_value(class_values)}"
        )
    if root.exists() and not root.is_dir():
        raise StateError(
            f"{root} is a file, not a folder; choose a new or empty folder for the project"
        )
    if root.exists():
        if (root / PROJECT_FILE).exists():
            raise StateError(
                f"{root} is already a labelling project; use it (`alframe round next {root}`) "
                "or choose another folder"
            )
        others = sorted(p.name for p in root.iterdir() if p.name not in _INIT_FILES)
        if others:
            raise StateError(
                f"{root} is not empty (it holds {', '.join(others[:5])}); choose a new or empty "
                "folder for the project"
            )
        for name in _INIT_FILES:  # an interrupted init: start over
            (root / name).unlink(missing_ok=True)
    catalog = DataCatalog(recipe)
    samples = catalog.samples(recipe.data.train)
    if not samples:
        raise DataError(
            f"data.train ({recipe.data.train.dataset}) has no images; point data.train at the "
            "pool of images to label"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StateError(
            f"cannot create the project folder {root} ({err.strerror}); choose a folder you can "
            "write to"
        ) from None
    if not os.access(root, os.W_OK):
        raise StateError(
            f"{root} is read-only for this user; choose a folder you can write to for the project"
        )
    cases = case_names([s.id for s in samples])
    data_root = catalog.root.resolve()
    rows = []
    for sample in samples:
        try:
            image = sample.image_path.resolve().relative_to(data_root).as_posix()
        except ValueError:
            image = sample.image_path.name
        rows.append((sample.id, cases[sample.id], image, sample.group))
    if "output_dir" not in recipe.model_fields_set:
        # Unless the recipe says otherwise, the project keeps its MAE, embeddings and runs.
        recipe = recipe.model_copy(update={"output_dir": str(root.resolve() / "runs")})
    atomic_write_bytes(root / RECIPE_FILE, _recipe_for_project(recipe, root).encode("utf-8"))
    atomic_write_bytes(root / POOL_FILE, _pool_csv(rows).encode("utf-8"))
    checkpoint("init:files")
    settings = ProjectSettings(
        annotators=names,
        overlap=overlap,
        ignore_value=int(ignore_value),
        url_prefix=url_prefix if url_prefix is not None else ProjectSettings.url_prefix,
    )
    store = StateStore(root / STATE_FILE, create=True)
    try:
        with store.transaction() as conn:
            conn.executemany(
                "INSERT INTO items(id, position, case_name, image, grp) VALUES (?, ?, ?, ?, ?)",
                [(r[0], k, r[1], r[2], r[3]) for k, r in enumerate(rows)],
            )
            StateStore.set_json(conn, "settings", settings.to_dict())
            StateStore.log_event(conn, "init", {"pool": len(rows), **settings.to_dict()})
    finally:
        store.close()
    meta = {"format": PROJECT_FORMAT, "created": now(), "recipe": RECIPE_FILE, "pool": len(rows)}
    atomic_write_bytes(root / PROJECT_FILE, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    checkpoint("init:committed")
    return {"pool": len(rows), "annotators": list(names), "ignore_value": int(ignore_value)}
