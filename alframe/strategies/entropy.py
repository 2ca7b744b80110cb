"""Entropy sampling: the images whose pixels have the highest predictive entropy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from alframe.scoring.uncertainty import UncertaintyMeasure
from alframe.strategies.base import STRATEGIES
from alframe.strategies.uncertainty_base import UncertaintyStrategy


@STRATEGIES.register("entropy")
@dataclass(frozen=True)
class EntropyStrategy(UncertaintyStrategy):
    """Per-pixel Shannon entropy, aggregated per image (see :class:`UncertaintyStrategy`)."""

    name: ClassVar[str] = "entropy"
    measure: ClassVar[UncertaintyMeasure] = "entropy"
