"""Device requests: ``embed.devices`` / ``alframe rank --devices`` spellings → torch devices.

Inference itself runs in Lightning's predict loop (:mod:`alframe.inference`), which
:func:`alframe.inference.hardware_for_devices` sets up from the devices resolved here: one
process per device. (The thread replicas that used to split batches here, in the manner of
``nn.DataParallel``, are retired.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alframe._dist import local_rank, world_size
from alframe.errors import ModelError

__all__ = ["DeviceSpec", "resolve_device", "resolve_devices"]

DeviceSpec = str | int | torch.device | Sequence[str | torch.device] | None
"""A device request: see :func:`resolve_devices`."""


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
    """The devices an inference pass is spread over (one process each).

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
              repeated here; :func:`alframe.inference.hardware_for_devices` accepts repeats
              of the CPU only (several CPU processes), as a GPU takes one process.

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
    # A bare "cuda" means the current device; pin it so that every process names the same one.
    return [
        torch.device("cuda", torch.cuda.current_device())
        if d.type == "cuda" and d.index is None
        else d
        for d in devices
    ]
