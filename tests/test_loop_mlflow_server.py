"""A budget experiment logged to a local ``mlflow server`` (the team set-up) instead of sqlite.

The server runs on a free port of 127.0.0.1 with one worker and no job execution (≈13 s and
0.5 GB instead of ≈30 s and 2.8 GB), its own sqlite store and artifact folder in tmp_path, in its
own process group, which is killed at the end whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from alframe.config import recipe_from_dict
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset
from alframe.loop import run_experiment

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*",
    "ignore:.*does not have many workers.*",
)

STARTUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(
        f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    executable = shutil.which("mlflow")
    if executable is None:
        pytest.skip("the `mlflow` command is not on PATH (install mlflow to run this test)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                executable,
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'server.db'}",
                "--artifacts-destination",
                str(tmp_path / "server_artifacts"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        _wait_until_healthy(url, process, log)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def test_experiment_logs_to_a_local_mlflow_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    write_synthetic_dataset(tmp_path / "data", n_images=8, image_size=32, seed=5)
    raw = synthetic_recipe_dict(tmp_path / "data", image_size=32)
    raw["name"] = "loop_server"
    raw["model"] = {"arch": "Unet", "encoder": "tu-test_resnet", "encoder_depth": 3}
    raw["train"].update({"batch_size": 4, "progress": False, "accelerator": "cpu"})
    raw["experiment"] = {
        "strategies": [{"name": "random"}],
        "schedules": [{"name": "one", "cumulative": [2, 4]}],
        "full_reference": False,
        "steps_per_round": 2,
    }
    raw["output_dir"] = str(tmp_path / "run")
    # No tracking.uri in the recipe: MLFLOW_TRACKING_URI decides.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            result = run_experiment(recipe_from_dict(raw))
    finally:
        torch.set_num_threads(previous)
    assert result.tracking_uri == mlflow_server
    assert f"open {mlflow_server} in a browser" in printed.getvalue()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("loop_server")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted(r.data.tags["alframe.kind"] for r in runs)
    assert kinds == ["arm", "round", "round", "summary"]
    rounds = [r for r in runs if r.data.tags["alframe.kind"] == "round"]
    assert sorted(r.data.metrics["n_labelled"] for r in rounds) == [2.0, 4.0]
    artifacts = {a.path for a in client.list_artifacts(rounds[0].info.run_id)}
    assert "selection.csv" in artifacts
    (summary,) = [r for r in runs if r.data.tags["alframe.kind"] == "summary"]
    plot = client.download_artifacts(summary.info.run_id, "learning_curve.png", str(tmp_path))
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    # Artifacts went through the server to its own destination.
    assert any((tmp_path / "server_artifacts").rglob("learning_curve.png"))
