"""`round import`: validate annotators' masks completely, then commit them in one transaction.

Accepted sources (``--from``):

- a folder of mask files (PNG, TIFF, NIfTI) named after the item's case (as in the round's
  manifest, e.g. ``target__target_001.png``) or laid out by id (``target/target_001.png``);
  sub-folders named after annotators say whose masks they are;
- a manifest (CSV with columns ``id`` or ``case``, ``mask`` and optionally ``annotator``, or the
  same as a JSON list) whose mask paths are relative to the manifest, without ``..``;
- a Label Studio JSON export (brush RLE and polygon results);
- a single mask file.

Nothing is written until every mask has been read and checked (its item is in a committed round
and assigned to the annotator, the size matches the image, the values are class values or class
indices or the ignore value, no item appears twice). Then the label files are written under
content-addressed names and one transaction references them. Re-importing identical masks
changes nothing; items not in the import stay pending.
"""

from __future__ import annotations

import csv
import json
import os
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe.annotate.faults import checkpoint
from alframe.annotate.formats import (
    IGNORE_LABEL_NAMES,
    encode_label_png,
    label_sha256,
    labelstudio_labels,
    mask_extension,
    read_mask_file,
    strip_mask_extension,
    to_class_indices,
)
from alframe.annotate.project import STORED_IGNORE, Project
from alframe.annotate.store import StateStore, now
from alframe.data.samples import Sample, file_stem
from alframe.errors import ConfigError, DataError, StateError

_SIDECAR_EXTENSIONS = (".json", ".csv", ".txt", ".md", ".xml", ".yaml", ".yml")
_LABEL_HASH_CHARS = 12

Loader = Callable[[tuple[int, int]], np.ndarray]


@dataclass
class _Candidate:
    """One mask found in the source, before validation."""

    where: str  # file or task, as shown in messages
    key: str  # what named the item (file name, id, task)
    annotator: str | None  # explicit annotator, if the source says
    item_id: str | None = None
    # Keys a person typed (manifest ids, Label Studio ids) must name an item exactly; keys made
    # from file paths inside the source folder may also match by their last part.
    exact_key: bool = False
    load: Loader | None = None
    labels: np.ndarray | None = None
    sha: str = ""


@dataclass
class ImportReport:
    """Outcome of an import.

    Attributes:
        new: (id, annotator) pairs labelled for the first time.
        replaced: pairs whose label changed (``replace=True``).
        unchanged: pairs imported again with identical content.
        pending: items of committed rounds still without any label after the import (for a
            dry run: as the import would leave them).
        import_id: the import's number in the state store (None when nothing changed).
        dry_run: whether nothing was committed on purpose.
        skipped: items whose files were left out because no round gave them out
            (``only_selected``).
    """

    new: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    pending: int = 0
    import_id: int | None = None
    dry_run: bool = False
    skipped: list[str] = field(default_factory=list)


