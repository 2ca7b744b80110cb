"""Shared test set-up: offline, deterministic, quiet."""

from __future__ import annotations

import os

# Must happen before anything imports huggingface_hub / albumentations.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# Tests use tiny models: one OpenMP thread is faster than two fighting over 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest


def data_root() -> Path | None:
    """The real-data root from ALFRAME_DATA, or None when unset / missing."""
    value = os.environ.get("ALFRAME_DATA")
    if not value:
        return None
    path = Path(value)
    return path if (path / "cxr_lungs").is_dir() else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if data_root() is None:
        skip = pytest.mark.skip(reason="ALFRAME_DATA is not set to a folder containing cxr_lungs/")
        for item in items:
            if "realdata" in item.keywords:
                item.add_marker(skip)
    _label_studio_tests_last(items)


@pytest.fixture(scope="session")
def cxr_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("ALFRAME_DATA is not set to a folder containing cxr_lungs/")
    return root / "cxr_lungs"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny test models: thread hand-offs dominate on a 2-core machine; restored at the end."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------ the Label Studio server
# Tests marked `labelstudio` talk to a real Label Studio server, started once per session. Its
# start (install into its own cached venv when missing, then ~1.5 min of database set-up) runs in
# a background thread from the end of collection, and the marked tests run last, so the wait
# overlaps the rest of the suite.
_LABEL_STUDIO: dict[str, object] = {}


def _start_label_studio() -> None:
    import tempfile

    from alframe.annotate.labelstudio_server import LocalLabelStudio, install_server

    try:
        install_server()
    except Exception as err:  # no registry, no disk: the package cannot be installed here
        _LABEL_STUDIO["skip"] = f"label-studio cannot be installed here ({err})"
        return
    data_dir = Path(tempfile.mkdtemp(prefix="alframe-label-studio-"))
    _LABEL_STUDIO["data_dir"] = data_dir
    try:
        _LABEL_STUDIO["server"] = LocalLabelStudio.start(data_dir)
    except Exception as err:
        _LABEL_STUDIO["error"] = f"label-studio did not start: {err}"


def _label_studio_tests_last(items: list[pytest.Item]) -> None:
    marked = [item for item in items if "labelstudio" in item.keywords]
    if marked:
        items[:] = [item for item in items if "labelstudio" not in item.keywords] + marked


def pytest_collection_finish(session: pytest.Session) -> None:
    import threading

    if any("labelstudio" in item.keywords for item in session.items):
        thread = threading.Thread(target=_start_label_studio, daemon=True)
        thread.start()
        _LABEL_STUDIO["thread"] = thread


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    thread = _LABEL_STUDIO.get("thread")
    if thread is not None:
        thread.join()  # type: ignore[attr-defined]
    server = _LABEL_STUDIO.get("server")
    if server is not None:
        server.stop()  # type: ignore[attr-defined]
    data_dir = _LABEL_STUDIO.get("data_dir")
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def label_studio() -> object:
    """The running :class:`~alframe.annotate.labelstudio_server.LocalLabelStudio`."""
    thread = _LABEL_STUDIO.get("thread")
    if thread is None:
        pytest.fail("the Label Studio server was not started at collection")
    thread.join()  # type: ignore[attr-defined]
    if "skip" in _LABEL_STUDIO:
        pytest.skip(str(_LABEL_STUDIO["skip"]))
    if "error" in _LABEL_STUDIO:
        pytest.fail(str(_LABEL_STUDIO["error"]))
    server = _LABEL_STUDIO["server"]
    return server.wait()  # type: ignore[attr-defined]
