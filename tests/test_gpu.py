"""Scale-out settings and GPU paths.

The first part runs everywhere: the recipe's hardware keys (accelerator, devices, strategy,
num_nodes, precision) reach Lightning's Trainer, SLURM / torchrun launches are recognised, and
device requests are resolved (or refused with a clear message) without a GPU. The tests marked
``gpu`` need CUDA (and faiss-gpu) and are skipped, saying why, where there is none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning.pytorch.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only as pytorch_rank_zero_only

from alframe.config import Recipe
from alframe.embed.extract import extract_embeddings
from alframe.errors import ConfigError, ModelError
from alframe.index import VectorIndex, exact_knn, gpu_count
from alframe.index import resolve_device as resolve_index_device
from alframe.models.training import fit_segmentation, make_trainer, torch_flags_restored
from alframe.parallel import resolve_device
from tests.test_models_training import Squares, SquaresModule, make_recipe

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*",
    "ignore:.*does not have many workers.*",
)

HAS_CUDA = torch.cuda.is_available()
FAISS_HAS_GPU = hasattr(faiss, "StandardGpuResources")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
needs_faiss_gpu = pytest.mark.skipif(
    not FAISS_HAS_GPU or gpu_count() == 0,
    reason="faiss built without GPU support" if not FAISS_HAS_GPU else "no CUDA device",
)
SLURM_ENV = {
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NAME": "alframe-train",
    "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "gpu[01-02]",
}
TORCHRUN_ENV = {
    "RANK": "3",
    "GROUP_RANK": "1",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "WORLD_SIZE": "4",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "alframe",
}


def tiny_recipe(**train: Any) -> Recipe:
    return make_recipe(**{"max_epochs": 1, **train})


@pytest.fixture
def no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No SLURM / torchrun variables from the machine running the tests; afterwards, the
    environment and torch's determinism flags are as before (a Trainer changes both)."""
    saved_environ = dict(os.environ)
    # A Trainer that believes it is rank 3 sets Lightning's process-wide rank, which would silence
    # every later rank-zero-only write (loggers, checkpoints) in this test session.
    rank_holders = {id(f): f for f in (fabric_rank_zero_only, pytorch_rank_zero_only)}.values()
    saved_ranks = [(holder, getattr(holder, "rank", None)) for holder in rank_holders]
    for name in [*SLURM_ENV, *TORCHRUN_ENV]:
        monkeypatch.delenv(name, raising=False)
    with torch_flags_restored():
        yield monkeypatch
    monkeypatch.undo()
    os.environ.clear()
    os.environ.update(saved_environ)
    for holder, rank in saved_ranks:
        if rank is None:
            if hasattr(holder, "rank"):
                delattr(holder, "rank")
        else:
            holder.rank = rank  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Runs everywhere


def test_recipe_hardware_keys_reach_the_trainer(
    tmp_path: Path, no_launcher_env: pytest.MonkeyPatch
) -> None:
    recipe = tiny_recipe(devices="2", strategy="ddp", num_nodes=2, precision="bf16-mixed")
    trainer = make_trainer(recipe, tmp_path, None, [])
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2  # "2" from a --set override counts as two devices
    assert trainer.num_nodes == 2
    assert trainer.world_size == 4
    assert trainer.precision == "bf16-mixed"
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)


def test_bad_hardware_keys_name_the_recipe_keys(
    tmp_path: Path, no_launcher_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"strategy='no-such-strategy'.*train\.\* keys"):
        make_trainer(tiny_recipe(strategy="no-such-strategy"), tmp_path, None, [])


def test_slurm_launch_is_detected(tmp_path: Path, no_launcher_env: pytest.MonkeyPatch) -> None:
    for name, value in SLURM_ENV.items():
        no_launcher_env.setenv(name, value)
    trainer = make_trainer(tiny_recipe(devices=2, strategy="ddp", num_nodes=2), tmp_path, None, [])
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (3, 1, 1)
    assert trainer.world_size == 4


def test_torchrun_launch_is_detected(tmp_path: Path, no_launcher_env: pytest.MonkeyPatch) -> None:
    for name, value in TORCHRUN_ENV.items():
        no_launcher_env.setenv(name, value)
    trainer = make_trainer(tiny_recipe(devices=2, strategy="ddp", num_nodes=2), tmp_path, None, [])
    assert isinstance(trainer.strategy.cluster_environment, TorchElasticEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (3, 1, 1)
    assert trainer.world_size == 4


def test_extraction_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if HAS_CUDA else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ModelError, match="unknown device 'tpu-ish'"):
        resolve_device("tpu-ish")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message given on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:1"])
def test_cuda_request_without_cuda_is_a_clear_error(device: str) -> None:
    with pytest.raises(ModelError, match="torch sees no CUDA device; use 'auto'"):
        resolve_device(device)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3))
    with pytest.raises(ModelError, match="no CUDA device"):
        extract_embeddings(
            encoder, torch.zeros(2, 1, 8, 8), batch_size=2, progress=False, device=device
        )


def test_index_device_resolution() -> None:
    assert resolve_index_device("cpu") == "cpu"
    assert resolve_index_device("auto") == ("gpu" if FAISS_HAS_GPU and gpu_count() > 0 else "cpu")
    if not FAISS_HAS_GPU or gpu_count() == 0:
        with pytest.raises(ConfigError, match="install faiss-gpu on a CUDA machine"):
            VectorIndex(8, device="gpu")


