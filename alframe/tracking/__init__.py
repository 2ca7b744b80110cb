"""Experiment tracking (MLflow). The only package that imports mlflow."""

from alframe.tracking.mlflow_tracking import (
    DEFAULT_TRACKING_URI,
    Tracker,
    flatten_params,
    make_epoch_logger,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "Tracker",
    "flatten_params",
    "make_epoch_logger",
    "resolve_tracking_uri",
]
