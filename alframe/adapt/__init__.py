"""Source-free unsupervised domain adaptation producers that write checkpoint zoos.

See :mod:`alframe.adapt.producers`; the checkpoints are ranked with :mod:`alframe.ranking`.
"""

from __future__ import annotations

from alframe.adapt.producers import (
    ADAPTERS,
    AdaptResult,
    adabn,
    adapt_checkpoint,
    mean_teacher,
    save_task_checkpoint,
    self_training,
)

__all__ = [
    "ADAPTERS",
    "AdaptResult",
    "adabn",
    "adapt_checkpoint",
    "mean_teacher",
    "save_task_checkpoint",
    "self_training",
]
