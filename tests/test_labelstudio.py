"""Labelling rounds against a real Label Studio server (started once per session, see conftest).

Simulated annotators sign up through Label Studio's sign-up form and submit, skip and edit
annotations through the same API calls as the browser's front end (session cookie + CSRF), never
through alframe. Nothing of Label Studio is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score
from test_annotate_support import (
    brush_result,
    copy_project,
    make_project,
    state_digest,
    truth_mask,
)

from alframe.annotate import faults, open_project
from alframe.annotate.formats import brush_mask, read_label_png
from alframe.annotate.labelstudio_server import BrowserSession, LocalLabelStudio, free_port
from alframe.cli.main import main

pytestmark = pytest.mark.labelstudio

PASSWORD = "annotator-pw-2718"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"


@dataclass
class Setup:
    """A project connected to its own Label Studio project, with its tasks pushed."""

    root: Path
    project: Path
    server: LocalLabelStudio
    ls_project: int
    tasks: list[dict[str, Any]]  # ls_tasks rows
    sessions: dict[str, BrowserSession] = field(default_factory=dict)

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        """The admin's API call with the legacy token (as a script would)."""
        body = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.server.url + path, data=body, method=method)
        request.add_header("Authorization", f"Token {self.server.token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
        return json.loads(text) if text else None

    def session(self, name: str) -> BrowserSession:
        """The annotator ``name`` (signed up once per server, then logged in)."""
        if name not in self.sessions:
            email = f"{name}@lab.org"
            try:
                self.sessions[name] = BrowserSession(self.server.url).signup(email, PASSWORD)
            except RuntimeError:
                self.sessions[name] = BrowserSession(self.server.url).login(email, PASSWORD)
        return self.sessions[name]

    def submit(
        self,
        row: dict[str, Any],
        results: list[dict[str, Any]],
        lead_time: float = 10.0,
        cancelled: bool = False,
        who: str | None = None,
    ) -> dict[str, Any]:
        """Submit (or skip) the task of ``row`` as its annotator, like the browser does."""
        task = self.api("GET", f"/api/tasks/{row['task_id']}")
        predictions = task.get("predictions") or []
        payload = {
            "result": results,
            "lead_time": lead_time,
            "was_cancelled": cancelled,
            "draft_id": 0,
            "parent_prediction": predictions[0]["id"] if predictions else None,
            "parent_annotation": None,
            "started_at": "2026-01-01T10:00:00.000Z",
            "project": str(self.ls_project),
        }
        return dict(
            self.session(who or row["annotator"]).api(
                "POST",
                f"/api/tasks/{row['task_id']}/annotations/?project={self.ls_project}",
                payload,
            )
        )

    def edit(self, row: dict[str, Any], annotation_id: int, results: list[dict[str, Any]]) -> None:
        """Update a submitted annotation, like the browser's Update button."""
        self.session(row["annotator"]).api(
            "PATCH",
            f"/api/annotations/{annotation_id}/?taskID={row['task_id']}&project={self.ls_project}",
            {"result": results, "lead_time": 30.0, "project": str(self.ls_project)},
        )


def _rows(project: Path) -> list[dict[str, Any]]:
    with open_project(project, write=False) as opened:
        return [dict(r) for r in opened.store.query("SELECT * FROM ls_tasks ORDER BY task_id")]


def _run(*args: str) -> int:
    return main([str(a) for a in args])


def _connect(
    root: Path,
    server: LocalLabelStudio,
    monkeypatch: pytest.MonkeyPatch,
    budget: int = 4,
    push: bool = True,
) -> Setup:
    project = make_project(root, annotators=("alice", "bob"), overlap=0.5, budget=budget)
    monkeypatch.setenv(TOKEN_ENV, server.token)
    assert _run("project", "connect", project, "--label-studio", server.url) == 0
    with open_project(project, write=False) as opened:
        link = opened.store.get_json("labelstudio")
    if push:
        assert _run("round", "push", project) == 0
    return Setup(root, project, server, int(link["project_id"]), _rows(project))


def _truth(setup: Setup, item: str) -> np.ndarray:
    return (truth_mask(setup.project, item) > 0).astype(np.uint8)


def _stored(project: Path) -> dict[tuple[str, str], np.ndarray]:
    with open_project(project, write=False) as opened:
        return {
            (r["id"], r["annotator"]): read_label_png(opened.path(r["path"]))
            for r in opened.store.query("SELECT id, annotator, path FROM annotations")
        }


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("alframe: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# -------------------------------------------------------------------------------- round trip
def test_connect_push_sync_edit_round_trip(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = _connect(tmp_path, label_studio, monkeypatch)
    out = capsys.readouterr().out
    assert "created Label Studio project" in out and "tasks created" in out

    # The link is in the state store, the token nowhere in the project.
    for path in setup.project.rglob("*"):
        if path.is_file():
            assert label_studio.token.encode() not in path.read_bytes(), path
    info = setup.api("GET", f"/api/projects/{setup.ls_project}")
    assert "<BrushLabels" in info["label_config"] and 'value="foreground"' in info["label_config"]
    assert 'background="#' in info["label_config"]

    # One task per (item, annotator): 4 items, overlap 0.5 → 6 tasks; images are uploaded.
    assert len(setup.tasks) == 6
    with open_project(setup.project, write=False) as opened:
        pairs = {(r["id"], r["annotator"]) for r in opened.store.query("SELECT * FROM assignments")}
        ranks = {r["id"]: r for r in opened.store.query("SELECT id, rank, score FROM selections")}
    assert {(r["id"], r["annotator"]) for r in setup.tasks} == pairs
    export = setup.project / "rounds" / "001" / "export" / "images"
    for row in setup.tasks:
        task = setup.api("GET", f"/api/tasks/{row['task_id']}")
        data = task["data"]
        assert (data["alframe_id"], data["alframe_annotator"]) == (row["id"], row["annotator"])
        assert data["alframe_rank"] == ranks[row["id"]]["rank"]
        assert data["alframe_score"] == pytest.approx(ranks[row["id"]]["score"])
        assert data["image"].startswith("/data/upload/")
        request = urllib.request.Request(label_studio.url + data["image"])
        request.add_header("Authorization", f"Token {label_studio.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            uploaded = response.read()
        assert uploaded == (export / f"{data['alframe_case']}.png").read_bytes()
        assert task["predictions"] == []  # no model yet: no pre-annotation

    # A second push finds every task: nothing is duplicated.
    assert _run("round", "push", setup.project) == 0
    assert "0 tasks created" in capsys.readouterr().out
    assert len(setup.api("GET", f"/api/tasks?project={setup.ls_project}")["tasks"]) == 6

    # round next on the connected project pushes the new batch by itself.
    assert _run("round", "next", setup.project, "--budget", "2") == 0
    assert "Label Studio: " in capsys.readouterr().out
    rows = _rows(setup.project)
    assert {r["round"] for r in rows} == {1, 2} and len(rows) > 6

    # Annotators submit the truth; bob skips one of his tasks.
    skipped = next(r for r in rows if r["annotator"] == "bob")
    submitted: dict[tuple[str, str], dict[str, Any]] = {}
    for k, row in enumerate(rows):
        if row is skipped:
            setup.submit(row, [], cancelled=True)
            continue
        result = brush_result(_truth(setup, row["id"]) > 0, "foreground")
        submitted[(row["id"], row["annotator"])] = setup.submit(row, [result], lead_time=5.0 + k)
    assert _run("round", "sync", setup.project) == 0
    out = capsys.readouterr().out
    assert f"synced {len(submitted)} new, 0 replaced" in out
    assert f"skipped in Label Studio (not imported): task {skipped['task_id']}" in out
    stored = _stored(setup.project)
    assert set(stored) == set(submitted)  # the skipped task is not imported
    for (item, who), labels in stored.items():
        np.testing.assert_array_equal(labels, _truth(setup, item), err_msg=f"{item} {who}")

    # Idempotent: a second sync changes nothing at all.
    before = state_digest(setup.project)
    assert _run("round", "sync", setup.project) == 0
    assert "synced 0 new, 0 replaced" in capsys.readouterr().out
    assert state_digest(setup.project) == before

    # An edit in Label Studio replaces the label; the history keeps both versions.
    row = next(r for r in rows if r["annotator"] == "alice")
    pair = (row["id"], row["annotator"])
    changed = _truth(setup, row["id"]).astype(bool)
    changed[:6, :] = ~changed[:6, :]
    setup.edit(row, submitted[pair]["id"], [brush_result(changed, "foreground")])
    assert _run("round", "sync", setup.project) == 0
    assert "synced 0 new, 1 replaced" in capsys.readouterr().out
    np.testing.assert_array_equal(_stored(setup.project)[pair], changed.astype(np.uint8))
    with open_project(setup.project, write=False) as opened:
        versions = opened.store.query(
            "SELECT * FROM ls_annotations WHERE id = ? AND annotator = ? ORDER BY updated_at",
            pair,
        )
        assert [v["current"] for v in versions] == [0, 1]
        assert [v["lead_time"] for v in versions] == [submitted[pair]["lead_time"], 30.0]
        history = [read_label_png(opened.path(v["history_path"])) for v in versions]
    np.testing.assert_array_equal(history[0], _truth(setup, row["id"]))
    np.testing.assert_array_equal(history[1], changed.astype(np.uint8))

    # round status shows the effort per round and annotator.
    assert _run("round", "status", setup.project, "--json") == 0
    effort = json.loads(capsys.readouterr().out)["effort"]
    assert effort["n"] == len(submitted)
    first = effort["rounds"][0]
    assert first["round"] == 1 and set(first["annotators"]) == {"alice", "bob"}
    assert _run("round", "status", setup.project) == 0
    assert "annotation effort" in capsys.readouterr().out


# ------------------------------------------------------------------------ crash at any point
def _cli_subprocess(action: str, project: Path, fault: int | None, token: str) -> int | str:
    """``alframe round ACTION DIR`` in a subprocess, killed at checkpoint ``fault`` if given;
    the exit code, or the error output when it failed otherwise."""
    env = dict(os.environ, LABEL_STUDIO_API_KEY=token)
    env.pop(faults.FAULT_ENV, None)
    if fault is not None:
        env[faults.FAULT_ENV] = str(fault)
    extra = ["--no-track"] if action == "sync" else []
    done = subprocess.run(
        [sys.executable, "-m", "alframe.cli.main", "round", action, str(project), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode not in (0, faults.FAULT_EXIT_CODE):
        return f"exit {done.returncode}: {done.stderr[-2000:]}"
    return done.returncode


def _synced_state(project: Path) -> tuple[dict[tuple[str, str], str], set[tuple[Any, ...]]]:
    """Labels and recorded annotation versions after a completed sync; its history files are
    exactly the referenced ones (a killed sync's leftovers are gone)."""
    with open_project(project) as opened:  # writable: recovery runs, as on the next command
        labels = {
            (r["id"], r["annotator"]): r["label_sha256"]
            for r in opened.store.query("SELECT id, annotator, label_sha256 FROM annotations")
        }
        versions = {
            (r["annotation_id"], r["updated_at"], r["label_sha256"], r["current"])
            for r in opened.store.query("SELECT * FROM ls_annotations")
        }
        referenced = {r["history_path"] for r in opened.store.query("SELECT * FROM ls_annotations")}
    on_disk = {
        p.relative_to(project).as_posix()
        for p in (project / "labelstudio" / "history").rglob("*")
        if p.is_file()
    }
    assert on_disk == referenced
    return labels, versions


def test_sync_killed_at_any_point_loses_and_doubles_nothing(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = _connect(tmp_path, label_studio, monkeypatch)
    for row in setup.tasks:
        setup.submit(row, [brush_result(_truth(setup, row["id"]) > 0, "foreground")])
    reference = copy_project(setup.project, tmp_path / "reference")
    faults.reset()
    with open_project(reference) as opened:
        from alframe.annotate.labelstudio import open_link, sync_annotations

        link, client = open_link(opened)
        sync_annotations(opened, link, client, track=False)
    n_checkpoints = len(faults.reached())
    expected = _synced_state(reference)
    assert len(expected[0]) == 6 and len(expected[1]) == 6
    rng = np.random.default_rng(16)
    trials = sorted({1, n_checkpoints, *rng.integers(2, n_checkpoints, size=4).tolist()})
    for fault in trials:
        trial = copy_project(setup.project, tmp_path / f"trial-{fault}")
        assert _cli_subprocess("sync", trial, fault, label_studio.token) == faults.FAULT_EXIT_CODE
        assert _cli_subprocess("sync", trial, None, label_studio.token) == 0
        assert _synced_state(trial) == expected, f"killed at checkpoint {fault}"
        assert _cli_subprocess("sync", trial, None, label_studio.token) == 0  # and again: no change
        assert _synced_state(trial) == expected


# -------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = _connect(tmp_path, label_studio, monkeypatch)
    capsys.readouterr()
    project = setup.project

    def refused(*args: str, needles: tuple[str, ...]) -> None:
        before = state_digest(project)
        assert _run(*args) == 2
        _one_line_error(capsys, *needles)
        assert state_digest(project) == before

    # Wrong token, and no token: neither sync nor round next touches the project.
    monkeypatch.setenv(TOKEN_ENV, "0" * 40)
    refused("round", "sync", str(project), needles=("refused the token in $LABEL_STUDIO_API_KEY",))
    refused("round", "next", str(project), "--budget", "1", needles=("refused the token",))
    monkeypatch.delenv(TOKEN_ENV)
    refused("round", "sync", str(project), needles=("$LABEL_STUDIO_API_KEY is not set",))
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)

    # Server down: a copy whose link points at a port nobody listens on.
    down = copy_project(project, tmp_path / "down")
    with open_project(down) as opened, opened.store.transaction() as conn:
        link = opened.store.get_json("labelstudio")
        link["url"] = f"http://127.0.0.1:{free_port()}"
        conn.execute("UPDATE meta SET value = ? WHERE key = 'labelstudio'", (json.dumps(link),))
    before = state_digest(down)
    for args in (("round", "sync", str(down)), ("round", "next", str(down), "--budget", "1")):
        assert _run(*args) == 2
        _one_line_error(capsys, "cannot be reached")
        assert state_digest(down) == before
    assert _run("project", "connect", str(down), "--label-studio", link["url"]) == 2
    _one_line_error(capsys, "cannot be reached")
    assert state_digest(down) == before

    # A task deleted in Label Studio: sync refuses; `round push` uploads it again.
    gone = setup.tasks[0]
    setup.api("DELETE", f"/api/tasks/{gone['task_id']}/")
    refused("round", "sync", str(project), needles=(f"task {gone['task_id']}", "round push"))
    assert _run("round", "push", str(project)) == 0
    assert "1 tasks created" in capsys.readouterr().out
    rows = {(r["id"], r["annotator"]): r for r in _rows(project)}
    assert rows[(gone["id"], gone["annotator"])]["task_id"] != gone["task_id"]

    # An annotation of the wrong size, then one with an unknown label.
    row = rows[(setup.tasks[1]["id"], setup.tasks[1]["annotator"])]
    small = brush_result(np.ones((16, 16), dtype=bool), "foreground")
    annotation = setup.submit(row, [small])
    refused("round", "sync", str(project), needles=("16×16", "32×32"))
    truth = _truth(setup, row["id"]) > 0
    setup.edit(row, annotation["id"], [brush_result(truth, "tumour")])
    refused("round", "sync", str(project), needles=("'tumour' is not a class",))

    # Fixed in Label Studio: the sync goes through, pixel-exact.
    setup.edit(row, annotation["id"], [brush_result(truth, "foreground")])
    assert _run("round", "sync", str(project)) == 0
    np.testing.assert_array_equal(
        _stored(project)[(row["id"], row["annotator"])], truth.astype(np.uint8)
    )

    # Attaching to a project whose labels do not cover the classes is refused.
    other = setup.api(
        "POST",
        "/api/projects",
        {
            "title": "wrong labels",
            "label_config": '<View><Image name="image" value="$image"/><BrushLabels '
            'name="brush" toName="image"><Label value="tumour"/></BrushLabels></View>',
        },
    )
    fresh = make_project(tmp_path / "fresh", annotators=("alice",), overlap=0.0, budget=1)
    before = state_digest(fresh)
    assert (
        _run(
            "project",
            "connect",
            str(fresh),
            "--label-studio",
            label_studio.url,
            "--project-id",
            str(other["id"]),
        )
        == 2
    )
    _one_line_error(capsys, "lack the classes foreground")
    assert state_digest(fresh) == before


# ---------------------------------------------------------------------------- pre-annotations
def _ls_decode(rle: list[int]) -> np.ndarray:
    """Label Studio's own decoder (label-studio-sdk, in the server's environment)."""
    python = Path(label_studio_python())
    code = (
        "import json,sys; from label_studio_sdk.converter.brush import decode_rle; "
        "print(json.dumps(decode_rle(json.load(sys.stdin)).tolist()))"
    )
    done = subprocess.run(
        [str(python), "-c", code], input=json.dumps(rle), capture_output=True, text=True, check=True
    )
    return np.asarray(json.loads(done.stdout))


def label_studio_python() -> str:
    from alframe.annotate.labelstudio_server import server_venv

    return str(server_venv() / "bin" / "python")


def test_pre_annotations_and_effort(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = _connect(tmp_path, label_studio, monkeypatch, budget=6)
    for row in setup.tasks:
        setup.submit(row, [brush_result(_truth(setup, row["id"]) > 0, "foreground")])
    assert _run("round", "sync", setup.project) == 0
    assert _run("round", "train", setup.project, "--no-track") == 0

    # MLflow on for this project's effort (a file in tmp_path).
    recipe_file = setup.project / "recipe.yaml"
    raw = yaml.safe_load(recipe_file.read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["tracking"] = {"enabled": True, "uri": uri, "experiment": "ls-effort"}
    recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    capsys.readouterr()
    assert _run("round", "next", setup.project, "--budget", "2", "--overlap", "0") == 0
    assert "with a pre-annotation (alframe-train-001)" in capsys.readouterr().out
    rows = [r for r in _rows(setup.project) if r["round"] == 2]
    assert len(rows) == 2
    # The project pre-labels tasks with this model's predictions.
    assert setup.api("GET", f"/api/projects/{setup.ls_project}")["model_version"] == (
        "alframe-train-001"
    )
    corrections: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k, row in enumerate(rows):
        assert row["model_version"] == "alframe-train-001" and row["pre_path"]
        with open_project(setup.project, write=False) as opened:
            pre = read_label_png(opened.path(row["pre_path"]))
        task = setup.api("GET", f"/api/tasks/{row['task_id']}")
        assert len(task["predictions"]) == 1
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "alframe-train-001"
        painted = np.zeros_like(pre)
        for result in prediction["result"]:
            rle = result["value"]["rle"]
            h, w = result["original_height"], result["original_width"]
            region = brush_mask(rle, h, w, "prediction")
            # Label Studio's own decoder reads the same image.
            np.testing.assert_array_equal(_ls_decode(rle).reshape(h, w, 4)[:, :, 3] > 127, region)
            painted[region] = 1
        np.testing.assert_array_equal(painted, pre)
        truth = _truth(setup, row["id"])
        final = truth.copy()
        final[: 3 + k, :] = 1 - final[: 3 + k, :]  # the annotator's own corrections
        corrections[row["task_id"]] = (pre, final)
        setup.submit(row, [brush_result(final > 0, "foreground")], lead_time=20.0 + k)

    assert _run("round", "sync", setup.project) == 0
    assert "logged to MLflow" in capsys.readouterr().out
    with open_project(setup.project, write=False) as opened:
        records = {
            r["task_id"]: r
            for r in opened.store.query("SELECT * FROM ls_annotations WHERE round = 2")
        }
    for task_id, (pre, final) in corrections.items():
        record = records[task_id]
        assert record["changed_fraction"] == pytest.approx(float(np.mean(pre != final)))
        reference = f1_score(final.ravel(), pre.ravel(), zero_division=1.0)
        assert record["pre_dice"] == pytest.approx(reference)
        assert record["model_version"] == "alframe-train-001"

    assert _run("round", "status", setup.project, "--json") == 0
    effort = json.loads(capsys.readouterr().out)["effort"]
    second = next(e for e in effort["rounds"] if e["round"] == 2)
    assert second["n_pre_annotated"] == 2
    assert second["lead_time_pre_mean"] == pytest.approx(20.5)
    expected_changed = np.mean([np.mean(p != f) for p, f in corrections.values()])
    assert second["changed_fraction_mean"] == pytest.approx(expected_changed)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ls-effort")
    runs = client.search_runs([experiment.experiment_id])
    by_round = {r.data.tags["alframe.labelling_round"]: r for r in runs}
    assert set(by_round) == {"2"}
    metrics = by_round["2"].data.metrics
    assert metrics["effort.changed_fraction_mean"] == pytest.approx(expected_changed)
    assert metrics["effort.lead_time_pre_mean"] == pytest.approx(20.5)
    assert "effort.alice.n" in metrics or "effort.bob.n" in metrics

    # RPG pseudo-labels as pre-annotations when asked.
    assert _run("round", "pseudolabel", setup.project) == 0
    assert _run("round", "next", setup.project, "--budget", "1", "--pre-annotate", "rpg") == 0
    row = next(r for r in _rows(setup.project) if r["round"] == 3)
    assert row["model_version"].startswith("alframe-rpg")
    with open_project(setup.project, write=False) as opened:
        pseudo = opened.store.query("SELECT path FROM pseudo_labels WHERE id = ?", (row["id"],))
        expected_pre = read_label_png(opened.path(pseudo[0]["path"]))
        pre = read_label_png(opened.path(row["pre_path"]))
    np.testing.assert_array_equal(pre, expected_pre)
    task = setup.api("GET", f"/api/tasks/{row['task_id']}")
    assert task["predictions"][0]["model_version"] == row["model_version"]


# ----------------------------------------------------------------------------- watch mode
def test_watch_retrains_pushes_and_stops_cleanly_on_ctrl_c(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal
    import time

    setup = _connect(tmp_path, label_studio, monkeypatch, budget=3)
    env = dict(os.environ, LABEL_STUDIO_API_KEY=label_studio.token)
    env.pop(faults.FAULT_ENV, None)
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alframe.cli.main",
            "round",
            "watch",
            str(setup.project),
            "--retrain-every",
            "3",
            "--budget",
            "2",
            "--interval",
            "1",
            "--no-track",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job (`pytest ... &`) ignores SIGINT, and so would the watcher,
        # which would then never see the Ctrl-C below: give it the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        primaries = {}
        for row in setup.tasks:
            primaries.setdefault(row["id"], row)
        for row in primaries.values():
            setup.submit(row, [brush_result(_truth(setup, row["id"]) > 0, "foreground")])
        deadline = time.monotonic() + 240
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and watcher.poll() is None:
            rows = [r for r in _rows(setup.project) if r["round"] == 2]
            if rows:
                break
            time.sleep(1)
        if not rows:  # say why: the watcher's own output
            watcher.kill()
            pytest.fail(f"watch did not push a second round:\n{watcher.communicate()[0]}")
        time.sleep(2)  # now it polls (sleeps) again: stop it there
        watcher.send_signal(signal.SIGINT)
        out, _ = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, out
    assert "stopped; everything synced so far is kept" in out
    assert "3 new labels: training on 3" in out
    with open_project(setup.project) as opened:  # consistent, nothing to recover
        assert opened.notes == []
        trained = opened.store.query("SELECT n_labelled FROM trainings")
        assert [int(r["n_labelled"]) for r in trained] == [3]
    assert all(r["model_version"] == "alframe-train-001" for r in rows)
    stored = _stored(setup.project)
    assert {item for item, _ in stored} == set(primaries)
    for (item, _), labels in stored.items():
        np.testing.assert_array_equal(labels, _truth(setup, item))


# ------------------------------------------------------------------------- push crash, users
def test_push_killed_at_any_point_creates_each_task_once(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = make_project(tmp_path / "base", annotators=("alice", "bob"), overlap=0.5, budget=3)
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    with open_project(base, write=False) as opened:
        pairs = {(r["id"], r["annotator"]) for r in opened.store.query("SELECT * FROM assignments")}
    # uploads (one per task), the import, then the transaction's begin / before-commit / commit
    n_checkpoints = len(pairs) + 4
    for fault in sorted({1, len(pairs), len(pairs) + 1, len(pairs) + 2, n_checkpoints}):
        trial = copy_project(base, tmp_path / f"trial-{fault}")
        assert _run("project", "connect", trial, "--label-studio", label_studio.url) == 0
        assert _cli_subprocess("push", trial, fault, label_studio.token) == faults.FAULT_EXIT_CODE
        assert _cli_subprocess("push", trial, None, label_studio.token) == 0
        assert _cli_subprocess("push", trial, None, label_studio.token) == 0
        with open_project(trial, write=False) as opened:
            project_id = opened.store.get_json("labelstudio")["project_id"]
        rows = _rows(trial)
        assert {(r["id"], r["annotator"]) for r in rows} == pairs, f"fault {fault}"
        request = urllib.request.Request(
            f"{label_studio.url}/api/tasks?project={project_id}&page_size=100&fields=all"
        )
        request.add_header("Authorization", f"Token {label_studio.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            tasks = json.loads(response.read())["tasks"]
        in_ls = [(t["data"]["alframe_id"], t["data"]["alframe_annotator"]) for t in tasks]
        assert sorted(in_ls) == sorted(pairs), f"fault {fault}: tasks {in_ls}"
        assert {r["task_id"] for r in rows} == {t["id"] for t in tasks}


def test_label_studio_users_map_to_annotators(
    label_studio: LocalLabelStudio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = _connect(tmp_path, label_studio, monkeypatch, budget=4)
    assert (
        _run(
            "project",
            "connect",
            setup.project,
            "--label-studio",
            label_studio.url,
            "--user",
            "carol.smith@lab.org=bob",
        )
        == 0
    )
    assert "attached to" in capsys.readouterr().out
    bob = next(r for r in setup.tasks if r["annotator"] == "bob")
    alice = next(r for r in setup.tasks if r["annotator"] == "alice" and r["id"] != bob["id"])
    truth_bob = _truth(setup, bob["id"]) > 0
    truth_alice = _truth(setup, alice["id"]) > 0
    setup.submit(bob, [brush_result(truth_bob, "foreground")], who="carol.smith")
    setup.submit(alice, [brush_result(truth_alice, "foreground")], who="dave")  # unmapped
    assert _run("round", "sync", setup.project) == 0
    stored = _stored(setup.project)
    assert set(stored) == {(bob["id"], "bob"), (alice["id"], "alice")}
    with open_project(setup.project, write=False) as opened:
        users = {
            (r["id"], r["annotator"]): r["ls_user"]
            for r in opened.store.query("SELECT * FROM ls_annotations")
        }
    assert users == {
        (bob["id"], "bob"): "carol.smith@lab.org",
        (alice["id"], "alice"): "dave@lab.org",
    }
