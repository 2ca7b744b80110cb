"""UDA producers write loadable per-epoch checkpoints (alframe.adapt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alframe.adapt import adapt_checkpoint, save_task_checkpoint
from alframe.errors import ConfigError, StateError
from alframe.models import load_task
from alframe.ranking import TargetImages


def _recipe_dict(root: Path) -> dict:
    from alframe.data import synthetic_recipe_dict

    raw = synthetic_recipe_dict(root, image_size=32)
    raw["model"]["extra"] = {"decoder_channels": [16, 8, 8]}
    return raw


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alframe.config import recipe_from_dict
    from alframe.models import SegmentationTask

    root = tmp_path_factory.mktemp("adapt")
    recipe = recipe_from_dict(_recipe_dict(root))
    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)  # restored below: tests must not leave the global RNG changed
        task = SegmentationTask.from_recipe(recipe, load_weights=False)
    finally:
        torch.random.set_rng_state(torch_state)
    return save_task_checkpoint(task, root / "source.ckpt", epoch=0)


def _target(n: int = 6) -> TargetImages:
    rng = np.random.default_rng(0)
    return TargetImages.from_array((2.0 + rng.normal(size=(n, 1, 32, 32))).astype(np.float32))


@pytest.mark.parametrize(
    ("method", "epochs", "expected"),
    [("adabn", None, 1), ("mean-teacher", 2, 2), ("self-training", 2, 2)],
)
def test_every_method_writes_loadable_epoch_checkpoints(
    checkpoint: Path, tmp_path: Path, method: str, epochs: int | None, expected: int
) -> None:
    params = {"threshold": 0.5} if method == "self-training" else {}
    result = adapt_checkpoint(
        checkpoint, _target(), method, tmp_path / method, epochs=epochs, progress=False, **params
    )
    assert [p.name for p in result.checkpoints] == [
        f"epoch_{e:03d}.ckpt" for e in range(1, expected + 1)
    ]
    assert len(result.history) == expected
    source = load_task(checkpoint).state_dict()
    for path in result.checkpoints:
        task = load_task(path)  # weights_only=True inside
        raw = torch.load(path, weights_only=True)
        assert raw["alframe_adapt"]["method"] == method
        assert task.state_dict().keys() == source.keys()
    last = load_task(result.checkpoints[-1]).state_dict()
    assert any(not torch.equal(last[k], source[k]) for k in source)
    manifest = json.loads((tmp_path / method / "adapt.json").read_text())
    assert manifest["checkpoints"] == [p.name for p in result.checkpoints]


def test_adabn_changes_batchnorm_running_stats_only(checkpoint: Path, tmp_path: Path) -> None:
    result = adapt_checkpoint(checkpoint, _target(), "adabn", tmp_path / "z", progress=False)
    before = load_task(checkpoint).state_dict()
    after = load_task(result.checkpoints[0]).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert changed
    assert all(k.endswith(stats) for k in changed), sorted(changed)[:5]
    assert any(k.endswith("running_mean") for k in changed)


def test_adapt_user_errors(checkpoint: Path, tmp_path: Path) -> None:
    adapt_checkpoint(checkpoint, _target(), "adabn", tmp_path / "z", progress=False)
    with pytest.raises(StateError, match="--overwrite"):
        adapt_checkpoint(checkpoint, _target(), "adabn", tmp_path / "z", progress=False)
    adapt_checkpoint(checkpoint, _target(), "adabn", tmp_path / "z", overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="unknown adapters name"):
        adapt_checkpoint(checkpoint, _target(), "dann", tmp_path / "y")
    with pytest.raises(ConfigError, match="unknown setting"):
        adapt_checkpoint(checkpoint, _target(), "adabn", tmp_path / "x", lr=0.1)
