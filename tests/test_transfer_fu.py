"""FU: triplet loss, gradient-norm ratio on a model with a known answer, conv-pair detection."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from alframe.transfer import batch_all_triplet_loss, find_conv_pair, gradient_ratio


def _naive_triplet(z: torch.Tensor, y: torch.Tensor, margin: float) -> float:
    z = torch.nn.functional.normalize(z, dim=1)
    losses = []
    for a, p, n in itertools.product(range(len(y)), repeat=3):
        if a != p and y[a] == y[p] and y[n] != y[a]:
            value = float(torch.dist(z[a], z[p]) - torch.dist(z[a], z[n]) + margin)
            if value > 0:
                losses.append(value)
    return sum(losses) / len(losses) if losses else 0.0


def test_batch_all_triplet_loss_matches_naive_loops() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(9, 4, generator=generator)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    for margin in (0.05, 1.0):
        assert float(batch_all_triplet_loss(z, y, margin)) == pytest.approx(
            _naive_triplet(z, y, margin), rel=1e-5
        )


class _TwoConv(nn.Module):
    """conv → conv → global average pool, linear: scaling W1 or W2 leaves the loss unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.conv_b = nn.Conv2d(4, 6, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)).mean(dim=(2, 3))


def _ratio(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    batches = [(images[i : i + 6], labels[i : i + 6]) for i in range(0, len(labels), 6)]
    return gradient_ratio(model, batches, lambda x, t: (model(x), t)).ratio


def test_fu_recovers_the_analytic_effect_of_scaled_layers() -> None:
    # The normalised embedding is invariant to W1 → t W1 and W2 → s W2, so ∂L/∂W1 scales by 1/t
    # and ∂L/∂W2 by 1/s: the ratio ‖∇W2‖/‖∇W1‖ must scale by exactly t / s.
    torch.manual_seed(0)
    base = _TwoConv()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(24, 1, 8, 8, generator=generator)
    labels = torch.arange(24) % 3
    reference = _ratio(base, images, labels)
    for s, t in [(2.0, 1.0), (1.0, 3.0), (0.5, 4.0)]:
        scaled = _TwoConv()
        with torch.no_grad():
            scaled.conv_a.weight.copy_(base.conv_a.weight * t)
            scaled.conv_b.weight.copy_(base.conv_b.weight * s)
        assert _ratio(scaled, images, labels) == pytest.approx(reference * t / s, rel=1e-4)
    # Gradients are cleared and the parameters' flags restored.
    assert all(p.grad is None for p in base.parameters())


def test_fu_layer_override_by_name() -> None:
    model = _TwoConv()
    images = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(12) % 2
    result = gradient_ratio(
        model, [(images, labels)], lambda x, t: (model(x), t), conv_layers=("conv_b", "conv_a")
    )
    auto = gradient_ratio(model, [(images, labels)], lambda x, t: (model(x), t))
    assert (auto.first, auto.second) == ("conv_a", "conv_b")
    assert result.ratio == pytest.approx(1.0 / auto.ratio, rel=1e-5)


class _Reordered(nn.Module):
    """Registers the second conv first: detection must follow execution, not registration."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 4, 1)
        self.early = nn.Conv2d(1, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


def test_conv_pair_follows_execution_order() -> None:
    assert find_conv_pair(_Reordered(), torch.zeros(1, 1, 4, 4)) == ("early", "late")


def test_conv_pair_detection_on_timm_torchvision_and_smp_encoders() -> None:
    import timm
    import torchvision

    from alframe.embed.extract import build_smp_encoder

    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert find_conv_pair(resnet, torch.zeros(1, 3, 32, 32)) == ("conv1", "layer1.0.conv1")
    mobilenet = torchvision.models.mobilenet_v2(weights=None).features
    assert find_conv_pair(mobilenet, torch.zeros(1, 3, 32, 32)) == ("0.0", "1.conv.0.0")
    encoder = build_smp_encoder("resnet18", in_channels=1)
    assert find_conv_pair(encoder, torch.zeros(1, 1, 32, 32)) == ("conv1", "layer1.0.conv1")
