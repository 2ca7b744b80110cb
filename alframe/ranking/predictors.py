"""Candidate models behind one interface: grey-box torch modules and black-box predict functions.

A :class:`Predictor` turns a (B, C, H, W) batch of normalised images into (B, K, H, W) class
probabilities. Grey-box predictors also expose their ``module``, so feature perturbations (channel
dropout hooks) and feature-based baselines (Transfer Score) can reach inside; black-box ones only
give outputs.

Files accepted by :func:`load_predictor`:

- ``.ckpt`` — an alframe checkpoint (:func:`alframe.models.load_task`): grey-box;
- ``.pt`` / ``.pth`` / ``.ts`` / ``.torchscript`` — a TorchScript module taking an image batch and
  returning logits: black-box;
- ``.onnx`` — an ONNX model with the same contract, run with onnxruntime (optional dependency):
  black-box.

Logits with one channel are read as a binary sigmoid output (K = 2), otherwise softmax over K.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from alframe.errors import ModelError

if TYPE_CHECKING:
    from alframe.parallel import DeviceSpec

__all__ = ["Predictor", "display_names", "load_predictor", "logits_to_probabilities"]

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".ckpt",)


def logits_to_probabilities(logits: np.ndarray) -> np.ndarray:
    """(B, 1, H, W) sigmoid logits → (B, 2, H, W); (B, K, H, W) softmax logits → probabilities."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 4:
        raise ModelError(f"a model must return (B, K, H, W) logits, got shape {x.shape}")
    if x.shape[1] == 1:
        from scipy.special import expit

        fg = expit(x)  # no overflow warning for confident (|logit| > 700) pixels
        return np.concatenate([1.0 - fg, fg], axis=1).astype(np.float32)
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Predictor:
    """A candidate model.

    Attributes:
        name: display name (e.g. the checkpoint's file stem).
        function: maps a (B, C, H, W) float32 tensor / array to logits or probabilities.
        outputs: what ``function`` returns: ``"logits"`` or ``"proba"``.
        module: the torch module for grey-box access (None for black-box predictors).
        num_classes: K when known (inferred from the first output otherwise).
        recipe: the resolved recipe stored in an alframe checkpoint (its preprocessing), if any.
        source: where it came from (a path, or a description).
        array_input: ``function`` takes NumPy arrays (ONNX) instead of torch tensors.
        device: torch device the batches are moved to.
    """

    name: str
    function: Callable[[Any], Any]
    outputs: Literal["logits", "proba"] = "logits"
    module: Any = None
    num_classes: int | None = None
    recipe: dict[str, Any] | None = None
    source: str = ""
    array_input: bool = False
    device: str = "cpu"

    @property
    def grey_box(self) -> bool:
        """Whether the module is reachable (feature perturbations and feature baselines)."""
        return self.module is not None

    @property
    def devices(self) -> list[str]:
        """The device inference runs on, as a one-entry list."""
        return [self.device]

    @property
    def modules(self) -> list[Any]:
        """The torch module (for hooks) in a one-entry list; empty for a black-box predictor."""
        return [] if self.module is None else [self.module]

    def place(self, devices: DeviceSpec) -> Predictor:
        """Put a torch model on one device.

        Several devices are a matter for the predict loop: pass them to
        :func:`~alframe.ranking.rank_models` (one process per device, whole models each), not
        here. ONNX predictors run on the CPU through onnxruntime and only accept ``"cpu"`` /
        ``"auto"``.

        Args:
            devices: ``"auto"`` (the first GPU, else the CPU) or one device.

        Returns:
            ``self``.

        Raises:
            ModelError: unknown, missing or several devices, or an ONNX model asked onto a GPU.
        """
        from torch import nn

        from alframe.parallel import resolve_devices

        if self.array_input:
            targets = resolve_devices("cpu" if devices in (None, "auto") else devices)
            if any(t.type != "cpu" for t in targets):
                raise ModelError(
                    f"{self.name}: ONNX models run on the CPU through onnxruntime; use device "
                    "'cpu' or export the model to TorchScript (.pt) for GPUs"
                )
            return self
        if not isinstance(self.function, nn.Module):
            raise ModelError(
                f"{self.name}: a plain function cannot be moved between devices; place the "
                "model yourself or wrap it in a torch module"
            )
        targets = resolve_devices(devices)
        if devices in (None, "auto"):
            targets = targets[:1]
        if len(targets) > 1:
            raise ModelError(
                f"{self.name}: one model runs on one device; to use {len(targets)} devices pass "
                "them to rank_models(devices=...) (alframe rank --devices), which scores the "
                "candidates in one process per device"
            )
        self.function.to(targets[0])
        self.device = str(targets[0])
        return self

    def __getstate__(self) -> dict[str, Any]:
        # TorchScript and ONNX models do not pickle; a process that receives one (ddp_spawn)
        # reads it again from its file.
        state = dict(self.__dict__)
        if not self.grey_box and self.source and Path(self.source).is_file():
            state["function"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("function") is None and state.get("source"):
            loaded = load_predictor(state["source"], device="cpu")
            state["function"] = loaded.function
        self.__dict__.update(state)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_module(
        cls, module: Any, name: str = "model", num_classes: int | None = None, **kw: Any
    ) -> Predictor:
        """A grey-box predictor from a torch module returning logits (put in eval mode)."""
        module.eval()
        return cls(name=name, function=module, module=module, num_classes=num_classes, **kw)

    @classmethod
    def from_task(cls, task: Any, name: str = "model", source: str = "") -> Predictor:
        """A grey-box predictor from an alframe :class:`~alframe.models.SegmentationTask`."""
        recipe = getattr(task, "hparams", {}).get("recipe")
        return cls.from_module(
            task,
            name=name,
            num_classes=int(task.num_classes),
            recipe=dict(recipe) if recipe else None,
            source=source,
        )

    @classmethod
    def from_function(
        cls,
        function: Callable[[Any], Any],
        name: str = "model",
        outputs: Literal["logits", "proba"] = "proba",
        num_classes: int | None = None,
    ) -> Predictor:
        """A black-box predictor from a function of a (B, C, H, W) torch tensor."""
        if outputs not in ("logits", "proba"):
            raise ModelError(f"outputs must be 'logits' or 'proba', got {outputs!r}")
        return cls(name=name, function=function, outputs=outputs, num_classes=num_classes)

    # ------------------------------------------------------------------ inference

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """One forward pass.

        Args:
            images: (B, C, H, W) float32 normalised images.

        Returns:
            (B, K, H, W) float32 probabilities (binary models give [1 − p, p]).
        """
        import torch

        batch = np.ascontiguousarray(images, dtype=np.float32)
        with torch.no_grad():
            if self.array_input:
                raw = self.function(batch)
            else:
                raw = self.function(torch.from_numpy(batch).to(self.device))
        if isinstance(raw, torch.Tensor):
            raw = raw.detach().float().cpu().numpy()
        elif isinstance(raw, list | tuple):  # ONNX sessions return a list of outputs
            raw = np.asarray(raw[0])
        out = np.asarray(raw, dtype=np.float32)
        proba = logits_to_probabilities(out) if self.outputs == "logits" else out
        if proba.ndim != 4 or proba.shape[0] != batch.shape[0]:
            raise ModelError(
                f"{self.name}: expected (B, K, H, W) outputs for a batch of {batch.shape[0]}, got "
                f"{proba.shape}"
            )
        if proba.shape[1] == 1:  # a "proba" function giving only the foreground
            proba = np.concatenate([1.0 - proba, proba], axis=1)
        if self.num_classes is None:
            self.num_classes = int(proba.shape[1])
        return proba

    def predict_with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass that also captures the decoder output (the head's input).

        Args:
            images: (B, C, H, W) float32 normalised images.

        Returns:
            ``(proba (B, K, H, W), features (B, D, H, W))``.

        Raises:
            ModelError: black-box predictor, or the module has no ``segmentation_head``.
        """
        head = _segmentation_head(self.module) if self.module is not None else None
        if head is None:
            raise ModelError(
                f"{self.name}: decoder features need a grey-box smp model (an alframe "
                "checkpoint); this ranker cannot score black-box models"
            )
        captured: list[np.ndarray] = []

        def hook(_module: Any, inputs: Any) -> None:
            captured.append(inputs[0].detach().float().cpu().numpy())

        handle = head.register_forward_pre_hook(hook)
        try:
            proba = self.predict_proba(images)
        finally:
            handle.remove()
        features = captured[-1]
        return proba, features


def _segmentation_head(module: Any) -> Any:
    from torch import nn

    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Module) and not hasattr(module, "segmentation_head"):
        module = inner
    head = getattr(module, "segmentation_head", None)
    return head if isinstance(head, nn.Module) else None


def load_predictor(path: str | os.PathLike[str], device: DeviceSpec = "cpu") -> Predictor:
    """Load a candidate model from a file (see the module docstring for the formats).

    Args:
        path: ``.ckpt`` (alframe), TorchScript or ``.onnx`` file.
        device: where alframe and TorchScript models run: one device or ``"auto"`` (the first
            GPU, else the CPU; see :meth:`Predictor.place`). ONNX models always run on the CPU.

    Returns:
        The predictor, named after the file (its stem, with the parent folder for checkpoints
        called ``best`` / ``last``).

    Raises:
        ModelError: missing or unreadable file, unknown suffix, or onnxruntime not installed.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"model file {file} does not exist; check the path")
    name = _display_name(file)
    suffix = file.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        from alframe.models import load_task
        from alframe.parallel import resolve_devices

        resolve_devices(device)  # refuse a bad request before reading the file
        task = load_task(file, map_location="cpu")
        return Predictor.from_task(task, name=name, source=str(file)).place(device)
    if suffix in TORCHSCRIPT_SUFFIXES:
        import warnings

        import torch

        try:
            with warnings.catch_warnings():
                # torch >= 2.9 deprecates TorchScript; it is still the portable black-box format.
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(file), map_location="cpu")
        except Exception as err:  # torch raises RuntimeError / ValueError / pickle errors
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelError(
                f"{file} is not a TorchScript module ({first[:160]}); export the model with "
                "torch.jit.script(model).save(path) or torch.jit.trace, or pass an alframe .ckpt"
            ) from None
        scripted.eval()
        return Predictor(name=name, function=scripted, source=str(file)).place(device)
    if suffix in ONNX_SUFFIXES:
        return _load_onnx(file, name).place(device)
    raise ModelError(
        f"{file}: unknown model file type {suffix!r}; pass an alframe checkpoint (.ckpt), a "
        f"TorchScript file ({', '.join(TORCHSCRIPT_SUFFIXES)}) or an ONNX file (.onnx)"
    )


