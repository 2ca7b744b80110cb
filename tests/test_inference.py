"""Inference through Lightning's predict loop (alframe.inference): sharding, assembly, DDP.

The DDP checks run two CPU processes (gloo), launched by Lightning (``ddp_fork``, and
``ddp_spawn`` for embeddings) and by ``torchrun --nproc-per-node 2``, and require embeddings, CTE
per-image scores, true Dice, RPG pseudo-labels and source-selection features *equal* to the
one-process run. Equality needs the same intra-op thread count on both sides: oneDNN's
convolutions sum in another order with 1 and 2 threads (a 1e-7 difference on this machine), so
the one-process reference runs with the threads Lightning / torchrun give each DDP process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alframe.errors import ConfigError, ModelError
from alframe.inference import (
    Hardware,
    _assemble,
    _ShardBatches,
    hardware_for_devices,
    predict_rows,
)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = (
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_LOCALID",
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*",
    "ignore:.*does not have many workers.*",
)


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize(("n_items", "batch_size"), [(13, 4), (3, 4), (8, 2), (1, 1)])
def test_shards_are_the_one_process_batches_each_once(
    world: int, n_items: int, batch_size: int
) -> None:
    alone = list(_ShardBatches(n_items, batch_size, 0, 1))
    shards = [list(_ShardBatches(n_items, batch_size, rank, world)) for rank in range(world)]
    assert [len(s) for s in shards] == [
        len(_ShardBatches(n_items, batch_size, r, world)) for r in range(world)
    ]
    together = sorted((b for s in shards for b in s), key=lambda b: b[0])
    assert together == alone  # same batches, none padded, none repeated
    assert [i for b in alone for i in b] == list(range(n_items))


def _write_shard(folder: Path, rank: int, parts: list[tuple[np.ndarray, object, object]]) -> None:
    with open(folder / f"shard-{rank:05d}.pkl", "wb") as handle:
        pickle.dump(parts, handle)


def test_rank_zero_puts_rows_in_order_and_drops_repeats(tmp_path: Path) -> None:
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    _write_shard(
        tmp_path,
        0,
        [(np.array([0, 1]), rows[[0, 1]], ["a", "b"]), (np.array([4]), rows[[4]], ["e"])],
    )
    # Rank 1 repeats item 0 (as a padding sampler would): the first row stays.
    _write_shard(
        tmp_path, 1, [(np.array([2, 3, 0]), np.stack([rows[2], rows[3], rows[3]]), ["c", "d", "a"])]
    )
    out, ids = _assemble(tmp_path, 2, 5)
    np.testing.assert_array_equal(out, rows)
    assert ids == ["a", "b", "c", "d", "e"]


def test_missing_rows_or_shards_are_a_clear_error(tmp_path: Path) -> None:
    _write_shard(tmp_path, 0, [(np.array([0, 2]), np.zeros((2, 3)), None)])
    with pytest.raises(ModelError, match=r"process 1 did not arrive.*ALFRAME_SCRATCH_DIR"):
        _assemble(tmp_path, 2, 3)
    with pytest.raises(ModelError, match=r"1 of 3 items got no row \(e.g. position \[1\]\)"):
        _assemble(tmp_path, 1, 3)


# ------------------------------------------------------------------------------ one process


def _double(net: nn.Module, batch: object) -> torch.Tensor:
    images = batch["image"] if isinstance(batch, dict) else batch
    return net(images).flatten(1)


def _objects(net: nn.Module, batch: torch.Tensor) -> list[str]:
    return [f"item{int(i)}" for i in batch]


def test_one_process_rows_ids_objects_and_the_module_left_as_it_was(tmp_path: Path) -> None:
    net = nn.Conv2d(1, 2, 1).train()
    items = [{"image": torch.full((1, 2, 2), float(i)), "id": f"s{i}"} for i in range(7)]
    rows, ids = predict_rows(net, _double, items, batch_size=3, scratch_dir=tmp_path)
    with torch.no_grad():
        expected = net(torch.stack([i["image"] for i in items])).flatten(1).numpy()
    np.testing.assert_array_equal(rows, expected)
    assert ids == [f"s{i}" for i in range(7)]
    assert net.training and list(tmp_path.iterdir()) == []  # mode restored, shards removed
    objects, none = predict_rows(nn.Identity(), _objects, list(range(4)), batch_size=3)
    assert objects == ["item0", "item1", "item2", "item3"] and none is None


def test_bad_hardware_and_inputs_say_what_to_fix() -> None:
    net = nn.Identity()
    with pytest.raises(ConfigError, match=r"Lightning rejects accelerator='abacus'.*hardware keys"):
        predict_rows(net, _objects, [1], Hardware(accelerator="abacus"))
    with pytest.raises(ValueError, match="dataset is empty"):
        predict_rows(net, _objects, [])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict_rows(net, _objects, [1], batch_size=0)


def test_device_requests_become_hardware(no_launch: pytest.MonkeyPatch) -> None:
    assert hardware_for_devices("cpu") == Hardware("cpu", 1, "auto")
    assert hardware_for_devices("cpu,cpu") == Hardware("cpu", 2, "ddp_spawn")
    assert hardware_for_devices(["cpu"] * 3).device_count == 3
    no_launch.setattr("alframe.parallel._cuda_count", lambda: 4)
    no_launch.setattr("torch.cuda.is_available", lambda: True)
    assert hardware_for_devices("cuda:1") == Hardware("gpu", (1,), "auto")
    assert hardware_for_devices("auto") == Hardware("gpu", (0, 1, 2, 3), "ddp_spawn")
    with pytest.raises(ModelError, match="repeat a GPU"):
        hardware_for_devices("cuda:0,cuda:0")
    with pytest.raises(ModelError, match="mix the CPU and GPUs"):
        hardware_for_devices("cpu,cuda:0")
    # torchrun on 2 nodes × 2 GPUs: each process joins the launch and takes its shard.
    for name, value in (("WORLD_SIZE", "4"), ("LOCAL_WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        no_launch.setenv(name, value)
    assert hardware_for_devices("auto") == Hardware("gpu", 2, "ddp", num_nodes=2)


# ------------------------------------------------------------------------------ DDP (2 processes)


def _ddp_threads() -> int:
    """The intra-op threads of each of 2 DDP CPU processes (Lightning's rule, as torchrun's
    OMP_NUM_THREADS is set to match below)."""
    from lightning.fabric.utilities.distributed import _suggested_max_num_threads

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return _suggested_max_num_threads(2)


@pytest.fixture(scope="module")
def one_process() -> Iterator[dict[str, np.ndarray]]:
    from tests.ddp_check import workload

    threads = torch.get_num_threads()
    torch.set_num_threads(_ddp_threads())
    try:
        yield workload("cpu")
    finally:
        torch.set_num_threads(threads)


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    from tests.ddp_check import N_IMAGES, N_MODELS, RANKERS

    assert sorted(got) == sorted(expected)
    # embeddings, scores and true Dice per model, 3 pseudo-label arrays, 3 transfer arrays
    assert len(expected) == 1 + N_MODELS * (len(RANKERS) + 1) + 3 + 3
    for key, value in expected.items():
        if not key.startswith("transfer-pixels"):  # those have a row per sampled pixel
            assert value.shape[0] == N_IMAGES, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert expected["transfer-pixels/features"].shape[0] > N_IMAGES
    labels = expected["pseudo/labels"]
    assert set(np.unique(labels)) <= {-1, 0, 1} and (labels >= 0).any()


def test_two_ddp_processes_give_the_one_process_results(
    one_process: dict[str, np.ndarray], no_launch: pytest.MonkeyPatch
) -> None:
    from tests.ddp_check import workload

    # ddp_fork: the same DDP processes (gloo) as ddp_spawn, started in a second instead of
    # twenty, for the three workloads; the spawn path (pickling) is checked below and by
    # test_ranking_cli's `--devices cpu,cpu`.
    got = workload(hardware=Hardware("cpu", 2, "ddp_fork"))
    _assert_same(got, one_process)


def test_a_process_without_a_batch_still_hands_in_its_shard(no_launch: pytest.MonkeyPatch) -> None:
    # One batch for two processes (and one candidate model for two): the idle one writes an
    # empty shard instead of leaving the other waiting.
    items = [{"image": torch.full((1, 2, 2), float(i)), "id": f"s{i}"} for i in range(3)]
    net = nn.Conv2d(1, 1, 1)
    rows, ids = predict_rows(net, _double, items, Hardware("cpu", 2, "ddp_fork"), batch_size=4)
    alone, _ = predict_rows(net, _double, items, batch_size=4)
    np.testing.assert_array_equal(rows, alone)
    assert ids == ["s0", "s1", "s2"]


def test_spawned_processes_give_the_one_process_embeddings(
    one_process: dict[str, np.ndarray], no_launch: pytest.MonkeyPatch
) -> None:
    from alframe.embed.extract import encoder_from_timm, extract_embeddings
    from tests.ddp_check import images

    encoder = encoder_from_timm("resnet10t", in_channels=1, seed=1)
    rows = extract_embeddings(
        encoder, images(), batch_size=4, progress=False, device="cpu,cpu"
    )  # "cpu,cpu" → two ddp_spawn processes
    np.testing.assert_array_equal(rows, one_process["embeddings"])


def test_a_torchrun_launch_gives_the_one_process_results(
    one_process: dict[str, np.ndarray], tmp_path: Path, no_launch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ddp.npz"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = str(_ddp_threads())
    command = [  # `torchrun` is this module's console script; -m keeps this interpreter
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(REPO / "tests" / "ddp_check.py"),
        str(out),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as saved:
        got = {key: saved[key] for key in saved.files}
    _assert_same(got, one_process)


def test_inference_passes_do_not_announce_lightning_info(no_launch: pytest.MonkeyPatch) -> None:
    import logging

    from alframe.inference import LIGHTNING_LOGGERS

    seen: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    handler = Record(level=logging.DEBUG)
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)  # Lightning's own default on import
        logger.addHandler(handler)
    try:
        items = [{"image": torch.full((1, 2, 2), float(i)), "id": f"s{i}"} for i in range(3)]
        predict_rows(nn.Conv2d(1, 1, 1), _double, items, batch_size=2)
        assert [logger.level for logger in loggers] == [logging.INFO] * 2  # restored
        assert not any("available" in message for message in seen), seen
        logging.getLogger("lightning.pytorch").setLevel(logging.DEBUG)  # chosen: left alone
        predict_rows(nn.Conv2d(1, 1, 1), _double, items, batch_size=2)
        assert any("GPU available" in message for message in seen), seen
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
            logger.removeHandler(handler)
