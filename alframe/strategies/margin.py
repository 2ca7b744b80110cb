"""Margin sampling: the images whose pixels have the smallest top-1 − top-2 probability margin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from alframe.scoring.uncertainty import UncertaintyMeasure
from alframe.strategies.base import STRATEGIES
from alframe.strategies.uncertainty_base import UncertaintyStrategy


@STRATEGIES.register("margin")
@dataclass(frozen=True)
class MarginStrategy(UncertaintyStrategy):
    """Per-pixel margin uncertainty 1 − (p₁ − p₂), aggregated per image."""

    name: ClassVar[str] = "margin"
    measure: ClassVar[UncertaintyMeasure] = "margin"
