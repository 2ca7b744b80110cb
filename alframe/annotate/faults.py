"""Fault injection for crash-safety tests: die at the n-th checkpoint of a state change.

Every step of a state change (a file written, a transaction opened, a commit, a clean-up) calls
:func:`checkpoint`. When the environment variable ``ALFRAME_FAULT_AFTER=<n>`` is set, the process
ends with ``os._exit`` at the n-th call, exactly as a ``kill -9`` would end it there: no ``finally``
blocks, no flushing, no SQLite rollback. ``ALFRAME_FAULT_AT=<label>`` does the same at the
first checkpoint with that label (e.g. ``train:fitted``, while an MLflow run is open). Tests then
check that the next command finds the project consistent. Without the variables a checkpoint only
counts.
"""

from __future__ import annotations

import os

FAULT_ENV = "ALFRAME_FAULT_AFTER"
"""Environment variable: end the process at this checkpoint number (1-based)."""

FAULT_AT_ENV = "ALFRAME_FAULT_AT"
"""Environment variable: end the process at the first checkpoint with this label."""

FAULT_EXIT_CODE = 86
"""Exit status of a process ended by an injected fault."""

_calls: list[str] = []


def checkpoint(label: str) -> None:
    """Count one step of a state change; end the process here when the fault says so.

    Args:
        label: what has just happened (kept for :func:`reached`, helps debugging a trial).
    """
    _calls.append(label)
    value = os.environ.get(FAULT_ENV, "").strip()
    if value.isdigit() and len(_calls) == int(value):
        os._exit(FAULT_EXIT_CODE)
    if os.environ.get(FAULT_AT_ENV, "").strip() == label:
        os._exit(FAULT_EXIT_CODE)


def reached() -> list[str]:
    """Labels of the checkpoints passed so far in this process (oldest first)."""
    return list(_calls)


def reset() -> None:
    """Forget the checkpoints counted so far (tests count one command at a time)."""
    _calls.clear()
