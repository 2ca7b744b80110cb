"""Labelling rounds with human annotators: project, export, import, status, training.

``alframe project init`` creates a project (:func:`init_project`); ``round next`` selects and
exports a batch (:func:`next_round`); ``round import`` validates and commits masks
(:func:`import_labels`); ``round status`` reports progress and agreement
(:func:`project_status`); ``round pseudolabel`` records RPG pseudo-labels for unlabelled items
(:func:`pseudo_label_project`); ``round train`` trains on the labels (:func:`train_round`). State lives
in one SQLite store per project; see :mod:`alframe.annotate.store` for the crash-safety design.
A project connected to a live Label Studio server (``project connect``) has its rounds pushed as
tasks with pre-annotations and its annotations pulled by ``round sync``
(:mod:`alframe.annotate.labelstudio`; HTTP through the standard library, no extra package).
Nothing here imports torch until training starts.
"""

from alframe.annotate.agreement import dice_agreement, summarize_agreement
from alframe.annotate.assign import assign_annotators
from alframe.annotate.export import RoundExport, next_round
from alframe.annotate.formats import decode_brush_rle, to_class_indices
from alframe.annotate.importer import ImportReport, import_labels
from alframe.annotate.project import (
    STORED_IGNORE,
    Project,
    ProjectSettings,
    init_project,
    open_project,
)
from alframe.annotate.pseudo import PseudoLabelProvider, pseudo_label_paths, record_pseudo_labels
from alframe.annotate.pseudo_rpg import ProjectPseudoLabels, pseudo_label_project
from alframe.annotate.status import format_status, project_status
from alframe.annotate.training import RoundTraining, train_round

__all__ = [
    "STORED_IGNORE",
    "ImportReport",
    "Project",
    "ProjectPseudoLabels",
    "ProjectSettings",
    "PseudoLabelProvider",
    "RoundExport",
    "RoundTraining",
    "assign_annotators",
    "decode_brush_rle",
    "dice_agreement",
    "format_status",
    "import_labels",
    "init_project",
    "next_round",
    "open_project",
    "project_status",
    "pseudo_label_paths",
    "pseudo_label_project",
    "record_pseudo_labels",
    "summarize_agreement",
    "to_class_indices",
    "train_round",
]
