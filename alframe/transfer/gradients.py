"""FU (feature utility / adaptability): gradient-norm ratio under a triplet loss.

Following Juodelyte et al. (arXiv 2412.20172): the candidate runs in eval mode with its head
removed (it outputs the embedding), gradients on; a triplet margin loss over all valid triplets
of each batch is computed on L2-normalised embeddings; per batch the Frobenius norms of the
weight gradients of the first (g1) and second (g2) convolution are recorded; FU = mean(g2) /
mean(g1) over ≈6 batches taken in order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alframe.errors import ConfigError, ModelError

EmbedFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(images (B, C, H, W), targets) → (embeddings (M, D), labels (M,)), differentiable."""


def find_conv_pair(
    model: nn.Module,
    example: torch.Tensor,
    forward: Callable[[torch.Tensor], object] | None = None,
) -> tuple[str, str]:
    """Names of the first two ``Conv2d`` modules in forward execution order.

    Execution order is observed with forward hooks on a dummy forward pass (no gradients, eval
    mode restored afterwards), so it does not depend on how modules are named or registered
    (timm, torchvision and smp encoders all work).

    Args:
        model: the candidate encoder.
        example: a small input batch (B, C, H, W).
        forward: how to run the model (default ``model(example)``).

    Returns:
        ``(first, second)`` qualified module names.

    Raises:
        ModelError: fewer than two convolutions run.
    """
    names = {id(m): n for n, m in model.named_modules()}
    order: list[str] = []
    handles = []

    def hook(module: nn.Module, _inputs: object, _output: object) -> None:
        name = names.get(id(module))
        if name is not None and name not in order:
            order.append(name)

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            (forward or model)(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if len(order) < 2:
        raise ModelError(
            f"{type(model).__name__} runs {len(order)} Conv2d layer(s); FU needs two — name "
            "them explicitly (conv_layers=('first', 'second'))"
        )
    return order[0], order[1]


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        import difflib

        close = difflib.get_close_matches(name, list(modules), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"the model has no module {name!r}{hint}")
    module = modules[name]
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"module {name!r} ({type(module).__name__}) has no weight tensor")
    return module


def batch_all_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.05
) -> torch.Tensor:
    """Triplet margin loss over all valid triplets, averaged over the non-zero ones.

    Embeddings are L2-normalised; d is the Euclidean distance. For every anchor a, positive
    p ≠ a with the anchor's label and negative n with another label, the triplet loss is
    ``max(0, d(a, p) − d(a, n) + margin)``; the result is the mean over triplets whose loss is
    positive (0 when there is none).

    Args:
        embeddings: (M, D).
        labels: (M,) integer labels.
        margin: the triplet margin (0.05 in the paper).

    Returns:
        Scalar loss tensor.
    """
    z = F.normalize(embeddings.float(), dim=1)
    squared = (z[:, None, :] - z[None, :, :]).pow(2).sum(dim=2)
    # clamp: the gradient of sqrt at 0 (a point and itself / duplicates) is infinite.
    dist = squared.clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    valid = positive[:, :, None] & negative[:, None, :]
    losses = F.relu(dist[:, :, None] - dist[:, None, :] + margin) * valid
    active = losses > 0
    count = int(active.sum())
    if count == 0:
        return losses.sum() * 0.0
    return losses.sum() / count


def _first_item(embed: EmbedFn, targets: torch.Tensor) -> Callable[[torch.Tensor], object]:
    def run(x: torch.Tensor) -> object:
        return embed(x, targets[:1])

    return run


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):  # checked by _module; narrows the type
        raise ConfigError(f"{type(module).__name__} has no weight tensor")
    return weight


@dataclass(frozen=True)
class GradientRatio:
    """FU of one candidate.

    Attributes:
        ratio: mean(g2) / mean(g1) (NaN when no batch had an active triplet).
        first: name of the first conv layer.
        second: name of the second conv layer.
        first_norms: g1 per used batch.
        second_norms: g2 per used batch.
    """

    ratio: float
    first: str
    second: str
    first_norms: tuple[float, ...]
    second_norms: tuple[float, ...]


def gradient_ratio(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    embed: EmbedFn,
    conv_layers: tuple[str, str] | None = None,
    margin: float = 0.05,
    device: str | torch.device = "cpu",
) -> GradientRatio:
    """FU = mean ‖∇W2‖_F / mean ‖∇W1‖_F over the batches (model in eval mode).

    Batches without an active triplet (a single class, or every triplet already satisfied)
    contribute no gradient and are skipped.

    Args:
        model: the candidate encoder (its parameters' ``requires_grad`` and training flag are
            restored afterwards; gradients are cleared).
        batches: ``(images (B, C, H, W), targets)`` in order, e.g. the target set split into ≈6
            consecutive batches.
        embed: maps a batch to ``(embeddings (M, D), labels (M,))`` through ``model``.
        conv_layers: module names of the first and second conv; None: detected with
            :func:`find_conv_pair` on the first batch.
        margin: triplet margin.
        device: where to run.

    Returns:
        A :class:`GradientRatio`.
    """
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.to(device).eval()
    g1: list[float] = []
    g2: list[float] = []
    names: tuple[str, str] | None = conv_layers
    try:
        for param in model.parameters():
            param.requires_grad_(True)
        for images, targets in batches:
            images = images.to(device, dtype=torch.float32)
            if names is None:
                names = find_conv_pair(model, images[:1], _first_item(embed, targets))
            first, second = _module(model, names[0]), _module(model, names[1])
            model.zero_grad(set_to_none=True)
            embeddings, labels = embed(images, targets)
            loss = batch_all_triplet_loss(embeddings, labels.to(embeddings.device), margin)
            if not loss.requires_grad or float(loss.detach()) == 0.0:
                continue
            loss.backward()
            w1, w2 = _weight(first).grad, _weight(second).grad
            if w1 is None or w2 is None:
                raise ModelError(
                    f"no gradient reached {names[0]!r} / {names[1]!r}; they must lie on the "
                    "path from the input to the embedding"
                )
            g1.append(float(torch.linalg.vector_norm(w1)))
            g2.append(float(torch.linalg.vector_norm(w2)))
    finally:
        model.zero_grad(set_to_none=True)
        for name, param in model.named_parameters():
            param.requires_grad_(flags.get(name, True))
        model.train(was_training)
    if names is None:
        raise ModelError("FU got no batches; the target set is empty")
    if not g1:
        warnings.warn(
            "FU is NaN: no batch had an active triplet (single-class batches, or every triplet "
            f"already satisfied by the margin {margin}); use more target images per class",
            RuntimeWarning,
            stacklevel=2,
        )
    mean1 = sum(g1) / len(g1) if g1 else float("nan")
    mean2 = sum(g2) / len(g2) if g2 else float("nan")
    ratio = mean2 / mean1 if g1 and mean1 > 0 else float("nan")
    return GradientRatio(ratio, names[0], names[1], tuple(g1), tuple(g2))
