"""MLflow tracking: the only module in alframe that imports mlflow.

Default store is ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses the old
``./mlruns`` file store), with artifacts in ``mlartifacts/`` beside the database so that nothing
lands in a stray ``./mlruns``. ``$MLFLOW_TRACKING_URI`` (or ``tracking.uri`` in the recipe)
points at anything else, e.g. a team server started with ``mlflow server``.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alframe.errors import AlframeError, AlframeNote

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: explicit > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlflow.db``.

    A relative sqlite path is made absolute so that a run started elsewhere finds the same store.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        rel = chosen[len("sqlite:///") :]
        chosen = "sqlite:///" + str(Path(rel).resolve())
    return chosen


def _artifact_root(uri: str) -> str | None:
    """Where artifacts go for a local store (beside the DB); None lets a server decide."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        return None
    return None


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into ``a.b.c -> str(value)`` for MLflow params (≤ 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


_CREATING_SUFFIX = ".creating"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def _sqlite_store_state(db: Path) -> str:
    """``"complete"``, ``"half-made"`` (no data, schema not at MLflow's head revision) or
    ``"other"`` (holds runs or experiments, or cannot be read: left to MLflow to judge)."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            version = None
            if "alembic_version" in tables:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
            if version == _get_latest_schema_revision() and "experiments" in tables:
                return "complete"
            runs = "runs" in tables and conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            experiments = (
                "experiments" in tables
                and conn.execute(
                    "SELECT COUNT(*) FROM experiments WHERE experiment_id != 0"
                ).fetchone()[0]
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return "other"
    return "other" if runs or experiments else "half-made"


def prepare_sqlite_store(uri: str) -> str | None:
    """Make sure a local ``sqlite:///`` store is whole before MLflow opens it.

    MLflow builds a new store by creating tables and then running dozens of migrations, which are
    not one transaction: a process killed in between leaves a half-migrated file that every later
    run fails on ("duplicate column name", "table ... already exists"). So a new store is built
    in a temporary file beside the target and linked into place only when complete (a hard link
    never replaces a store another process made meanwhile). A half-made store that holds no runs
    or experiments (left by an earlier kill) is moved aside and built again.

    Args:
        uri: the resolved tracking URI; anything but ``sqlite:///`` is left alone.

    Returns:
        A note for the user when a half-made store was replaced, else None.
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    if str(db) in ("", ":memory:"):
        return None
    note = None
    if db.is_file():
        state = _sqlite_store_state(db)
        if state != "half-made":
            return None
        aside = db.with_name(f"{db.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(db, aside)
        note = (
            f"the MLflow store {db} was half-created by an interrupted first run and held no "
            f"runs; it was moved to {aside.name} and created again"
        )
    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f".{db.name}.*{_CREATING_SUFFIX}"):
        pid = stale.name[len(db.name) + 2 : -len(_CREATING_SUFFIX)]
        if pid.isdigit() and not _process_alive(int(pid)):
            stale.unlink(missing_ok=True)
    temp = db.parent / f".{db.name}.{os.getpid()}{_CREATING_SUFFIX}"
    temp.unlink(missing_ok=True)
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{temp}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    try:
        os.link(temp, db)  # fails if another process put a store there meanwhile: keep theirs
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system
        if not db.exists():
            os.replace(temp, db)
    temp.unlink(missing_ok=True)
    return note


class Tracker:
    """A thin, explicit wrapper over :class:`mlflow.tracking.MlflowClient`.

    No global MLflow state is touched (no ``mlflow.start_run``), so several trackers — and the
    active-learning loop's parent/child runs — can coexist in one process.

    Args:
        experiment: experiment name (one per recipe by convention).
        uri: tracking URI; see :func:`resolve_tracking_uri`.
    """

    def __init__(self, experiment: str, uri: str | None = None) -> None:
        import mlflow  # noqa: F401  (import here: keeps `alframe --help` fast)
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(uri)
        try:
            note = prepare_sqlite_store(self.uri)
            if note is not None:
                warnings.warn(note, AlframeNote, stacklevel=2)
            self.client = MlflowClient(tracking_uri=self.uri)
            existing = self.client.get_experiment_by_name(experiment)
            if existing is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(self.uri)
                )
            else:
                self.experiment_id = existing.experiment_id
        except Exception as err:  # mlflow raises many types for an unreachable store
            raise AlframeError(
                f"MLflow tracking store {self.uri!r} cannot be used ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); check MLFLOW_TRACKING_URI / tracking.uri, "
                "or pass --no-track"
            ) from None
        self.experiment = experiment

    def start_run(
        self,
        name: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a run (a child run when ``parent_run_id`` is given) and return its id."""
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return str(run.info.run_id)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextmanager
    def run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[str]:
        """Context manager: a run marked FAILED if the body raises, KILLED on Ctrl-C."""
        run_id = self.start_run(name, parent_run_id=parent_run_id, tags=tags)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.end_run(run_id, "KILLED")
            raise
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifact(
        self, run_id: str, path: str | os.PathLike[str], folder: str | None = None
    ) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def log_text(self, run_id: str, text: str, filename: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / filename
            file.write_text(text, encoding="utf-8")
            self.log_artifact(run_id, file)

    def ui_command(self) -> str:
        """The command a person runs to look at the results."""
        if self.uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.uri}"
        return f"open {self.uri} in a browser"


END_REASON_TAG = "alframe.end_reason"
"""Tag that says why alframe ended a run it did not finish itself."""


def end_abandoned_runs(uri: str | None, run_ids: Sequence[str], reason: str) -> list[str]:
    """Mark runs that are still RUNNING as KILLED, with ``reason`` in the tag
    :data:`END_REASON_TAG`. The caller knows that no live process owns them.

    Args:
        uri: tracking URI of the runs.
        run_ids: the runs; finished, failed or deleted ones are left as they are.
        reason: why they are ended.

    Returns:
        The ids of the runs marked.

    Raises:
        AlframeError: the tracking store cannot be used.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    resolved = resolve_tracking_uri(uri)
    marked: list[str] = []
    try:
        client = MlflowClient(tracking_uri=resolved)
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                continue  # deleted meanwhile: nothing to end
            if run.info.status == "RUNNING":
                client.set_tag(run_id, END_REASON_TAG, reason)
                client.set_terminated(run_id, status="KILLED")
                marked.append(run_id)
    except Exception as err:  # mlflow raises many types for an unreachable store
        raise AlframeError(
            f"MLflow tracking store {resolved!r} cannot be used ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''})"
        ) from None
    return marked


def make_epoch_logger(tracker: Tracker, run_id: str) -> Any:
    """A Lightning callback that copies epoch-level metrics into an MLflow run.

    Kept here (not in models/) because only tracking/ may import mlflow; the callback itself only
    reads ``trainer.callback_metrics``.
    """
    import lightning as L

    class _EpochMetricsToMlflow(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            metrics = {
                k.replace("/", "_"): float(v)
                for k, v in trainer.callback_metrics.items()
                if getattr(v, "numel", lambda: 1)() == 1
            }
            tracker.log_metrics(run_id, metrics, step=int(trainer.current_epoch))

    return _EpochMetricsToMlflow()
