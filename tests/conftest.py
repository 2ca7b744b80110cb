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