# ---------------------------------------------------------------------------------------------
# Needs a GPU


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_step_of_a_tiny_unet(tmp_path: Path) -> None:
    recipe = tiny_recipe(accelerator="gpu", devices=1, max_epochs=2, deterministic=False)
    result = fit_segmentation(recipe, SquaresModule(), tmp_path / "run")
    assert result.best_checkpoint.is_file()
    assert result.epochs_run == 2
    assert math.isfinite(result.history[-1]["train/loss"])
    assert math.isfinite(result.best_val_dice)


needs_two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA devices (one process per GPU)"
)


@pytest.mark.gpu
@needs_cuda
def test_cuda_embeddings_match_cpu() -> None:
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2)
    )
    images = Squares(7).images
    on_cpu = extract_embeddings(encoder, images, batch_size=4, progress=False, device="cpu")
    on_gpu = extract_embeddings(encoder, images, batch_size=4, progress=False, device="cuda")
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
    assert next(encoder.parameters()).device.type == "cpu"  # the module goes back home


@pytest.mark.gpu
@needs_cuda
def test_ranking_on_a_gpu_matches_cpu() -> None:
    import copy

    from alframe.ranking import Predictor, TargetImages, create_ranker, rank_models
    from tests.test_ranking import _tiny_unet

    torch.manual_seed(0)
    net = _tiny_unet()
    array = Squares(7).images.numpy().astype(np.float32)
    images = TargetImages.from_array(array)
    results = {}
    for devices in ("cpu", "cuda:0"):
        predictor = Predictor.from_module(copy.deepcopy(net), name="unet", num_classes=2)
        ranker = create_ranker("cte-ei", perturbation="dropout", seed=3)
        report = rank_models(
            [predictor], images, [ranker], batch_size=4, progress=False, devices=devices
        )
        assert predictor.devices == ["cpu"]  # back home after scoring
        predictor.place(devices)
        results[devices] = (
            predictor.predict_proba(array[:5]),
            report.results[ranker.describe()]["unet"].per_image,
        )
        predictor.place("cpu")
    (cpu_proba, cpu_scores), (gpu_proba, gpu_scores) = results.values()
    np.testing.assert_allclose(gpu_proba, cpu_proba, atol=1e-4)
    # EI thresholds probabilities at 0.5: a pixel within float error of it may flip.
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
@needs_two_gpus
def test_two_gpu_processes_give_the_one_gpu_results() -> None:
    """DDP over two GPUs (ddp_spawn) against one GPU: the same batches on the same kind of
    device, so embeddings and CTE scores must be equal, not merely close."""
    from alframe.inference import Hardware
    from tests.ddp_check import workload

    one = workload(hardware=Hardware("gpu", (0,)))
    two = workload(hardware=Hardware("gpu", (0, 1), "ddp_spawn"))
    assert sorted(one) == sorted(two)
    for key, value in one.items():
        np.testing.assert_array_equal(two[key], value, err_msg=key)


@pytest.mark.gpu
@needs_faiss_gpu
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_faiss_gpu_knn_equals_cpu(metric: str) -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((2000, 32)).astype(np.float32)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    index = VectorIndex(32, kind="flat", metric=metric, device="gpu")  # type: ignore[arg-type]
    index.add(database)
    gpu_distances, gpu_indices = index.knn(queries, 10)
    cpu_distances, cpu_indices = exact_knn(queries, database, 10, metric=metric)  # type: ignore[arg-type]
    np.testing.assert_allclose(gpu_distances, cpu_distances, rtol=1e-4, atol=1e-4)
    # Neighbours may swap only where distances tie to float precision.
    mismatch = gpu_indices != cpu_indices
    assert mismatch.mean() < 0.01
    np.testing.assert_allclose(
        gpu_distances[mismatch], cpu_distances[mismatch], rtol=1e-4, atol=1e-4
    )


def test_our_rank_agrees_with_lightning_under_slurm_and_torchrun(
    tmp_path: Path, no_launcher_env: pytest.MonkeyPatch
) -> None:
    from alframe._dist import global_rank, is_global_zero

    assert (global_rank(), is_global_zero()) == (0, True)
    for env in (SLURM_ENV, TORCHRUN_ENV):
        for name in [*SLURM_ENV, *TORCHRUN_ENV]:
            no_launcher_env.delenv(name, raising=False)
        for name, value in env.items():
            no_launcher_env.setenv(name, value)
        trainer = make_trainer(
            tiny_recipe(devices=2, strategy="ddp", num_nodes=2), tmp_path, None, []
        )
        assert global_rank() == trainer.global_rank == 3
        assert not is_global_zero()
    no_launcher_env.delenv("RANK")
    no_launcher_env.delenv("LOCAL_RANK")
    no_launcher_env.setenv("LOCAL_RANK", "1")  # a process Lightning's own DDP launcher started
    assert global_rank() == 1


def test_plain_ddp_with_a_shallow_encoder_looks_for_unused_parameters(
    tmp_path: Path, no_launcher_env: pytest.MonkeyPatch
) -> None:
    recipe = tiny_recipe(devices=2, strategy="ddp")

    def with_depth(depth: int) -> Recipe:
        return recipe.model_copy(
            update={"model": recipe.model.model_copy(update={"encoder_depth": depth})}
        )

    for depth, find_unused in ((5, False), (3, True)):
        trainer = make_trainer(with_depth(depth), tmp_path, None, [])
        assert isinstance(trainer.strategy, DDPStrategy)
        assert bool(trainer.strategy._ddp_kwargs.get("find_unused_parameters")) is find_unused