class _Problems:
    """Collects validation problems; raises one DataError naming the first and the count."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def raise_if_any(self) -> None:
        if not self.messages:
            return
        extra = len(self.messages) - 1
        more = (
            f" (and {extra} more problem{'s' if extra > 1 else ''}; nothing was imported)"
            if extra
            else " (nothing was imported)"
        )
        raise DataError(self.messages[0] + more)


# ------------------------------------------------------------------------------ gathering
def _file_loader(path: Path, class_values: list[int], ignore_value: int, where: str) -> Loader:
    def load(shape: tuple[int, int]) -> np.ndarray:
        data = read_mask_file(path)
        if data.shape != shape:
            raise DataError(
                f"{where} is {data.shape[0]}×{data.shape[1]} (H×W) but its image is "
                f"{shape[0]}×{shape[1]}; save the mask at the image's size"
            )
        return to_class_indices(data, class_values, ignore_value, where)

    return load


def _folder_candidates(
    source: Path, annotator: str | None, annotators: tuple[str, ...], problems: _Problems
) -> list[tuple[Path, str, str | None]]:
    """(file, key, annotator) for every mask file under ``source``."""
    found: list[tuple[Path, str, str | None]] = []
    subfolders = (
        {p.name: p for p in source.iterdir() if p.is_dir() and p.name in annotators}
        if annotator is None
        else {}
    )

    def walk(base: Path, who: str | None, skip: set[Path]) -> None:
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(base)
            if any(part.startswith(".") for part in relative.parts):
                continue  # hidden files (.DS_Store, ._x.png) are never masks
            if path.is_dir() or any(parent in skip for parent in path.parents):
                continue
            name = relative.as_posix()
            if mask_extension(path) is None:
                if path.suffix.lower() in _SIDECAR_EXTENSIONS:
                    continue
                problems.add(
                    f"{source.name}/{name}: not a mask file; masks must be PNG, TIFF or NIfTI "
                    "(.png, .tif, .tiff, .nii, .nii.gz) — JPEG and other lossy formats change "
                    "label values; convert it or remove it from the folder"
                )
                continue
            found.append((path, strip_mask_extension(name), who))

    skip = set(subfolders.values())
    walk(source, annotator, skip)
    for name, folder in sorted(subfolders.items()):
        walk(folder, name, set())
    return found


def _check_relative(text: str, where: str, problems: _Problems) -> bool:
    path = PurePosixPath(text.replace("\\", "/"))
    if not text.strip():
        problems.add(
            f"{where}: the mask path is empty; give the mask file relative to the manifest"
        )
        return False
    if path.is_absolute() or Path(text).is_absolute() or (len(text) > 1 and text[1] == ":"):
        problems.add(
            f"{where}: mask path {text!r} is absolute; manifests hold paths relative to the "
            "manifest's folder — rewrite it as a relative path"
        )
        return False
    if ".." in path.parts:
        problems.add(
            f"{where}: mask path {text!r} contains '..'; manifests may only point inside their "
            "own folder — move the mask next to the manifest"
        )
        return False
    return True


def _manifest_rows(source: Path, problems: _Problems) -> list[dict[str, Any]] | None:
    if source.suffix.lower() == ".csv":
        try:
            with source.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                return [dict(row) for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            problems.add(
                f"{source.name}: cannot read the CSV manifest ({err}); save it as UTF-8 CSV"
            )
            return None
    return None


def _manifest_candidates(
    source: Path,
    rows: list[Any],
    annotator: str | None,
    class_values: list[int],
    ignore_value: int,
    problems: _Problems,
) -> list[_Candidate]:
    out: list[_Candidate] = []
    for number, row in enumerate(rows, start=1):
        where = f"{source.name} row {number}"
        if not isinstance(row, dict):
            problems.add(f"{where}: expected an object with id/case and mask; fix the manifest")
            continue
        key = str(row.get("id") or row.get("case") or "").strip()
        mask_text = str(row.get("mask") or row.get("path") or "")
        if not key or not mask_text:
            problems.add(
                f"{where}: needs an 'id' (or 'case') and a 'mask' column; the manifest has "
                f"{', '.join(sorted(str(k) for k in row)) or 'no columns'}"
            )
            continue
        if not _check_relative(mask_text, where, problems):
            continue
        path = source.parent / mask_text
        if not path.is_file():
            problems.add(
                f"{where}: mask file {mask_text} does not exist next to the manifest; fix the path"
            )
            continue
        # The path is relative and free of '..', but a symlink on the way can still lead out.
        folder = source.parent.resolve()
        if not path.resolve().is_relative_to(folder):
            problems.add(
                f"{where}: mask path {mask_text!r} leads outside the manifest's folder (through "
                "a symbolic link); manifests may only point inside their own folder — copy the "
                "mask next to the manifest"
            )
            continue
        who = annotator or (str(row.get("annotator") or "").strip() or None)
        label = f"{source.name} row {number} ({mask_text})"
        candidate = _Candidate(where=label, key=key, annotator=who, exact_key=True)
        candidate.load = _file_loader(path, class_values, ignore_value, label)
        out.append(candidate)
    return out


def _labelstudio_item_key(task: dict[str, Any]) -> str:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    assert isinstance(data, dict)
    if isinstance(data.get("alframe_id"), str):
        return str(data["alframe_id"])
    url = str(data.get("image", ""))
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    path = query["d"][0] if "d" in query else parsed.path
    return "file:" + PurePosixPath(urllib.parse.unquote(path)).name


def _completed_by(annotation: dict[str, Any]) -> list[str]:
    who = annotation.get("completed_by")
    names: list[str] = []
    if isinstance(who, dict):
        for key in ("username", "email", "first_name"):
            value = who.get(key)
            if isinstance(value, str) and value:
                names.append(value)
                if key == "email":
                    names.append(value.split("@", 1)[0])
    elif isinstance(who, str):
        names.append(who)
        names.append(who.split("@", 1)[0])
    return names


def _labelstudio_candidates(
    source: Path,
    tasks: list[Any],
    annotator: str | None,
    annotators: tuple[str, ...],
    class_index: Callable[[str, str], int],
    unpainted: int,
    problems: _Problems,
) -> list[_Candidate]:
    out: list[_Candidate] = []
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            problems.add(f"{source.name} task {number}: expected a JSON object; re-export as JSON")
            continue
        where_task = f"{source.name} task {task.get('id', number)}"
        annotations = task.get("annotations", task.get("completions", []))
        if not isinstance(annotations, list):
            problems.add(
                f"{where_task}: 'annotations' is not a list; re-export as Label Studio JSON"
            )
            continue
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        assert isinstance(data, dict)
        for k, annotation in enumerate(annotations, start=1):
            if not isinstance(annotation, dict):
                problems.add(f"{where_task} annotation {k}: expected a JSON object")
                continue
            if annotation.get("was_cancelled"):
                continue
            results = annotation.get("result", [])
            where = f"{where_task} annotation {annotation.get('id', k)}"
            if not isinstance(results, list):
                problems.add(f"{where}: 'result' is not a list; re-export as Label Studio JSON")
                continue
            who = annotator or (
                str(data["alframe_annotator"])
                if isinstance(data.get("alframe_annotator"), str)
                else None
            )
            if who is None:
                matches = [n for n in _completed_by(annotation) if n in annotators]
                who = matches[0] if matches else None
            candidate = _Candidate(
                where=where, key=_labelstudio_item_key(task), annotator=who, exact_key=True
            )

            def load(
                shape: tuple[int, int], results: list[Any] = results, where: str = where
            ) -> np.ndarray:
                return labelstudio_labels(
                    results, shape[0], shape[1], class_index, unpainted, where
                )

            candidate.load = load
            out.append(candidate)
    return out


# ------------------------------------------------------------------------------ the import
def _image_shape(sample: Sample, in_channels: int) -> tuple[int, int]:
    if sample.slice_index is None and sample.image_path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        try:
            with Image.open(sample.image_path) as image:
                width, height = image.size
            return (height, width)
        except OSError:
            pass  # read_image below reports the problem properly
    from alframe.data.io import read_image

    shape = read_image(sample, in_channels).shape
    return (int(shape[0]), int(shape[1]))


def import_labels(
    project: Project,
    source: str | os.PathLike[str],
    annotator: str | None = None,
    replace: bool = False,
    unpainted: str = "background",
    dry_run: bool = False,
    only_selected: bool = False,
) -> ImportReport:
    """Validate every mask in ``source`` and commit them in one transaction.

    Args:
        project: the open project.
        source: folder, manifest (CSV / JSON), Label Studio JSON export or one mask file.
        annotator: whose masks these are (default: sub-folders, manifest column, Label Studio
            ``completed_by``, or the item's only annotator).
        replace: overwrite existing labels that differ (otherwise that is an error).
        unpainted: Label Studio pixels no region covers: ``"background"`` or ``"ignore"``.
        dry_run: validate only.
        only_selected: leave out (and report) files of items no round has given out, e.g. a
            folder of existing masks for the whole pool, instead of refusing them.

    Returns:
        The :class:`ImportReport`.

    Raises:
        DataError: any problem with the source (nothing is imported then).
        StateError: there is no committed round yet.
        ConfigError: unknown annotator or ``unpainted`` value.
    """
    store = project.store
    settings = project.settings
    if unpainted not in ("background", "ignore"):
        raise ConfigError(f"--unpainted {unpainted!r}: expected 'background' or 'ignore'")
    if annotator is not None and annotator not in settings.annotators:
        raise ConfigError(
            f"--annotator {annotator!r} is not an annotator of this project "
            f"({', '.join(settings.annotators)}); use one of those names"
        )
    if not project.round_numbers():
        raise StateError(
            "no round has been exported yet, so there is nothing to import; run "
            "`alframe round next DIR --budget B` first"
        )
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"{path} does not exist; pass the folder or file with the annotators' masks"
        )
    class_values = list(project.recipe.data.classes.values())
    class_lookup = {name.lower(): index for index, name in enumerate(project.class_names)}

    def class_index(name: str, where: str) -> int:
        if name.lower() in IGNORE_LABEL_NAMES:
            return STORED_IGNORE
        if name.lower() in class_lookup:
            return class_lookup[name.lower()]
        raise DataError(
            f"{where}: label {name!r} is not a class of the project "
            f"({', '.join(project.class_names[1:])}, or 'ignore'); rename the label in Label "
            "Studio's labelling config or add the class to data.classes"
        )

    problems = _Problems()
    candidates = _gather(
        path,
        annotator,
        settings.annotators,
        class_values,
        settings.ignore_value,
        class_index,
        STORED_IGNORE if unpainted == "ignore" else 0,
        problems,
    )
    problems.raise_if_any()
    if not candidates:
        raise DataError(
            f"{path} holds no masks; put <case>.png files there (case names are in the round's "
            "export/manifest.csv) or pass a Label Studio JSON export"
        )
    skipped = _resolve(project, candidates, problems, only_selected)
    problems.raise_if_any()

    samples = project.samples()
    in_channels = project.recipe.data.in_channels
    for candidate in candidates:
        assert candidate.item_id is not None and candidate.load is not None
        try:
            shape = _image_shape(samples[candidate.item_id], in_channels)
            candidate.labels = candidate.load(shape)
            candidate.sha = label_sha256(candidate.labels)
        except DataError as err:
            problems.add(str(err))
    problems.raise_if_any()

    existing = {
        (r["id"], r["annotator"]): r
        for r in store.query("SELECT id, annotator, label_sha256, path FROM annotations")
    }
    report = ImportReport(dry_run=dry_run, skipped=skipped)
    changes: list[_Candidate] = []
    for candidate in candidates:
        pair = (str(candidate.item_id), str(candidate.annotator))
        old = existing.get(pair)
        if old is None:
            report.new.append(pair)
            changes.append(candidate)
        elif old["label_sha256"] == candidate.sha:
            report.unchanged.append(pair)
        elif replace:
            report.replaced.append(pair)
            changes.append(candidate)
        else:
            problems.add(
                f"{candidate.where}: {pair[0]} is already labelled by {pair[1]} with a different "
                "mask; pass --replace to overwrite the stored label, or leave the file out"
            )
    problems.raise_if_any()
    if not changes or dry_run:
        # A dry run reports the state the import would leave: its new labels are not pending.
        report.pending = _pending_count(store, newly_labelled={item for item, _ in report.new})
        return report
    _commit(project, path, changes, report, existing)
    report.pending = _pending_count(store)
    return report


def _gather(
    path: Path,
    annotator: str | None,
    annotators: tuple[str, ...],
    class_values: list[int],
    ignore_value: int,
    class_index: Callable[[str, str], int],
    unpainted: int,
    problems: _Problems,
) -> list[_Candidate]:
    if path.is_dir():
        out = []
        for file, key, who in _folder_candidates(path, annotator, annotators, problems):
            where = f"mask {path.name}/{file.relative_to(path).as_posix()}"
            candidate = _Candidate(where=where, key=key, annotator=who)
            candidate.load = _file_loader(file, class_values, ignore_value, where)
            out.append(candidate)
        return out
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _manifest_rows(path, problems)
        return (
            []
            if rows is None
            else _manifest_candidates(path, rows, annotator, class_values, ignore_value, problems)
        )
    if suffix == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.add(
                f"{path.name} is not valid JSON ({' '.join(str(err).split())}); export the "
                "annotations again (Label Studio: Export → JSON)"
            )
            return []
        if isinstance(document, dict) and isinstance(document.get("items"), list):
            document = document["items"]
        if not isinstance(document, list):
            problems.add(
                f"{path.name}: expected a JSON list (a Label Studio export, or manifest rows "
                "with id and mask); got a JSON " + type(document).__name__
            )
            return []
        is_labelstudio = any(
            isinstance(t, dict) and ("annotations" in t or "completions" in t or "data" in t)
            for t in document
        )
        if is_labelstudio:
            return _labelstudio_candidates(
                path, document, annotator, annotators, class_index, unpainted, problems
            )
        return _manifest_candidates(path, document, annotator, class_values, ignore_value, problems)
    if mask_extension(path) is not None:
        where = f"mask {path.name}"
        candidate = _Candidate(
            where=where, key=strip_mask_extension(path.name), annotator=annotator
        )
        candidate.load = _file_loader(path, class_values, ignore_value, where)
        return [candidate]
    raise DataError(
        f"{path.name}: cannot import this kind of file; pass a folder of masks, a manifest "
        "(.csv / .json), a Label Studio JSON export or one mask file (.png, .tif, .nii.gz)"
    )


def _resolve(
    project: Project, candidates: list[_Candidate], problems: _Problems, only_selected: bool
) -> list[str]:
    """Find each candidate's item and annotator; check rounds, assignments and duplicates.

    Returns:
        The items left out because no round gave them out (``only_selected``); their
        candidates are removed from ``candidates``.
    """
    store = project.store
    cases = project.case_of()
    by_case = {case.lower(): item for item, case in cases.items()}
    # A mask named like its image file (e.g. a folder of existing masks) names the item when
    # that file name is unique in the pool.
    image_stems: dict[str, list[str]] = {}
    for row in store.query("SELECT id, image FROM items"):
        image_stems.setdefault(file_stem(Path(row["image"])).lower(), []).append(row["id"])
    for stem, items in image_stems.items():
        if len(items) == 1:
            by_case.setdefault(stem, items[0])
    skipped: list[str] = []
    left_out: set[int] = set()
    selected = {r["id"]: int(r["round"]) for r in store.query("SELECT id, round FROM selections")}
    assigned: dict[str, list[str]] = {}
    for row in store.query(
        "SELECT id, annotator FROM assignments ORDER BY is_primary DESC, annotator"
    ):
        assigned.setdefault(row["id"], []).append(row["annotator"])
    annotators = project.settings.annotators
    seen: dict[tuple[str, str], str] = {}
    for candidate in candidates:
        key = candidate.key
        item: str | None = None
        if key.startswith("file:"):
            stem = file_stem(Path(key[5:]))
            # Label Studio prefixes uploaded files with '<8 hex>-'.
            options = [stem, stem.split("-", 1)[1] if "-" in stem else stem]
            item = next((by_case[o.lower()] for o in options if o.lower() in by_case), None)
            shown = key[5:]
        else:
            shown = key
            if key in cases:
                item = key
            elif candidate.exact_key and ("/" in key or "\\" in key):
                problems.add(
                    f"{candidate.where}: {key!r} is not an item id and contains a path "
                    "separator; give the item's exact id or its case name (see the round's "
                    "export/manifest.csv)"
                )
                continue
            elif candidate.exact_key:
                item = by_case.get(key.lower())
            else:
                item = by_case.get(PurePosixPath(key).name.lower()) or by_case.get(key.lower())
        if item is None:
            problems.add(
                f"{candidate.where}: {shown!r} names no item of the project; name masks after "
                "the item's case (see the round's export/manifest.csv) or its id"
            )
            continue
        if item not in selected and only_selected:
            skipped.append(item)
            left_out.add(id(candidate))
            continue
        if item not in selected:
            problems.add(
                f"{candidate.where}: {item} is not in any exported round, so it cannot be "
                "imported; only items given out by `alframe round next` are labelled here"
            )
            continue
        names = assigned.get(item, [])
        who = candidate.annotator
        if who is not None and who not in annotators:
            problems.add(
                f"{candidate.where}: annotator {who!r} is not part of the project "
                f"({', '.join(annotators)}); rename the folder / column or pass --annotator"
            )
            continue
        if who is None:
            if len(names) == 1:
                who = names[0]
            else:
                problems.add(
                    f"{candidate.where}: {item} was given to {', '.join(names)}; say whose mask "
                    "this is (a sub-folder named after the annotator, an 'annotator' column, "
                    "the per-annotator Label Studio project, or --annotator NAME)"
                )
                continue
        if who not in names:
            problems.add(
                f"{candidate.where}: {item} was assigned to {', '.join(names)}, not {who}; "
                "import it under the right annotator (--annotator) or leave it out"
            )
            continue
        pair = (item, who)
        if pair in seen:
            problems.add(
                f"{candidate.where}: {item} ({who}) appears twice in the import (also "
                f"{seen[pair]}); keep one mask per item and annotator"
            )
            continue
        seen[pair] = candidate.where
        candidate.item_id, candidate.annotator = item, who
    candidates[:] = [c for c in candidates if id(c) not in left_out]
    return sorted(set(skipped))


def _pending_count(store: StateStore, newly_labelled: set[str] | None = None) -> int:
    """Selected items without any label, not counting ``newly_labelled`` (a dry run's items)."""
    rows = store.query(
        "SELECT s.id AS id FROM selections s WHERE NOT EXISTS "
        "(SELECT 1 FROM annotations a WHERE a.id = s.id)"
    )
    return sum(1 for row in rows if row["id"] not in (newly_labelled or set()))


def label_relpath(annotator: str, case: str, sha: str) -> str:
    """Where a label is stored, relative to the project (content-addressed)."""
    return f"labels/{annotator}/{case}.{sha[:_LABEL_HASH_CHARS]}.png"


def _commit(
    project: Project,
    source: Path,
    changes: Iterable[_Candidate],
    report: ImportReport,
    existing: dict[tuple[str, str], Any],
) -> None:
    store = project.store
    cases = project.case_of()
    selected = {r["id"]: int(r["round"]) for r in store.query("SELECT id, round FROM selections")}
    rows = []
    for candidate in changes:
        item, who = str(candidate.item_id), str(candidate.annotator)
        assert candidate.labels is not None
        relative = label_relpath(who, cases[item], candidate.sha)
        target = project.path(relative)
        if not target.exists():
            atomic_write_bytes(target, encode_label_png(candidate.labels))
        checkpoint("import:label-written")
        has_ignore = int(bool(np.any(candidate.labels == STORED_IGNORE)))
        rows.append(
            (item, who, selected[item], relative, candidate.sha, has_ignore, candidate.where)
        )
    superseded = [
        existing[(r[0], r[1])]["path"]
        for r in rows
        if (r[0], r[1]) in existing and existing[(r[0], r[1])]["path"] != r[3]
    ]
    with store.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO imports(created, source, n_new, n_replaced, n_unchanged) "
            "VALUES (?, ?, ?, ?, ?)",
            (now(), source.name, len(report.new), len(report.replaced), len(report.unchanged)),
        )
        import_id = int(cursor.lastrowid or 0)
        for row in rows:
            conn.execute(
                "INSERT OR REPLACE INTO annotations(id, annotator, round, path, label_sha256, "
                "has_ignore, source, import_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, import_id),
            )
            checkpoint("import:row")
        StateStore.log_event(
            conn,
            "import",
            {
                "import_id": import_id,
                "source": source.name,
                "new": len(report.new),
                "replaced": len(report.replaced),
            },
        )
    report.import_id = import_id
    for relative in superseded:
        project.path(relative).unlink(missing_ok=True)
        checkpoint("import:superseded-removed")
