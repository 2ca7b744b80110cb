"""Errors a user can cause. Every message says what went wrong *and* what to do about it.

The CLI turns any :class:`AlframeError` into one line on stderr and exit code 2 (no traceback
unless ``--debug``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AlframeError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(AlframeError):
    """A recipe or a ``--set`` override is invalid (names the key, the value and what is expected)."""


class DataError(AlframeError):
    """Input data is missing, unreadable or inconsistent (names the file and the fix)."""


class ModelError(AlframeError):
    """A model cannot be built or a checkpoint / weights file cannot be loaded."""


class StateError(AlframeError):
    """A run directory, cache or manifest is inconsistent or stale."""


class AlframeNote(UserWarning):
    """A warning that is news, not a problem (e.g. a budget clipped to the pool).

    Library users get it as an ordinary :class:`UserWarning`; the command line prints it as one
    plain ``note:`` line instead of Python's warning format with a file name and source line.
    """
