"""Kill the CLI at seeded moments of `round import` / `round next`; nothing committed is lost.

Each trial copies a project that already holds committed labels, runs the real command line in a
subprocess with ``ALFRAME_FAULT_AFTER=n`` (the process ends with ``os._exit`` at the n-th
checkpoint of the state-changing code: after a label file is written, inside the transaction,
right before and after the commit, after the export folder is renamed, ...) or kills it with
SIGKILL after a seeded delay, and then checks in-process that the project is consistent
(all-or-nothing, no orphans, every old label intact) and carries on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_annotate_support import assignments, copy_project, make_project, write_mask_folder

from alframe.annotate import faults, import_labels, next_round, open_project
from alframe.annotate.formats import label_sha256, read_label_png

N_FAULT_TRIALS = 18
N_KILL_TRIALS = 2


@dataclass
class Base:
    root: Path
    project: Path
    new_masks: Path
    n_new: int
    old_labels: dict[tuple[str, str], str]
    import_checkpoints: int
    next_checkpoints: int


def _labels(project: Path) -> dict[tuple[str, str], str]:
    with open_project(project, write=False) as opened:
        rows = opened.store.query("SELECT id, annotator, label_sha256 FROM annotations")
    return {(r["id"], r["annotator"]): r["label_sha256"] for r in rows}


def _count_checkpoints(base: Path, name: str, action: str, masks: Path) -> int:
    trial = copy_project(base, base.parent / name)
    faults.reset()
    with open_project(trial) as opened:
        if action == "import":
            import_labels(opened, masks)
        else:
            next_round(opened, 2)
    return len(faults.reached())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("faults")
    project = make_project(root, budget=6)
    given = assignments(project)
    alice = {i: ["alice"] for i, v in given.items() if "alice" in v}
    bob = {i: ["bob"] for i, v in given.items() if "bob" in v}
    write_mask_folder(project, root / "old", alice)
    new_masks = write_mask_folder(project, root / "new", bob, ignore_value=254)
    with open_project(project) as opened:
        import_labels(opened, root / "old")
    return Base(
        root=root,
        project=project,
        new_masks=new_masks,
        n_new=len(bob),
        old_labels=_labels(project),
        import_checkpoints=_count_checkpoints(project, "count_import", "import", new_masks),
        next_checkpoints=_count_checkpoints(project, "count_next", "next", new_masks),
    )


def _check_consistent(project: Path, base: Base) -> dict[tuple[str, str], str]:
    """Open (which recovers) and verify the invariants; returns the labels now committed."""
    with open_project(project) as opened:
        rows = opened.store.query("SELECT id, annotator, path, label_sha256 FROM annotations")
        referenced = {r["path"] for r in rows}
        for row in rows:  # every committed label is on disk with its recorded content
            assert label_sha256(read_label_png(opened.path(row["path"]))) == row["label_sha256"]
        on_disk = {
            p.relative_to(project).as_posix()
            for p in (project / "labels").rglob("*")
            if p.is_file()
        }
        assert on_disk == referenced  # no orphans after recovery
        committed_rounds = set(opened.round_numbers())
        folders = {int(p.name) for p in opened.rounds_dir.iterdir()}
        assert folders == committed_rounds  # no staging or uncommitted round folders
        for number in committed_rounds:
            assert (opened.round_dir(number) / "round.json").is_file()
    labels = {(r["id"], r["annotator"]): r["label_sha256"] for r in rows}
    for pair, sha in base.old_labels.items():  # nothing committed before the kill is lost
        assert labels[pair] == sha
    return labels


def _trial_plan() -> list[tuple[str, str, int, float]]:
    rng = np.random.default_rng(2024)
    plan = []
    for k in range(N_FAULT_TRIALS):
        action = "import" if k % 3 else "next"
        plan.append((f"fault_{k:02d}", action, int(rng.integers(1, 10_000)), 0.0))
    for k in range(N_KILL_TRIALS):
        plan.append((f"kill_{k:02d}", "import", 0, float(rng.uniform(0.3, 1.5))))
    return plan


def _command(project: Path, action: str, masks: Path) -> list[str]:
    if action == "import":
        return [
            sys.executable,
            "-m",
            "alframe.cli.main",
            "round",
            "import",
            str(project),
            "--from",
            str(masks),
        ]
    return [
        sys.executable,
        "-m",
        "alframe.cli.main",
        "round",
        "next",
        str(project),
        "--budget",
        "2",
    ]


def test_killed_commands_leave_the_project_consistent(base: Base) -> None:
    assert base.import_checkpoints >= 8 and base.next_checkpoints >= 8
    plan = _trial_plan()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[tuple[str, str, int, float, subprocess.Popen[bytes], float]] = []
    finished: list[tuple[str, str, int, int]] = []
    queue = list(plan)
    while queue or running:
        while queue and len(running) < 2:  # two at a time: the test machine has two cores
            name, action, draw, delay = queue.pop(0)
            trial = copy_project(base.project, base.root / name)
            trial_env = dict(env)
            fault = 0
            if not delay:
                total = base.import_checkpoints if action == "import" else base.next_checkpoints
                fault = 1 + draw % total
                trial_env[faults.FAULT_ENV] = str(fault)
            process = subprocess.Popen(
                _command(trial, action, base.new_masks),
                env=trial_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            running.append((name, action, fault, delay, process, time.monotonic()))
        time.sleep(0.02)
        for entry in list(running):
            name, action, fault, delay, process, started = entry
            if delay and process.poll() is None and time.monotonic() - started >= delay:
                process.send_signal(signal.SIGKILL)
            code = process.poll()
            if code is not None:
                running.remove(entry)
                stderr = process.stderr.read().decode() if process.stderr else ""
                assert code in (0, faults.FAULT_EXIT_CODE, -signal.SIGKILL), (name, code, stderr)
                if fault:
                    assert code == faults.FAULT_EXIT_CODE, (name, fault, code, stderr)
                finished.append((name, action, fault, code))
    assert len(finished) == N_FAULT_TRIALS + N_KILL_TRIALS

    for name, action, fault, _ in finished:
        project = base.root / name
        labels = _check_consistent(project, base)
        new = set(labels) - set(base.old_labels)
        with open_project(project) as opened:
            rounds = opened.round_numbers()
            if action == "import":
                assert len(new) in (0, base.n_new), (name, fault, new)  # all or nothing
                report = import_labels(opened, base.new_masks)  # the project carries on
                assert len(report.new) + len(report.unchanged) == base.n_new
                assert report.pending == 0
            else:
                assert rounds in ([1], [1, 2]), (name, fault)
                if rounds == [1]:
                    next_round(opened, 2)
                assert opened.round_numbers() == [1, 2]
        _check_consistent(project, base)


# ------------------------------------------------------- issue 17: MLflow store and open runs
# Ends the process as kill -9 would right after the n-th schema statement (CREATE / ALTER / DROP)
# that MLflow runs while it builds a new store: SQLite commits each of them on its own, so the
# file is left half-migrated, the state a kill during the first tracked `round train` leaves.
_DIE_IN_MIGRATION = """
import os, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

