"""Inference through Lightning's predict loop: one engine for every device layout.

:func:`predict_rows` runs ``step(module, batch) -> rows`` over a map-style dataset inside a
``L.Trainer.predict`` built from the same hardware keys as training (:class:`Hardware`:
accelerator, devices, strategy, num_nodes, precision). One process, ``ddp_spawn`` launched from
Python, or a ``torchrun`` / SLURM launch in which every process calls :func:`predict_rows` — the
result is the same array, row ``i`` = item ``i``.

How the rows travel:

- The dataset is cut into the batches one process would run (``batch_size`` consecutive items);
  global batch ``b`` goes to rank ``b % world_size``. Every batch is therefore exactly a batch
  of the one-process run, so the rows are bit-identical whatever the number of processes (no
  per-batch-size kernel choice can differ), and no item is padded or repeated.
- Each rank writes its shard (the items' positions, their rows and ids) to a folder chosen by
  rank 0 and broadcast to the others; rank 0 assembles the rows in dataset order, checking that
  every position arrives exactly once, and every rank reads the assembled result back. The
  folder must be visible to every process: a local temporary folder serves one machine; for
  several nodes pass a shared ``scratch_dir`` (or set ``ALFRAME_SCRATCH_DIR``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from alframe._dist import world_size
from alframe.errors import ConfigError, ModelError

__all__ = [
    "Hardware",
    "PredictStep",
    "hardware_for_devices",
    "hardware_unless_here",
    "predict_rows",
]

PredictStep = Callable[[nn.Module, Any], Any]
"""``step(module, batch) -> rows``: a (b, ...) tensor or array for a collated batch of b items,
or a list of b picklable objects. It must itself be picklable (a module-level function or a
``functools.partial`` of one) for ``ddp_spawn``."""

_ASSEMBLED = "assembled.pkl"

# _ShardBatches covers every item exactly once; Lightning cannot know that of a custom batch
# sampler and says so in every process (module level, so spawned processes inherit it).
warnings.filterwarnings("ignore", message=".*custom batch sampler `_ShardBatches`.*")


@dataclass(frozen=True)
class Hardware:
    """Where an inference pass runs: the keys of ``train.*`` (docs/scaling.md).

    Attributes:
        accelerator: ``cpu``, ``gpu``, ``auto``.
        devices: devices per node: a count, ``auto``, or GPU ids (``"0,2"`` or a list).
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ... (Lightning strategy names).
        num_nodes: machines taking part.
        precision: ``32-true``, ``16-mixed``, ``bf16-mixed``, ...
    """

    accelerator: str = "cpu"
    devices: int | str | tuple[int, ...] = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"

    @classmethod
    def from_train(cls, train: Any) -> Hardware:
        """The hardware of a recipe's ``train`` section (``recipe.train``)."""
        return cls(
            accelerator=str(train.accelerator),
            devices=_trainer_devices(train.devices),
            strategy=str(train.strategy),
            num_nodes=int(train.num_nodes),
            precision=str(train.precision),
        )

    @property
    def device_count(self) -> int | None:
        """Devices per node when the spec says so (None for ``auto``)."""
        if isinstance(self.devices, tuple):
            return len(self.devices)
        if isinstance(self.devices, int):
            return self.devices
        if self.devices.strip().lower() == "auto":
            return None
        parts = [p for p in self.devices.split(",") if p.strip()]
        return len(parts) if "," in self.devices else int(self.devices)


def _int_env(name: str) -> int:
    value = os.environ.get(name, "").split("(")[0]  # SLURM writes e.g. "4(x2)"
    return int(value) if value.strip().isdigit() else 0


def _trainer_devices(value: Any) -> int | str | tuple[int, ...]:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return value


