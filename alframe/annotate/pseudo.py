"""Extension point for pseudo-labels in a labelling project.

A pseudo-labeller (e.g. :mod:`alframe.pseudolabel`, which this module deliberately does not
import) produces label maps for pool items nobody has labelled yet and hands them to
:func:`record_pseudo_labels`. They are stored like human labels (content-addressed files under
``DIR/pseudo/`` referenced from the state store in one transaction) and are used by
``alframe round train DIR --pseudo-labels`` for items without a human label; ``round status``
counts them. Human labels always win: an item that gets a human label stops being used as
pseudo-labelled.

A provider only needs to satisfy :class:`PseudoLabelProvider`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe.annotate.faults import checkpoint
from alframe.annotate.formats import encode_label_png, label_sha256
from alframe.annotate.project import STORED_IGNORE, Project
from alframe.annotate.store import StateStore, now
from alframe.errors import DataError


class PseudoLabelProvider(Protocol):
    """Anything that turns a project's labelled items into labels for unlabelled ones."""

    def __call__(self, project: Project, labelled: Mapping[str, Path]) -> Mapping[str, np.ndarray]:
        """Pseudo-labels for unlabelled pool items.

        Args:
            project: the open project (recipe, samples, stored labels).
            labelled: item id → stored label file of every human-labelled item.

        Returns:
            Item id → (H, W) uint8 class indices at the image's size, 255 = unlabelled (e.g.
            low-confidence pixels).
        """
        ...


def record_pseudo_labels(project: Project, labels: Mapping[str, np.ndarray], source: str) -> int:
    """Store pseudo-labels (replacing earlier ones of the same items) in one transaction.

    Args:
        project: the open project.
        labels: item id → (H, W) uint8 class indices, 255 where unlabelled.
        source: what produced them (e.g. ``"rpg"``), kept in the state store.

    Returns:
        The number of pseudo-labels stored (items with a human label are skipped).

    Raises:
        DataError: an id is not in the pool, or a label has the wrong dtype / values.
    """
    ids = set(project.item_ids())
    unknown = [i for i in labels if i not in ids]
    if unknown:
        raise DataError(f"pseudo-labels for ids that are not in the pool (e.g. {unknown[:3]})")
    human = {r["id"] for r in project.store.query("SELECT id FROM annotations")}
    k = len(project.class_names)
    cases = project.case_of()
    rows = []
    for item, array in sorted(labels.items()):
        if item in human:
            continue
        values = np.asarray(array)
        if values.ndim != 2 or (values.size and (values.min() < 0 or values.max() > 255)):
            raise DataError(f"pseudo-label of {item} must be a 2-D uint8 class-index array")
        values = values.astype(np.uint8)
        bad = np.setdiff1d(np.unique(values), [*range(k), STORED_IGNORE])
        if bad.size:
            raise DataError(
                f"pseudo-label of {item} has values {bad[:5].tolist()} (not 0..{k - 1} or 255)"
            )
        sha = label_sha256(values)
        relative = f"pseudo/{cases[item]}.{sha[:12]}.png"
        if not project.path(relative).exists():
            atomic_write_bytes(project.path(relative), encode_label_png(values))
        checkpoint("pseudo:label-written")
        rows.append((item, relative, sha, source, now()))
    with project.store.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO pseudo_labels(id, path, label_sha256, source, created) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        StateStore.log_event(conn, "pseudo_labels", {"n": len(rows), "source": source})
    project.recover()  # drops the files of replaced pseudo-labels
    return len(rows)


def pseudo_label_paths(project: Project) -> dict[str, Path]:
    """Item id → pseudo-label file, for items that have no human label."""
    rows = project.store.query(
        "SELECT p.id, p.path FROM pseudo_labels p WHERE NOT EXISTS "
        "(SELECT 1 FROM annotations a WHERE a.id = p.id)"
    )
    return {r["id"]: project.path(r["path"]) for r in rows}