limit, seen = int(sys.argv[1]), [0]

@event.listens_for(Engine, "after_cursor_execute")
def count(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
        seen[0] += 1
        if seen[0] == limit:
            os._exit(86)

if sys.argv[2] == "raw":
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=sys.argv[3]).search_experiments()
else:
    from alframe.cli.main import main
    sys.exit(main(sys.argv[3:]))
"""
# Two moments: the first failed later with "table _alembic_tmp_runs already exists", the second
# with "duplicate column name: routing_strategy" (MLflow 3.x, before the store was made atomic).
# The kill inside `round train` uses the second, the store made by plain MLflow the first.
_MIGRATION_KILLS = (30, 200)


def _tracked(uri: str) -> list[str]:
    return ["--set", "tracking.enabled=true", "--set", f"tracking.uri={uri}"]


def _die_in_migration(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", _DIE_IN_MIGRATION, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_kill_during_first_mlflow_store_creation_leaves_a_usable_store(
    base: Base, tmp_path: Path
) -> None:
    from alframe.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project = copy_project(base.project, base.root / "mlflow_first_kill")
    kill_at = str(_MIGRATION_KILLS[1])
    killed = _die_in_migration(kill_at, "cli", "round", "train", str(project), *_tracked(uri))
    assert killed.returncode == faults.FAULT_EXIT_CODE, killed.stderr
    tracker = Tracker("after-kill", uri)  # the next tracked command finds a whole store
    run_id = tracker.start_run("r")
    tracker.end_run(run_id)
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert not list(tmp_path.glob("*.creating")) and not list(tmp_path.glob(".*.creating"))


def test_half_made_mlflow_store_without_runs_is_created_again(tmp_path: Path) -> None:
    from alframe.errors import AlframeNote
    from alframe.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = _die_in_migration(str(_MIGRATION_KILLS[0]), "raw", uri)  # by an earlier alframe
    assert killed.returncode == faults.FAULT_EXIT_CODE, killed.stderr
    with pytest.warns(AlframeNote, match="half-created by an interrupted first run"):
        tracker = Tracker("repaired", uri)
    run_id = tracker.start_run("r")
    tracker.end_run(run_id)
    assert len(list(tmp_path.glob("mlflow.db.incomplete-*"))) == 1  # kept, not deleted


def test_failed_tracked_training_leaves_no_staging_folder(
    base: Base, capsys: pytest.CaptureFixture[str]
) -> None:
    from alframe.cli.main import main

    project = copy_project(base.project, base.root / "mlflow_unusable")
    blocker = base.root / "not_a_folder"
    blocker.write_text("x")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"  # its folder is a file: the store cannot be made
    for _ in range(2):
        assert main(["round", "train", str(project), *_tracked(uri)]) == 2
        assert "MLflow tracking store" in capsys.readouterr().err
        assert not list((project / "train").glob(".staging-*"))


def test_mlflow_run_of_a_killed_training_is_marked_killed(
    base: Base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    from alframe.cli.main import main
    from alframe.tracking import END_REASON_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project = copy_project(base.project, base.root / "mlflow_open_run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", faults.FAULT_AT_ENV: "train:fitted"}
    killed = subprocess.run(
        [sys.executable, "-m", "alframe.cli.main", "round", "train", str(project), *_tracked(uri)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == faults.FAULT_EXIT_CODE, killed.stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "RUNNING"  # nobody ended it
    assert main(["round", "status", str(project)]) == 0  # any next command
    out = capsys.readouterr().out
    assert "recovered: marked 1 MLflow run(s) of interrupted `round train`" in out
    after = client.get_run(run.info.run_id)
    assert after.info.status == "KILLED"
    assert "ended without finishing it" in after.data.tags[END_REASON_TAG]
    assert not list((project / "train").glob(".staging-*"))
    assert main(["round", "status", str(project)]) == 0
    assert "MLflow" not in capsys.readouterr().out  # done once
