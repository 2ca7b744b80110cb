"""Experiment tracking (MLflow). The only package that imports mlflow."""

from alframe.tracking.mlflow_tracking import (
    DEFAULT_TRACKING_URI,
    END_REASON_TAG,
    Tracker,
    end_abandoned_runs,
    flatten_params,
    make_epoch_logger,
    prepare_sqlite_store,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "END_REASON_TAG",
    "Tracker",
    "end_abandoned_runs",
    "flatten_params",
    "make_epoch_logger",
    "prepare_sqlite_store",
    "resolve_tracking_uri",
]
