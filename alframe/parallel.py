"""Inference over several devices: resolve device requests, and split batches across replicas.

Training scales through Lightning strategies (``train.devices`` / ``strategy`` / ``num_nodes``);
the inference passes outside a Trainer — embedding extraction and checkpoint ranking — scale
here, in one process: the model is copied once onto each device, every batch is cut into
contiguous chunks (one per device), the chunks run concurrently in threads (CUDA kernels release
the GIL, as in ``torch.nn.DataParallel``) and the results are gathered in input order. Row ``i``
of a gathered output is therefore the model's output for input row ``i`` whatever the number of
devices, which the tests check on the CPU with repeated CPU "devices".

Unlike ``DataParallel`` the replicas are made once, not per batch, and hooks can be put on every
replica (channel-dropout perturbations, decoder-feature capture).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Generic, TypeVar

import torch
from torch import nn

from alframe._dist import local_rank, world_size
from alframe.errors import ModelError

__all__ = ["DeviceSpec", "Replicas", "resolve_device", "resolve_devices"]

DeviceSpec = str | int | torch.device | Sequence[str | torch.device] | None
"""A device request: see :func:`resolve_devices`."""

ModuleT = TypeVar("ModuleT", bound=nn.Module)
ResultT = TypeVar("ResultT")


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str | torch.device | None) -> torch.device:
    """One torch device.

    Args:
        device: ``None`` or ``"auto"``: CUDA when torch sees a GPU, else the CPU; ``"cpu"``;
            ``"cuda"`` / ``"gpu"`` (the current CUDA device) or ``"cuda:N"``; or a
            ``torch.device``.

    Returns:
        The device.

    Raises:
        ModelError: an unknown device string, or a CUDA device that this machine does not have
            (say ``"auto"`` or ``"cpu"`` instead).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str) and device.strip().lower() == "gpu":
        device = "cuda"
    try:
        target = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as err:
        raise ModelError(
            f"unknown device {device!r} ({err}); use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if target.type == "cuda":
        available = _cuda_count()
        if available == 0:
            raise ModelError(
                f"device {str(target)!r} requested but torch sees no CUDA device; use 'auto' "
                "(GPU when present, else CPU) or 'cpu'"
            )
        if target.index is not None and target.index >= available:
            raise ModelError(
                f"device {str(target)!r} requested but torch sees only {available} CUDA "
                f"device(s) (cuda:0 to cuda:{available - 1})"
            )
    return target


def resolve_devices(spec: DeviceSpec = "auto") -> list[torch.device]:
    """The devices an inference pass is spread over.

    Args:
        spec:
            - ``None`` / ``"auto"``: every visible CUDA device, or the CPU when there is none.
              Inside a multi-process launch (torchrun, SLURM, Lightning DDP: ``WORLD_SIZE`` or
              ``SLURM_NTASKS`` > 1) only this process's own GPU (``cuda:LOCAL_RANK``), so that
              processes do not all pile onto every GPU.
            - ``"all"``: every visible CUDA device (an error without one).
            - an int ``N`` ≥ 1: the first ``N`` CUDA devices.
            - one device (``"cpu"``, ``"cuda"``, ``"gpu"``, ``"cuda:1"``, a ``torch.device``).
            - several: a comma-separated string (``"cuda:0,cuda:1"``) or a list. A device may be
              repeated (two replicas on one GPU can overlap transfers and compute).

    Returns:
        At least one device, in the order batches are split over them.

    Raises:
        ModelError: an unknown device, more CUDA devices than the machine has, or a count < 1.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        count = _cuda_count()
        if count == 0:
            return [torch.device("cpu")]
        if world_size() > 1:
            return [torch.device("cuda", local_rank() % count)]
        return [torch.device("cuda", i) for i in range(count)]
    if isinstance(spec, str) and spec.strip().lower() == "all":
        count = _cuda_count()
        if count == 0:
            raise ModelError(
                "devices 'all' asks for every GPU but torch sees no CUDA device; use 'auto' "
                "(GPUs when present, else CPU) or 'cpu'"
            )
        return [torch.device("cuda", i) for i in range(count)]
    if isinstance(spec, bool):
        raise ModelError(f"devices must be 'auto', a count, a device or a list, got {spec!r}")
    if isinstance(spec, int):
        count = _cuda_count()
        if spec < 1:
            raise ModelError(f"a device count must be >= 1, got {spec}")
        if spec > count:
            raise ModelError(
                f"{spec} CUDA device(s) requested but torch sees {count}; lower the count or use "
                "'auto'"
            )
        return [torch.device("cuda", i) for i in range(spec)]
    if isinstance(spec, str) and "," in spec:
        parts: Sequence[str | torch.device] = [p for p in spec.split(",") if p.strip()]
    elif isinstance(spec, str | torch.device):
        parts = [spec]
    else:
        parts = list(spec)
    if not parts:
        raise ModelError("an empty device list; name at least one device or use 'auto'")
    devices = [resolve_device(part) for part in parts]
    # A bare "cuda" means the current device; pin it so replicas and chunks agree.
    return [
        torch.device("cuda", torch.cuda.current_device())
        if d.type == "cuda" and d.index is None
        else d
        for d in devices
    ]


class Replicas(Generic[ModuleT]):
    """A module placed on one or several devices, with batches split across the copies.

    The first replica *is* the given module (moved to the first device); the others are deep
    copies made before that move, so they hold the same weights and buffers and the same mode
    (train / eval). Modifying the original's weights afterwards does not reach the copies: build
    new replicas instead.

    Args:
        module: the model.
        devices: where to place it (see :func:`resolve_devices`); one device means no copies and
            no threads.

    Attributes:
        modules: one module per device, in device order.
        devices: the devices.
    """

    def __init__(self, module: ModuleT, devices: Sequence[torch.device]) -> None:
        if not devices:
            raise ModelError("Replicas needs at least one device")
        self.devices = list(devices)
        copies = [copy.deepcopy(module) for _ in self.devices[1:]]
        self.modules: list[ModuleT] = [module.to(self.devices[0])]
        self.modules.extend(replica.to(d) for replica, d in zip(copies, self.devices[1:]))

    def map(
        self,
        function: Callable[[ModuleT, torch.Tensor, int], ResultT],
        batch: torch.Tensor,
    ) -> list[ResultT]:
        """Run ``function(replica, chunk, replica_index)`` on contiguous chunks of a batch.

        The batch (B, ...) is cut along its first dimension into at most ``len(devices)`` chunks
        of near-equal size (``torch.tensor_split``; a batch smaller than the number of devices
        leaves the last devices idle). Each chunk is moved to its replica's device. The caller's
        grad / inference mode holds in the worker threads too.

        Args:
            function: what to run per chunk; it gets the replica, the chunk on its device and
                the replica's index.
            batch: (B, ...) tensor on any device.

        Returns:
            One result per non-empty chunk, in batch order (concatenating them along dim 0
            gives the output for the whole batch).

        Raises:
            Whatever ``function`` raises (the first failing chunk's exception, after every chunk
            has finished).
        """
        if batch.ndim == 0 or batch.shape[0] == 0:
            raise ValueError("cannot split an empty batch over devices")
        chunks = [c for c in torch.tensor_split(batch, len(self.devices)) if c.shape[0] > 0]
        if len(chunks) == 1:
            return [function(self.modules[0], chunks[0].to(self.devices[0]), 0)]
        grad_enabled = torch.is_grad_enabled()
        inference = torch.is_inference_mode_enabled()

        def run(index: int) -> ResultT:
            device = self.devices[index]
            on_device = torch.cuda.device(device) if device.type == "cuda" else nullcontext()
            # Grad and inference mode are thread-local: carry the caller's into the worker.
            with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled), on_device:
                return function(self.modules[index], chunks[index].to(device), index)

        with ThreadPoolExecutor(max_workers=len(chunks), thread_name_prefix="alframe-dev") as pool:
            futures = [pool.submit(run, i) for i in range(len(chunks))]
        return [future.result() for future in futures]

    def gather(
        self,
        function: Callable[[ModuleT, torch.Tensor, int], torch.Tensor],
        batch: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`map` a tensor-valued function and concatenate the results on the CPU.

        Returns:
            The (B, ...) output for the whole batch, on the CPU.
        """
        parts = self.map(function, batch)
        return torch.cat([part.detach().cpu() for part in parts], dim=0)
