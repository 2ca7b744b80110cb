"""The state store of a labelling project: one SQLite database, changed only in transactions.

Why SQLite: a transaction either commits whole or leaves no trace, even when the process is
killed in the middle (SQLite rolls a hot journal back on the next open), and the stdlib ships it.
The database is the single source of truth. Files that belong to a state change (exported
images, label masks, checkpoints) are written *before* the transaction that references them, to
staging folders or content-addressed names, so a crash leaves only unreferenced files behind;
:meth:`alframe.annotate.project.Project.recover` removes them on the next command.

Journal mode is the classic rollback journal with ``synchronous=FULL``: a single database file
(plus a journal only during a write), which keeps the project easy to copy and to checksum.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alframe.annotate.faults import checkpoint
from alframe.errors import StateError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL UNIQUE,
    case_name TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    grp TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    strategy TEXT NOT NULL,
    budget INTEGER NOT NULL,
    created TEXT NOT NULL,
    embedding_hash TEXT,
    folder TEXT NOT NULL,
    export_sha256 TEXT NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS selections (
    round INTEGER NOT NULL REFERENCES rounds(round),
    id TEXT NOT NULL UNIQUE REFERENCES items(id),
    rank INTEGER NOT NULL,
    score REAL,
    terms TEXT NOT NULL,
    PRIMARY KEY (round, id)
);
CREATE TABLE IF NOT EXISTS assignments (
    round INTEGER NOT NULL REFERENCES rounds(round),
    id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL,
    is_primary INTEGER NOT NULL,
    PRIMARY KEY (id, annotator)
);
CREATE TABLE IF NOT EXISTS annotations (
    id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL,
    round INTEGER NOT NULL REFERENCES rounds(round),
    path TEXT NOT NULL,
    label_sha256 TEXT NOT NULL,
    has_ignore INTEGER NOT NULL,
    source TEXT NOT NULL,
    import_id INTEGER NOT NULL,
    PRIMARY KEY (id, annotator)
);
CREATE TABLE IF NOT EXISTS imports (
    import_id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    source TEXT NOT NULL,
    n_new INTEGER NOT NULL,
    n_replaced INTEGER NOT NULL,
    n_unchanged INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pseudo_labels (
    id TEXT PRIMARY KEY REFERENCES items(id),
    path TEXT NOT NULL,
    label_sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trainings (
    run INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    folder TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    n_labelled INTEGER NOT NULL,
    n_pseudo INTEGER NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


def now() -> str:
    """The current UTC time as ISO-8601 text (seconds)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class StateStore:
    """A project's SQLite database.

    Args:
        path: the database file.
        create: create the file and its tables (``project init``); otherwise the file must exist.
        read_only: open it for reading only (a project this user cannot write).

    Raises:
        StateError: the file is missing, not a database of this format, or damaged.
    """

    def __init__(
        self, path: str | os.PathLike[str], create: bool = False, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StateError(
                f"{self.path} is missing: the project's state store is gone; restore it from a "
                "backup or create the project again with `alframe project init`"
            )
        try:
            # isolation_level=None: no implicit transactions; every write goes through
            # transaction() so the commit point is explicit.
            if read_only:
                # mode=ro: SQLite never tries to create a journal or change the file.
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self.connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
            else:
                self.connection = sqlite3.connect(
                    str(self.path), isolation_level=None, timeout=30.0
                )
            self.connection.row_factory = sqlite3.Row
            if not read_only:
                self.connection.execute("PRAGMA journal_mode=DELETE")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.execute("PRAGMA foreign_keys=ON")
            if create:
                with self.transaction():
                    # executescript() would commit on its own; one statement at a time keeps
                    # the schema inside this transaction.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.connection.execute(statement)
                    self.connection.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
            version = self.get_meta("schema_version")
        except sqlite3.DatabaseError as err:
            raise StateError(
                f"{self.path} is not a readable alframe state store ({err}); restore it from a "
                "backup or create the project again with `alframe project init`"
            ) from None
        if version != str(SCHEMA_VERSION):
            raise StateError(
                f"{self.path} has state format {version!r}, this alframe reads {SCHEMA_VERSION}; "
                "use the alframe version that created the project"
            )

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; any exception (or a kill) rolls everything back."""
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        checkpoint("transaction:begin")
        try:
            yield conn
            checkpoint("transaction:before-commit")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        checkpoint("transaction:committed")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only query and return all rows."""
        return list(self.connection.execute(sql, params).fetchall())

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """One value of the ``meta`` table."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row is not None else default

    def get_json(self, key: str, default: Any = None) -> Any:
        """A JSON value of the ``meta`` table."""
        text = self.get_meta(key)
        return json.loads(text) if text is not None else default

    @staticmethod
    def set_json(conn: sqlite3.Connection, key: str, value: Any) -> None:
        """Store a JSON value in ``meta`` (inside an open transaction)."""
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (key, json.dumps(value, sort_keys=True)),
        )

    @staticmethod
    def log_event(conn: sqlite3.Connection, kind: str, detail: dict[str, Any]) -> None:
        """Append one line to the project's history (inside the transaction it describes)."""
        conn.execute(
            "INSERT INTO events(created, kind, detail) VALUES (?, ?, ?)",
            (now(), kind, json.dumps(detail, sort_keys=True)),
        )


class ProjectLock:
    """An exclusive advisory lock on ``<project>/.lock`` (released by the OS when a process dies).

    Args:
        path: the lock file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: int | None = None

    def acquire(self, wait: bool = False, read_only: bool = False) -> bool:
        """Take the lock; returns False when another process holds it and ``wait`` is False.

        Args:
            wait: block until the lock is free.
            read_only: the project cannot be written: use the lock file only if it exists
                (advisory locks work on read-only handles); False when there is none.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks (Windows): single user
            return True
        try:
            if read_only:
                handle = os.open(self.path, os.O_RDONLY)
            else:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            if read_only:
                return False
            raise
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(handle, flags)
        except OSError:
            os.close(handle)
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        """Give the lock back."""
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