def _load_onnx(file: Path, name: str) -> Predictor:
    try:
        import onnxruntime  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ModelError(
            f"{file}: ONNX models need the onnxruntime package (pip install onnxruntime); or "
            "export the model to TorchScript (.pt) instead"
        ) from None
    try:
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelError(f"{file} is not a readable ONNX model ({err})") from None
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> Any:
        return session.run(None, {input_name: batch})

    return Predictor(name=name, function=run, source=str(file), array_input=True)


def display_names(paths: list[str | os.PathLike[str]]) -> list[str]:
    """Short names for model files that stay unique: the files' display names or, when two
    clash, every name with as many parent folders as it takes to tell the files apart
    (``run_a/epoch_001`` and ``run_b/epoch_001`` when two adaptation runs are ranked together).

    Args:
        paths: the model files, in order.

    Returns:
        One name per path (identical paths keep identical names).
    """
    files = [Path(p).expanduser() for p in paths]
    names = [_display_name(f) for f in files]
    # On a clash every name gets the same number of parent folders, so the table reads evenly.
    for depth in range(1, 8):
        if len(set(names)) == len(names):
            break
        names = [
            "/".join([*(p.name for p in f.parents[:depth][::-1] if p.name), f.stem]) for f in files
        ]
    return names


def _display_name(file: Path) -> str:
    if file.stem in ("best", "last") and file.parent.name:
        parent = file.parent
        if parent.name == "checkpoints" and parent.parent.name:
            parent = parent.parent
        return f"{parent.name}/{file.stem}"
    return file.stem
