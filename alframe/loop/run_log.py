"""MLflow records of an experiment, through :class:`alframe.tracking.Tracker` (no mlflow here).

Conventions (``DESIGN.md``): one MLflow experiment per recipe; a parent run per
(strategy, schedule, seed) — the full-data reference is the strategy ``full``; a child run per
round with ``n_labelled``, Dice / IoU per evaluation set, the selection CSV, the manifest, the
per-image scores and the resolved recipe; a ``summary`` run with the learning curves and tables.

Which MLflow run holds which round is kept beside the round (``tracking.json``, keyed by the
tracking URI), so a resumed experiment reuses its parent runs, logs only rounds not logged yet,
and a new tracking store simply receives every round again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alframe.loop.active import ArmSpec, RoundTracker
from alframe.loop.state import atomic_write_json

TRACKING_FILE = "tracking.json"


def _read_runs(path: Path) -> dict[str, str]:
    """``{tracking uri: run id}`` from a tracking.json (empty when missing or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_run(path: Path, uri: str, run_id: str) -> None:
    runs = _read_runs(path)
    runs[uri] = run_id
    atomic_write_json(path, runs)


def round_metrics(manifest: Mapping[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of a round: ``n_labelled``, ``<set>_<metric>`` per evaluation set,
    ``fit_*``, from round 1 on ``pool_agreement`` / ``pool_agreement_items`` (the label-free
    stopping signal), ``effort_*`` (estimated correction effort of the queried items) and, with
    pseudo-labels, ``pseudo_*`` (their accuracy on the pool)."""
    metrics: dict[str, float] = {
        "n_labelled": float(manifest["n_labelled"]),
        "n_selected": float(len(manifest.get("selected", []))),
    }
    for set_name, stats in (manifest.get("metrics") or {}).items():
        for key, value in stats.items():
            if isinstance(value, int | float):
                metrics[f"{set_name}_{key}"] = float(value)
    fit = manifest.get("fit") or {}
    for key in ("train_seconds", "steps", "epochs", "best_val_dice", "train_pl_accuracy"):
        if isinstance(fit.get(key), int | float):
            metrics[f"fit_{key}"] = float(fit[key])
    # Absent in round 0 (no previous model): a missing point, not a 0, in MLflow's charts.
    if isinstance(manifest.get("pool_agreement"), int | float):
        metrics["pool_agreement"] = float(manifest["pool_agreement"])
        metrics["pool_agreement_items"] = float(manifest.get("pool_agreement_items") or 0)
    # Estimated correction effort of the queried items (alframe.loop.effort).
    effort = manifest.get("effort") or {}
    for key in ("changed_fraction_sum", "changed_fraction_mean", "pre_dice_mean", "cumulative"):
        if isinstance(effort.get(key), int | float):
            metrics[f"effort_{key}"] = float(effort[key])
    # Pseudo-labels of the unlabelled pool against its hidden ground truth (simulations).
    pseudo = manifest.get("pseudolabels") or {}
    for key in ("dice_mean", "pixel_accuracy_mean", "coverage_mean", "n_items"):
        if isinstance(pseudo.get(key), int | float):
            metrics[f"pseudo_{key}"] = float(pseudo[key])
    return metrics


class MlflowRoundTracker(RoundTracker):
    """Logs arms (parent runs) and rounds (child runs) of an experiment.

    Args:
        tracker: an :class:`alframe.tracking.Tracker` (experiment already chosen).
        recipe_params: the resolved recipe of the rounds as nested plain data (child-run params).
        recipe_file: the resolved recipe YAML to attach to every child run.
        reference_params: the same for the full-data reference's rounds.
        reference_file: its YAML.
    """

    def __init__(
        self,
        tracker: Any,
        recipe_params: Mapping[str, Any],
        recipe_file: Path,
        reference_params: Mapping[str, Any] | None = None,
        reference_file: Path | None = None,
    ) -> None:
        self.tracker = tracker
        self.uri: str = tracker.uri
        self.recipe_params = dict(recipe_params)
        self.recipe_file = Path(recipe_file)
        self.reference_params = dict(reference_params or recipe_params)
        self.reference_file = Path(reference_file or recipe_file)
        self._parents: dict[str, str] = {}

    def _parent(self, arm: ArmSpec) -> str:
        return self._parents[arm.folder_name]

    def start_arm(self, arm: ArmSpec, run_dir: Path) -> None:
        """Create the arm's parent run, or reuse the one recorded for this tracking store."""
        record = run_dir / TRACKING_FILE
        existing = _read_runs(record).get(self.uri)
        if existing is not None:
            self._parents[arm.folder_name] = existing
            self.tracker.set_tags(existing, {"alframe.resumed": "true"})
            return
        described = arm.describe()
        run_id = self.tracker.start_run(
            f"{arm.label}/{arm.schedule.name}/seed{arm.seed}",
            tags={
                "alframe.kind": "reference" if arm.is_reference else "arm",
                "alframe.strategy": str(described["strategy"]),
                "alframe.label": arm.label,
                "alframe.schedule": arm.schedule.name,
                "alframe.seed": str(arm.seed),
            },
        )
        self.tracker.log_params(run_id, described)
        _record_run(record, self.uri, run_id)
        self._parents[arm.folder_name] = run_id

    def log_round(self, arm: ArmSpec, manifest: Mapping[str, Any], round_dir: Path) -> None:
        """A child run for a committed round (skipped when this store already has it)."""
        record = round_dir / TRACKING_FILE
        if self.uri in _read_runs(record):
            return
        parent = self._parent(arm)
        index = int(manifest["round"])
        run_id = self.tracker.start_run(
            f"{arm.label}/seed{arm.seed}/round{index:03d}",
            parent_run_id=parent,
            tags={
                "alframe.kind": "round",
                "alframe.label": arm.label,
                "alframe.schedule": arm.schedule.name,
                "alframe.seed": str(arm.seed),
                "alframe.round": str(index),
                "alframe.strategy_used": str(manifest.get("strategy_used")),
            },
        )
        status = "FAILED"
        try:
            params = self.reference_params if arm.is_reference else self.recipe_params
            self.tracker.log_params(
                run_id,
                {
                    **params,
                    "round": index,
                    "strategy_used": manifest.get("strategy_used"),
                    "cold_start": manifest.get("cold_start"),
                    "select_seed": manifest.get("select_seed"),
                    "train_seed": manifest.get("train_seed"),
                    "embedding_hash": manifest.get("embedding_hash"),
                },
            )
            metrics = round_metrics(manifest)
            self.tracker.log_metrics(run_id, metrics)
            self.tracker.log_metrics(parent, metrics, step=index)
            files = [
                round_dir / "selection.csv",
                round_dir / "manifest.json",
                round_dir / "pseudolabels.csv",
            ]
            for file in files:
                if file.is_file():
                    self.tracker.log_artifact(run_id, file)
            recipe_file = self.reference_file if arm.is_reference else self.recipe_file
            if recipe_file.is_file():
                self.tracker.log_artifact(run_id, recipe_file)
            for table in sorted(round_dir.glob("eval_*.csv")):
                self.tracker.log_artifact(run_id, table, "evaluation")
            status = "FINISHED"
        finally:
            self.tracker.end_run(run_id, status)
        _record_run(record, self.uri, run_id)

    def end_arm(self, arm: ArmSpec, status: str, manifests: Sequence[Mapping[str, Any]]) -> None:
        """Mark the parent run (AULC is logged by the experiment summary)."""
        parent = self._parents.get(arm.folder_name)
        if parent is not None:
            self.tracker.end_run(parent, status)
