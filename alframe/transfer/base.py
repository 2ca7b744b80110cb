"""The transferability-score plugin contract and registry.

A score is a class registered in :data:`TRANSFER_SCORES`. It declares what it needs
(``requires``: ``"features"``, ``"source_logits"``, ``"gradient_ratio"``), computes a
:class:`ScoreResult` for one candidate from :class:`TransferInputs` (NumPy arrays only), and
turns the results of a whole candidate pool into one comparable number per candidate with
:meth:`TransferScore.pool` (the identity for most scores; min-max normalisation for LP·FU and
NCTI, whose terms are only comparable within a pool). Higher is always better.

Adding a score = a class with ``name``, ``requires`` and ``compute`` + one registry line; the
contract test in ``tests/test_transfer_contract.py`` runs every registered score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from alframe.errors import DataError
from alframe.registry import Registry
from alframe.transfer import scores as S

REQUIREMENTS = frozenset({"features", "source_logits", "gradient_ratio"})
"""Everything a score may ask the pipeline to compute for a candidate."""


@dataclass(frozen=True)
class TransferInputs:
    """What the pipeline computed for one candidate on the labelled target set.

    Attributes:
        labels: (N,) target labels.
        features: (N, D) penultimate features (global average pool of the last encoder map).
        source_logits: (N, Z) outputs of the candidate's own source classifier, when it has one.
        gradient_ratio: FU, ‖∇W2‖_F / ‖∇W1‖_F of the second to the first conv layer.
    """

    labels: np.ndarray
    features: np.ndarray | None = None
    source_logits: np.ndarray | None = None
    gradient_ratio: float | None = None


@dataclass(frozen=True)
class ScoreResult:
    """One candidate's score: the value and any named terms the pool combination needs."""

    value: float
    components: dict[str, float] = field(default_factory=dict)


class TransferScore:
    """Base class of transferability scores (higher is better)."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    description: ClassVar[str] = ""

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        """Score one candidate.

        Args:
            inputs: the candidate's target features / logits / gradient ratio and labels.

        Returns:
            The candidate's :class:`ScoreResult`.

        Raises:
            DataError: a required input is missing or malformed.
        """
        raise NotImplementedError

    def pool(self, results: Sequence[ScoreResult]) -> np.ndarray:
        """Comparable scores over a candidate pool (default: the values unchanged).

        Args:
            results: one result per candidate, in pool order.

        Returns:
            (M,) float64 scores.
        """
        return np.asarray([r.value for r in results], dtype=np.float64)

    def _need(self, inputs: TransferInputs, what: str) -> np.ndarray:
        value = getattr(inputs, what)
        if value is None:
            raise DataError(f"score {self.name!r} needs {what}, which was not computed")
        return np.asarray(value)


TRANSFER_SCORES: Registry[type[TransferScore]] = Registry("transfer_scores")
"""Registered transferability scores; third parties add entry points ``alframe.transfer_scores``."""


@TRANSFER_SCORES.register("lp")
class LPScore(TransferScore):
    """LP alone (feature quality): NCA + 5-NN probability of the true class."""

    name = "lp"
    description = "NCA (50 d) + 5-NN probability of the true class"

    def __init__(
        self, leave_one_out: bool = False, n_components: int = 50, n_neighbors: int = 5
    ) -> None:
        self.leave_one_out = leave_one_out
        self.n_components = n_components
        self.n_neighbors = n_neighbors

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        value = S.lp_score(
            self._need(inputs, "features"),
            inputs.labels,
            n_components=self.n_components,
            n_neighbors=self.n_neighbors,
            leave_one_out=self.leave_one_out,
        )
        return ScoreResult(value, {"lp": value})


@TRANSFER_SCORES.register("fu")
class FUScore(TransferScore):
    """FU alone (adaptability): gradient-norm ratio of the second to the first conv layer."""

    name = "fu"
    requires = frozenset({"gradient_ratio"})
    description = "‖∇W2‖/‖∇W1‖ under a triplet loss on the target labels"

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        if inputs.gradient_ratio is None:
            raise DataError("score 'fu' needs gradient_ratio, which was not computed")
        value = float(inputs.gradient_ratio)
        return ScoreResult(value, {"fu": value})


@TRANSFER_SCORES.register("lpfu")
class LPFUScore(TransferScore):
    """LP·FU (Juodelyte et al.): min-max normalised LP times min-max normalised FU.

    ``natural_source=True`` selects ``(1 − LP̃)(1 − FŨ)``, the paper's variant for
    natural-image sources; it is never chosen automatically.
    """

    name = "lpfu"
    requires = frozenset({"features", "gradient_ratio"})
    description = "LP̃ · FŨ over the pool (natural-source variant (1−LP̃)(1−FŨ) on request)"

    def __init__(self, natural_source: bool = False, leave_one_out: bool = False) -> None:
        self.natural_source = natural_source
        self.leave_one_out = leave_one_out

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        lp = LPScore(leave_one_out=self.leave_one_out).compute(inputs).value
        fu = FUScore().compute(inputs).value
        return ScoreResult(lp * fu, {"lp": lp, "fu": fu})

    def pool(self, results: Sequence[ScoreResult]) -> np.ndarray:
        return S.lpfu_combine(
            [r.components["lp"] for r in results],
            [r.components["fu"] for r in results],
            natural_source=self.natural_source,
        )


@TRANSFER_SCORES.register("logme")
class LogMEScore(TransferScore):
    """LogME (You et al., 2021)."""

    name = "logme"
    description = "Bayesian linear-model evidence per sample"

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        return ScoreResult(S.logme_score(self._need(inputs, "features"), inputs.labels))


@TRANSFER_SCORES.register("leep")
class LEEPScore(TransferScore):
    """LEEP (Nguyen et al., 2020); needs the candidate's own source classifier."""

    name = "leep"
    requires = frozenset({"source_logits"})
    description = "log expected empirical prediction through the source head"

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        return ScoreResult(S.leep_score(self._need(inputs, "source_logits"), inputs.labels))