def hardware_for_devices(spec: Any = "auto") -> Hardware:
    """Translate an ``embed.devices`` / ``--devices`` request into a :class:`Hardware`.

    - ``auto`` / None: inside a multi-process launch (torchrun, SLURM: ``WORLD_SIZE`` or
      ``SLURM_NTASKS`` > 1) every process takes its shard with DDP on its own GPU (or CPU);
      otherwise every visible GPU (``ddp_spawn`` when there are several), else the CPU.
    - ``all`` / a count: every / the first N GPUs.
    - one device (``cpu``, ``cuda``, ``cuda:1``): one process there.
    - several (``"cuda:0,cuda:2"``, a list, ``"cpu,cpu"``): one process per entry
      (``ddp_spawn``); repeated CPU entries give several CPU processes (gloo).

    Raises:
        ModelError: an unknown device, or GPUs this machine does not have.
    """
    from alframe.parallel import resolve_devices

    cuda = torch.cuda.is_available()
    launched = world_size()
    if (spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto")) and (
        launched > 1
    ):
        per_node = _int_env("LOCAL_WORLD_SIZE") or _int_env("SLURM_NTASKS_PER_NODE") or launched
        return Hardware(
            accelerator="gpu" if cuda else "cpu",
            devices=per_node,
            strategy="ddp",
            num_nodes=max(1, launched // per_node),
        )
    devices = resolve_devices(spec)
    if all(d.type == "cpu" for d in devices):
        count = len(devices)
        return Hardware("cpu", count, "ddp_spawn" if count > 1 else "auto")
    if any(d.type != "cuda" for d in devices):
        raise ModelError(
            f"devices {spec!r} mix the CPU and GPUs; run on one kind (e.g. 'auto' or 'cpu')"
        )
    ids = tuple(int(d.index or 0) for d in devices)
    if len(set(ids)) != len(ids):
        raise ModelError(
            f"devices {spec!r} repeat a GPU; each process takes a GPU of its own — list each "
            "GPU once"
        )
    return Hardware("gpu", ids, "ddp_spawn" if len(ids) > 1 else "auto")


def hardware_unless_here(spec: Any, here: torch.device | str) -> Hardware | None:
    """:func:`hardware_for_devices` of a devices request, or None when that is one process on
    ``here``, the device the model already is on.

    For passes that can run either in this process or in the predict loop (RPG pseudo-labels,
    source-selection features): the same rows either way, so a request that changes nothing
    (``auto`` on a machine without a GPU, ``cpu`` for a model on the CPU) skips setting up a
    Trainer, and any other request (several devices, a torchrun / SLURM launch, another device)
    is honoured.

    Args:
        spec: an ``embed.devices`` / ``pseudolabel.devices`` / ``--devices`` request.
        here: the model's device.

    Returns:
        The hardware to pass as ``hardware=``, or None (run here).

    Raises:
        ModelError: see :func:`hardware_for_devices`.
    """
    hardware = hardware_for_devices(spec)
    device = torch.device(here)
    if hardware.strategy != "auto" or hardware.num_nodes != 1 or hardware.device_count != 1:
        return hardware
    if hardware.accelerator == "cpu" and device.type == "cpu":
        return None
    if hardware.accelerator == "gpu" and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if hardware.devices in ((index,), index):
            return None
    return hardware


# ----------------------------------------------------------------------------------------------
# Data


class _Indexed(Dataset[tuple[int, Any]]):
    """``(position, item)`` pairs, so every row can be put back in its place."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.data[index]


class _ShardBatches(Sampler[list[int]]):
    """The batches of a one-process run (consecutive positions), global batch ``b`` on rank
    ``b % world``: the same batches whatever the number of processes, none padded or repeated."""

    def __init__(self, n_items: int, batch_size: int, rank: int, world: int) -> None:
        self.n_items, self.batch_size, self.rank, self.world = n_items, batch_size, rank, world

    def _batches(self) -> Iterator[list[int]]:
        starts = range(0, self.n_items, self.batch_size)
        for number, start in enumerate(starts):
            if number % self.world == self.rank:
                yield list(range(start, min(start + self.batch_size, self.n_items)))

    def __iter__(self) -> Iterator[list[int]]:
        return self._batches()

    def __len__(self) -> int:
        return sum(1 for _ in self._batches())


def _batch_ids(batch: Any) -> list[str] | None:
    if isinstance(batch, Mapping) and "id" in batch:
        return [str(i) for i in batch["id"]]
    return None


# ----------------------------------------------------------------------------------------------
# Lightning pieces (module level: ddp_spawn pickles them)


class _RowsModule(L.LightningModule):
    """Runs ``step`` on each batch of this rank's shard and keeps the rows."""

    def __init__(
        self,
        net: nn.Module,
        step: PredictStep,
        data: Any,
        batch_size: int,
        num_workers: int,
    ) -> None:
        super().__init__()
        self.net = net
        self.step = step
        self.data = data
        self.batch_size = batch_size
        self.num_workers = num_workers
        # Fewer batches than processes leaves some with none: they still write an empty shard.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_dataloader(self) -> DataLoader[Any]:
        sampler = _ShardBatches(
            len(self.data), self.batch_size, self.trainer.global_rank, self.trainer.world_size
        )
        return DataLoader(_Indexed(self.data), batch_sampler=sampler, num_workers=self.num_workers)

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        positions, items = batch
        rows = self.step(self.net, items)
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        return positions.cpu().numpy(), rows, _batch_ids(items)


class _ShardWriter(Callback):
    """Writes this rank's shard; rank 0 assembles them in dataset order."""

    def __init__(self, folder: str, n_items: int) -> None:
        self.folder = folder
        self.n_items = n_items
        self.parts: list[tuple[np.ndarray, np.ndarray, list[str] | None]] = []
        self.result: tuple[Any, list[str] | None] | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # torchrun / SLURM: every process made its own folder; they use rank 0's.
        self.folder = trainer.strategy.broadcast(self.folder, src=0)

    def on_predict_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.parts.append(outputs)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Not on_predict_end: Lightning skips the whole loop, hooks included, in a process
        # that got no batch (fewer batches than processes), and the others would wait for it.
        if stage != "predict":
            return
        folder = Path(self.folder)
        shard = folder / f"shard-{trainer.global_rank:05d}.pkl"
        with open(shard.with_suffix(".tmp"), "wb") as handle:
            pickle.dump(self.parts, handle, protocol=pickle.HIGHEST_PROTOCOL)
        shard.with_suffix(".tmp").replace(shard)
        self.parts = []
        trainer.strategy.barrier("alframe-shards-written")
        error: str | None = None
        if trainer.is_global_zero:
            try:
                rows, ids = _assemble(folder, trainer.world_size, self.n_items)
                with open(folder / _ASSEMBLED, "wb") as handle:
                    pickle.dump((rows, ids), handle, protocol=pickle.HIGHEST_PROTOCOL)
            except ModelError as err:
                error = str(err)
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise ModelError(error)
        with open(folder / _ASSEMBLED, "rb") as handle:
            self.result = pickle.load(handle)
        trainer.strategy.barrier("alframe-shards-read")


def _assemble(folder: Path, world: int, n_items: int) -> tuple[Any, list[str] | None]:
    """Rank 0: the shards' rows in dataset order, each position exactly once."""
    rows: np.ndarray | list[Any] | None = None
    ids: list[str | None] = [None] * n_items
    seen = np.zeros(n_items, dtype=bool)
    any_ids = True
    for rank in range(world):
        shard = folder / f"shard-{rank:05d}.pkl"
        if not shard.is_file():
            raise ModelError(
                f"the rows of process {rank} did not arrive in {folder}; with several nodes the "
                "scratch folder must be shared by all of them (set ALFRAME_SCRATCH_DIR to a "
                "shared path)"
            )
        with open(shard, "rb") as handle:
            parts = pickle.load(handle)
        for positions, block, block_ids in parts:
            fresh = ~seen[positions]  # a padded or repeated item keeps its first row
            if isinstance(block, list):  # picklable objects, one per item
                if rows is None:
                    rows = [None] * n_items
                for position, row in zip(positions[fresh], np.flatnonzero(fresh)):
                    rows[int(position)] = block[int(row)]
            else:
                if rows is None:
                    rows = np.empty((n_items, *block.shape[1:]), dtype=block.dtype)
                rows[positions[fresh]] = block[fresh]
            seen[positions[fresh]] = True
            if block_ids is None:
                any_ids = False
            else:
                for position, item_id in zip(positions[fresh], np.asarray(block_ids)[fresh]):
                    ids[int(position)] = str(item_id)
    if rows is None or not seen.all():
        missing = np.flatnonzero(~seen)
        raise ModelError(
            f"{missing.size} of {n_items} items got no row (e.g. position {missing[:3].tolist()}); "
            "a process stopped early — see its log"
        )
    return rows, ([str(i) for i in ids] if any_ids else None)


# ----------------------------------------------------------------------------------------------
# Entry point


def predict_rows(
    net: nn.Module,
    step: PredictStep,
    data: Sequence[Any] | Dataset[Any] | torch.Tensor,
    hardware: Hardware | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    scratch_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> tuple[Any, list[str] | None]:
    """Run ``step(net, batch)`` over a dataset with Lightning's predict loop, rows in order.

    The module runs in eval mode under ``torch.inference_mode``; its training flag and device are
    restored afterwards.

    Args:
        net: the model; Lightning moves it to each process's device.
        step: ``step(net, batch) -> (b, ...) tensor`` (picklable for ``ddp_spawn``).
        data: a map-style dataset or a sequence (N items).
        hardware: where to run (default: one CPU process).
        batch_size: items per forward pass and process.
        num_workers: DataLoader workers per process.
        scratch_dir: where the shards go (default ``ALFRAME_SCRATCH_DIR``, else the system's
            temporary folder); must be shared across nodes in a multi-node run.

    Returns:
        ``(rows (N, ...), ids)`` on every process; ``ids`` are the items' ``id`` fields (None when
        the batches carry none).

    Raises:
        ConfigError: Lightning rejects the hardware.
        ModelError: rows went missing (a process failed, or the scratch folder is not shared).
        ValueError: empty dataset or batch size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_items = len(data)  # type: ignore[arg-type]
    if n_items == 0:
        raise ValueError("no items to run: the dataset is empty")
    hardware = hardware or Hardware()
    root = scratch_dir or os.environ.get("ALFRAME_SCRATCH_DIR") or None
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="alframe-rows-", dir=root)
    first = next(iter(net.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = net.training
    writer = _ShardWriter(folder, n_items)
    try:
        with lightning_info_silenced():
            return _predict_with_trainer(
                net, step, data, hardware, batch_size, num_workers, progress, writer, folder
            )
    finally:
        net.to(home).train(was_training)
        shutil.rmtree(folder, ignore_errors=True)


LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@contextlib.contextmanager
def lightning_info_silenced() -> Iterator[None]:
    """Lightning's per-Trainer INFO lines ("GPU available: False", "TPU available", tips) off for
    the block: an inference pass is an implementation detail, and a ranking or an RPG run makes
    several. Only loggers at Lightning's default INFO level are raised to WARNING (a level set
    on purpose, e.g. DEBUG, is left alone); the levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.level == logging.INFO:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _predict_with_trainer(
    net: nn.Module,
    step: PredictStep,
    data: Any,
    hardware: Hardware,
    batch_size: int,
    num_workers: int,
    progress: bool,
    writer: _ShardWriter,
    folder: str,
) -> tuple[Any, list[str] | None]:
    """The body of :func:`predict_rows`: one Trainer, one predict loop, the assembled rows."""
    try:
        trainer = L.Trainer(
            accelerator=hardware.accelerator,
            devices=list(hardware.devices)
            if isinstance(hardware.devices, tuple)
            else hardware.devices,
            strategy=hardware.strategy,
            num_nodes=hardware.num_nodes,
            precision=hardware.precision,  # type: ignore[arg-type]  # checked by Lightning
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            use_distributed_sampler=False,  # _ShardBatches shards by whole batches
            callbacks=[writer],
            default_root_dir=folder,
        )
    except (ValueError, TypeError, MisconfigurationException) as err:
        raise ConfigError(
            f"Lightning rejects accelerator={hardware.accelerator!r}, "
            f"devices={hardware.devices!r}, strategy={hardware.strategy!r}, "
            f"num_nodes={hardware.num_nodes}, precision={hardware.precision!r} ({err}); "
            "fix the hardware keys (e.g. accelerator: cpu on a machine without a GPU)"
        ) from None
    module = _RowsModule(net.eval(), step, data, batch_size, num_workers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*custom batch sampler `_ShardBatches`.*")
        # Lightning's own use of a torch API torch deprecates; nothing for a user to do.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        trainer.predict(module, return_predictions=False)
    if writer.result is not None:
        return writer.result
    # ddp_spawn: the processes ran elsewhere; this (launching) process reads the result.
    assembled = Path(writer.folder) / _ASSEMBLED
    if not assembled.is_file():
        raise ModelError(f"the inference processes left no result in {writer.folder}")
    with open(assembled, "rb") as handle:
        rows, ids = pickle.load(handle)
    return rows, ids