@TRANSFER_SCORES.register("nleep")
class NLEEPScore(TransferScore):
    """N-LEEP (Li et al., 2021): LEEP on Gaussian-mixture posteriors, with the logarithm."""

    name = "nleep"
    description = "LEEP on a 5·C-component GMM of the PCA(80 %) features"

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = random_state

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        return ScoreResult(
            S.nleep_score(
                self._need(inputs, "features"), inputs.labels, random_state=self.random_state
            )
        )


@TRANSFER_SCORES.register("sfda")
class SFDAScore(TransferScore):
    """SFDA (Shao et al., 2022)."""

    name = "sfda"
    description = "self-challenging regularised Fisher discriminant"

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        return ScoreResult(S.sfda_score(self._need(inputs, "features"), inputs.labels))


@TRANSFER_SCORES.register("parc")
class PARCScore(TransferScore):
    """PARC (Bolya et al., 2021)."""

    name = "parc"
    description = "Spearman correlation of feature and label dissimilarity matrices"

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        return ScoreResult(S.parc_score(self._need(inputs, "features"), inputs.labels))


@TRANSFER_SCORES.register("ncti")
class NCTIScore(TransferScore):
    """NCTI (Wang et al., 2023): sum of three pool-normalised neural-collapse terms."""

    name = "ncti"
    description = "variability collapse + simplex ETF + nearest-centre classifier"

    def compute(self, inputs: TransferInputs) -> ScoreResult:
        terms = S.ncti_terms(self._need(inputs, "features"), inputs.labels)
        return ScoreResult(float(sum(terms.values())), terms)

    def pool(self, results: Sequence[ScoreResult]) -> np.ndarray:
        return S.ncti_combine([r.components for r in results])


def parse_score_names(text: str | Sequence[str]) -> list[str]:
    """``"lpfu,logme"`` / ``"all"`` / a list of names → registered names (validated).

    Raises:
        ConfigError: an unknown name (the message lists close matches).
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip().lower() for item in items if item.strip()]
    if not names or names == ["all"]:
        # LP·FU first: the first score orders the ranking.
        every = TRANSFER_SCORES.names()
        return sorted(every, key=lambda n: (n != "lpfu", n))
    for name in names:
        TRANSFER_SCORES.get(name)
    return list(dict.fromkeys(names))
