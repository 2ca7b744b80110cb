"""Rankers: label-free scores of a candidate model on target images (CTE and baselines).

Contract (DESIGN.md): ``ranker.score(predictor, images) -> RankerResult`` with per-image scores
(NaN for skipped images) and a dataset score; ``higher_is_better`` says which way is better, and
``requires`` says what the ranker needs besides the model's outputs:

- ``"features"`` — grey-box access (feature perturbations, decoder features);
- ``"source_labels"`` — labelled source images (source-validation Dice).

Rankers are plugins: register a class with ``@RANKERS.register("name")`` (or the
``alframe.rankers`` entry-point group) and every consumer (the CLI, the benchmark, the contract
test) picks it up.

Inference budget: CTE runs **exactly two** forward passes per image (clean + perturbed) and the
output-only baselines one, streamed batch by batch; nothing is kept but per-image scores.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np

from alframe.errors import ConfigError, ModelError
from alframe.ranking import scores
from alframe.ranking.images import TargetImages
from alframe.ranking.perturbations import (
    ChannelDropout,
    InputPerturbation,
    channel_dropout,
    make_perturbation,
)
from alframe.ranking.predictors import Predictor
from alframe.registry import Registry

__all__ = [
    "DEFAULT_RANKER",
    "RANKERS",
    "CTERanker",
    "ConsensusRanker",
    "EntropyRanker",
    "InformationMaximisationRanker",
    "Ranker",
    "RankerResult",
    "SourceDiceRanker",
    "TransferScoreRanker",
    "consensus_places",
    "create_ranker",
    "normalised_ranks",
]

RANKERS: Registry[type[Ranker]] = Registry("rankers")
"""Every ranker by name (``alframe rank --method NAME``)."""

ProgressHook = Callable[[int], None]


@dataclass(frozen=True)
class RankerResult:
    """What a ranker says about one model.

    Attributes:
        ranker: the ranker's name.
        model: the predictor's name.
        per_image: (N,) float64 scores in image order; NaN where an image was skipped.
        dataset_score: the model's score (mean of the scored images unless the ranker says
            otherwise); NaN when no image could be scored.
        higher_is_better: orientation of the scores.
        forward_passes: inference passes run per image.
        seconds: wall time of the scoring (inference included).
        info: ranker-specific extras (e.g. the perturbation).
    """

    ranker: str
    model: str
    per_image: np.ndarray
    dataset_score: float
    higher_is_better: bool
    forward_passes: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_scored(self) -> int:
        """Images with a finite score."""
        return int(np.isfinite(self.per_image).sum())

    @property
    def goodness(self) -> float:
        """The dataset score oriented so that higher is better (negated when lower is better)."""
        return self.dataset_score if self.higher_is_better else -self.dataset_score


class Ranker(ABC):
    """Base class of every ranker (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    forward_passes: ClassVar[int] = 1
    zoo_level: ClassVar[bool] = False
    """True for rankers that score a model relative to the other candidates (rank aggregates):
    :func:`~alframe.ranking.rank_models` scores them from their components' results."""

    @property
    def requires(self) -> frozenset[str]:
        """What the ranker needs besides outputs: subset of {"features", "source_labels"}."""
        return frozenset()

    def supports(self, predictor: Predictor) -> bool:
        """Whether ``predictor`` gives what this ranker needs (grey-box access)."""
        return "features" not in self.requires or predictor.grey_box

    def describe(self) -> str:
        """A short label for tables (name plus settings)."""
        return self.name

    def score(
        self,
        predictor: Predictor,
        images: TargetImages,
        batch_size: int = 16,
        progress: ProgressHook | None = None,
    ) -> RankerResult:
        """Score one model on the target images.

        Args:
            predictor: the candidate.
            images: the target images (N).
            batch_size: images per forward pass.
            progress: called with the number of images finished after each batch.

        Returns:
            Per-image scores (N,) and the dataset score.

        Raises:
            ModelError: the ranker needs grey-box access and ``predictor`` is black-box.
        """
        if not self.supports(predictor):
            raise ModelError(
                f"ranker {self.name} needs grey-box access (an alframe checkpoint); "
                f"{predictor.name} is a black-box model — use an input-perturbation ranker"
            )
        started = time.perf_counter()
        per_image = np.full(len(images), math.nan, dtype=np.float64)
        state = self._start(predictor)
        for positions, batch in images.batches(batch_size):
            per_image[positions] = self._score_batch(predictor, batch, state)
            if progress is not None:
                progress(batch.shape[0])
        dataset = self._dataset_score(per_image, state)
        return RankerResult(
            ranker=self.describe(),
            model=predictor.name,
            per_image=per_image,
            dataset_score=dataset,
            higher_is_better=self.higher_is_better,
            forward_passes=self.forward_passes,
            seconds=time.perf_counter() - started,
            info=self._info(),
        )

    def _start(self, predictor: Predictor) -> dict[str, Any]:
        """Per-model state (generators, accumulators) created before the first batch."""
        return {}

    @abstractmethod
    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:
        """(b,) scores of a (b, C, H, W) batch."""

    def _dataset_score(self, per_image: np.ndarray, state: dict[str, Any]) -> float:
        finite = per_image[np.isfinite(per_image)]
        return float(finite.mean()) if finite.size else math.nan

    def _info(self) -> dict[str, Any]:
        return {}


def create_ranker(name: str, **params: Any) -> Ranker:
    """Build a registered ranker by name (unknown names list close matches).

    Raises:
        ConfigError: unknown name or parameter.
    """
    ranker = RANKERS.create(name, **params)
    if not isinstance(ranker, Ranker):
        raise ConfigError(f"ranker {name!r} did not build a Ranker (got {type(ranker).__name__})")
    return ranker


# ------------------------------------------------------------------------------------- CTE


def connected_components(proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Default instance post-processing: 8-connected components of the foreground.

    Args:
        proba: (K, H, W) probabilities; the foreground is ``1 − p(background) > threshold``.
        threshold: foreground threshold.

    Returns:
        (H, W) int64 instance labels (0 = background).
    """
    from skimage.measure import label

    foreground = (1.0 - np.asarray(proba)[0]) > threshold
    return np.asarray(label(foreground, connectivity=2), dtype=np.int64)


class CTERanker(Ranker):
    """Consistency-based transferability estimation: clean vs perturbed prediction.

    Args:
        score: ``"ei"`` (effective invariance), ``"nhd"`` (1 − normalised Hamming distance) or
            ``"ars"`` (instance label maps, 1 − adapted Rand error).
        perturbation: one of :data:`~alframe.ranking.perturbations.PERTURBATIONS`; ``dropout``
            and ``dropout-all`` need grey-box access.
        low: lower strength of an input perturbation (default from the spec).
        high: upper strength of an input perturbation.
        p: channel-dropout proportion.
        scale: ``"relative"`` (default: input-noise strengths are fractions of each image's
            robust spread) or ``"absolute"`` (the spec's raw strengths on normalised input).
        seed: seed of the perturbation generator, created afresh for every model so that all
            models see the same perturbations.
        threshold: foreground threshold t.
        postprocess: ``"ars"`` only — (K, H, W) probabilities → (H, W) instance labels; default
            connected components of the foreground.
    """

    higher_is_better: ClassVar[bool] = True
    forward_passes: ClassVar[int] = 2
    default_score: ClassVar[str] = "ei"

    def __init__(
        self,
        score: str | None = None,
        perturbation: str = "gauss",
        low: float | None = None,
        high: float | None = None,
        p: float | None = None,
        scale: str = "relative",
        seed: int = 42,
        threshold: float = 0.5,
        postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.score_kind = score or self.default_score
        if self.score_kind not in ("ei", "nhd", "ars"):
            raise ConfigError(f"CTE score {self.score_kind!r}: expected ei, nhd or ars")
        self.perturbation = make_perturbation(perturbation, low=low, high=high, p=p, scale=scale)
        self.seed = int(seed)
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"CTE threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        # A partial, not a lambda: rankers travel to the processes of a ddp_spawn launch.
        self.postprocess = postprocess or partial(connected_components, threshold=self.threshold)

    @property
    def requires(self) -> frozenset[str]:
        return (
            frozenset({"features"})
            if isinstance(self.perturbation, ChannelDropout)
            else frozenset()
        )

    def describe(self) -> str:
        perturbation = self.perturbation
        absolute = isinstance(perturbation, InputPerturbation) and perturbation.scale == "absolute"
        return f"cte-{self.score_kind}[{perturbation.kind}{'-abs' if absolute else ''}]"

    def _start(self, predictor: Predictor) -> dict[str, Any]:
        return {"rng": np.random.default_rng(self.seed), "weights": []}

    def _dataset_score(self, per_image: np.ndarray, state: dict[str, Any]) -> float:
        # One rule for every model (scores module docstring): the |M|-weighted mean over all
        # images, so an image both predictions leave empty weighs 0 for every model alike.
        weights = np.concatenate(state["weights"]) if state["weights"] else np.zeros(0)
        return scores.weighted_mean(per_image, weights)

    def _perturbed(
        self, predictor: Predictor, batch: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        if isinstance(self.perturbation, InputPerturbation):
            return predictor.predict_proba(self.perturbation.apply(batch, rng))
        with channel_dropout(predictor.modules, self.perturbation, rng):
            return predictor.predict_proba(batch)

    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:
        clean = predictor.predict_proba(batch)
        perturbed = self._perturbed(predictor, batch, state["rng"])
        out = np.empty(batch.shape[0], dtype=np.float64)
        weights = np.empty(batch.shape[0], dtype=np.float64)
        for i in range(batch.shape[0]):
            if self.score_kind == "ars":
                labels_clean = self.postprocess(clean[i])
                labels_pert = self.postprocess(perturbed[i])
                out[i] = scores.adapted_rand_score(labels_clean, labels_pert)
                weights[i] = scores.ars_mask_size(labels_clean, labels_pert)
                continue
            if self.score_kind == "ei":
                out[i] = scores.effective_invariance(clean[i], perturbed[i], self.threshold)
            else:
                out[i] = scores.nhd_score(clean[i], perturbed[i], self.threshold)
            weights[i] = scores.evaluation_mask_size(clean[i], perturbed[i], self.threshold)
        state["weights"].append(weights)
        return out

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"perturbation": self.perturbation.kind, "seed": self.seed}
        if isinstance(self.perturbation, InputPerturbation):
            info.update(
                low=self.perturbation.low,
                high=self.perturbation.high,
                scale=self.perturbation.scale,
            )
        else:
            info.update(p=self.perturbation.p, where=self.perturbation.where)
        return info


@RANKERS.register("cte-ei")
class CTEEffectiveInvariance(CTERanker):
    """CTE with effective invariance (the authors' best semantic score)."""

    name = "cte-ei"
    default_score = "ei"


@RANKERS.register("cte-nhd")
class CTEHamming(CTERanker):
    """CTE with 1 − normalised Hamming distance (= IoU of clean and perturbed masks)."""

    name = "cte-nhd"
    default_score = "nhd"


@RANKERS.register("cte-ars")
class CTEAdaptedRand(CTERanker):
    """CTE for instance segmentation: 1 − adapted Rand error of the two label maps."""

    name = "cte-ars"
    default_score = "ars"


# ------------------------------------------------------------------------- baselines


@RANKERS.register("entropy")
class EntropyRanker(Ranker):
    """Mean pixel entropy of the predictions (nats); lower is better."""

    name = "entropy"
    higher_is_better = False

    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:
        proba = predictor.predict_proba(batch)
        return np.array([scores.mean_entropy(p) for p in proba])


@RANKERS.register("im")
class InformationMaximisationRanker(Ranker):
    """IM = H(mean p) − mean H(p); higher is better.

    Per image the mean runs over its pixels; the dataset score uses the marginal over all pixels
    of all images (so a model predicting one class everywhere scores low even if every image
    alone looks confident).
    """

    name = "im"
    higher_is_better = True

    def _start(self, predictor: Predictor) -> dict[str, Any]:
        return {"marginal": None, "pixels": 0, "entropy_sum": 0.0}

    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:
        proba = predictor.predict_proba(batch).astype(np.float64)
        flat = proba.transpose(1, 0, 2, 3).reshape(proba.shape[1], -1)
        total = flat.sum(axis=1)
        state["marginal"] = total if state["marginal"] is None else state["marginal"] + total
        state["pixels"] += flat.shape[1]
        p = np.clip(flat, 1e-12, 1.0)
        state["entropy_sum"] += float(-(p * np.log(p)).sum())
        return np.array([scores.information_maximisation(p) for p in proba])

    def _dataset_score(self, per_image: np.ndarray, state: dict[str, Any]) -> float:
        if not state["pixels"]:
            return math.nan
        marginal = np.clip(state["marginal"] / state["pixels"], 1e-12, 1.0)
        return float(-(marginal * np.log(marginal)).sum() - state["entropy_sum"] / state["pixels"])


def classifier_uniformity(weights: np.ndarray | None) -> float:
    """Deviation of the class weight vectors from a uniform (simplex) arrangement.

    U = mean over class pairs i ≠ j of |cos(w_i, w_j) + 1/(K − 1)|: 0 when the K weight vectors
    are spread like a regular simplex. Single-output (sigmoid) heads and missing weights give 0,
    as the spec says.

    Args:
        weights: (K, ...) classifier weights (one row per output channel) or None.
    """
    if weights is None:
        return 0.0
    w = np.asarray(weights, dtype=np.float64).reshape(np.asarray(weights).shape[0], -1)
    k = w.shape[0]
    if k < 2:
        return 0.0
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    unit = w / np.maximum(norms, 1e-12)
    cosine = unit @ unit.T
    off = ~np.eye(k, dtype=bool)
    return float(np.abs(cosine[off] + 1.0 / (k - 1)).mean())


@RANKERS.register("transfer-score")
class TransferScoreRanker(Ranker):
    """Transfer Score (Yang et al., ICLR 2024) adapted to segmentation; higher is better.

    Per image: Hopkins statistic of the decoder features of ``n_pixels`` random pixels + mutual
    information of the pixel predictions / ln K − classifier-weight uniformity of the
    segmentation head (0 for a single sigmoid output). Needs grey-box access.

    Args:
        n_pixels: pixels sampled per image for the Hopkins statistic.
        n_probes: Hopkins probes per image.
        seed: seed of the pixel / probe sampling (fresh per model).
    """

    name = "transfer-score"
    higher_is_better = True

    def __init__(self, n_pixels: int = 256, n_probes: int = 64, seed: int = 0) -> None:
        if n_pixels < 3 or n_probes < 1:
            raise ConfigError("transfer-score: n_pixels must be >= 3 and n_probes >= 1")
        self.n_pixels = int(n_pixels)
        self.n_probes = int(n_probes)
        self.seed = int(seed)

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"features"})

    def _start(self, predictor: Predictor) -> dict[str, Any]:
        from alframe.ranking.predictors import _segmentation_head

        head = _segmentation_head(predictor.module)
        weight = None
        if head is not None:
            convs = [m for m in head.modules() if hasattr(m, "weight") and m.weight is not None]
            if convs:
                weight = convs[-1].weight.detach().cpu().numpy()
        return {
            "rng": np.random.default_rng(self.seed),
            "uniformity": classifier_uniformity(weight),
        }

    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:
        proba, features = predictor.predict_with_features(batch)
        rng: np.random.Generator = state["rng"]
        out = np.empty(batch.shape[0], dtype=np.float64)
        for i in range(batch.shape[0]):
            flat = features[i].reshape(features.shape[1], -1).T  # (H·W, D)
            take = rng.choice(flat.shape[0], size=min(self.n_pixels, flat.shape[0]), replace=False)
            hopkins = scores.hopkins_statistic(flat[take], rng, self.n_probes)
            out[i] = hopkins + scores.mutual_information(proba[i]) - state["uniformity"]
        return out


@RANKERS.register("source-dice")
class SourceDiceRanker(Ranker):
    """Dice on labelled *source* validation images (needs source labels, not target ones).

    The per-image scores are over the source images (not the target images), so ``per_image``
    has one entry per source image.

    Args:
        source: labelled source images; required at scoring time.
    """

    name = "source-dice"
    higher_is_better = True

    def __init__(self, source: TargetImages | None = None) -> None:
        self.source = source

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"source_labels"})

    def score(
        self,
        predictor: Predictor,
        images: TargetImages,
        batch_size: int = 16,
        progress: ProgressHook | None = None,
    ) -> RankerResult:
        if self.source is None or not self.source.has_labels:
            raise ConfigError(
                "source-dice needs labelled source images: pass --source DIR (images/ + masks/)"
            )
        result = super().score(predictor, self.source, batch_size, None)
        if progress is not None:
            progress(len(images))
        return result

    def _start(self, predictor: Predictor) -> dict[str, Any]:
        if self.source is None:  # score() checks this first; _start is not public
            raise ConfigError("source-dice needs labelled source images")
        return {"labels": self.source.label_array(), "position": 0}

    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:
        proba = predictor.predict_proba(batch)
        start = state["position"]
        state["position"] += batch.shape[0]
        labels = state["labels"][start : state["position"]]
        k = proba.shape[1]
        return np.array(
            [
                scores.per_image_dice(p.argmax(axis=0), t, k)
                for p, t in zip(proba, labels, strict=True)
            ]
        )


# ------------------------------------------------------------------------- rank aggregate


def normalised_ranks(goodness: dict[str, float]) -> dict[str, float]:
    """Each model's place among the others, scaled to [0, 1] (1 = best, 0 = worst).

    Ties share their average place; a model without a finite score is placed last (0).

    Args:
        goodness: model → score oriented so that higher is better (NaN allowed).
    """
    from scipy.stats import rankdata

    names = list(goodness)
    if len(names) == 1:
        return {names[0]: 1.0 if math.isfinite(goodness[names[0]]) else 0.0}
    values = np.array([goodness[m] for m in names], dtype=np.float64)
    finite = np.isfinite(values)
    filled = np.where(finite, values, -np.inf)
    places = np.asarray(rankdata(filled), dtype=np.float64)  # 1 = worst
    scaled = (places - 1.0) / (len(names) - 1)
    scaled[~finite] = 0.0
    return dict(zip(names, scaled.tolist(), strict=True))


@RANKERS.register("consensus")
class ConsensusRanker(Ranker):
    """Mean normalised rank of CTE-EI under feature dropout and IM over the candidates.

    Each component ranks the candidate set; a model's consensus score is the mean over the
    components of its place scaled to [0, 1] (1 = first on every component). Rank aggregation
    needs no common scale, so components whose raw scores live on different ranges (an
    invariance in [0, 1], a mutual information in nats) weigh the same. It scores a model only
    relative to the other candidates, so it runs through :func:`~alframe.ranking.rank_models`
    (``alframe rank``), not on one model alone. When some candidate is black-box, the grey-box
    components give way to ``black_box_components`` for the whole set, so every model is ranked
    by the same components.

    Args:
        components: the rankers to aggregate (default: cte-ei with bottleneck channel dropout,
            and im).
        black_box_components: used instead when a candidate is black-box (default: cte-ei with
            relative gauss noise, and im).
        seed: perturbation seed of the default CTE components.
    """

    name = "consensus"
    higher_is_better = True
    zoo_level = True

    def __init__(
        self,
        components: list[Ranker] | None = None,
        black_box_components: list[Ranker] | None = None,
        seed: int = 42,
    ) -> None:
        self.components = components or [
            create_ranker("cte-ei", perturbation="dropout", seed=seed),
            create_ranker("im"),
        ]
        self.black_box_components = black_box_components or [
            create_ranker("cte-ei", perturbation="gauss", seed=seed),
            create_ranker("im"),
        ]
        for ranker in [*self.components, *self.black_box_components]:
            if ranker.zoo_level:
                raise ConfigError("consensus: a component cannot itself be a rank aggregate")
        if not self.components or not self.black_box_components:
            raise ConfigError("consensus needs at least one component ranker")
        self.forward_passes = max(  # type: ignore[misc]
            sum(r.forward_passes for r in self.components),
            sum(r.forward_passes for r in self.black_box_components),
        )

    def describe(self) -> str:
        return "consensus"

    def components_for(self, predictors: list[Predictor]) -> list[Ranker]:
        """The components that can score every candidate (grey-box ones when all allow it)."""
        if all(r.supports(p) for r in self.components for p in predictors):
            return list(self.components)
        if all(r.supports(p) for r in self.black_box_components for p in predictors):
            return list(self.black_box_components)
        raise ModelError(
            "consensus: no set of components can score every candidate; pass rankers that "
            "need only model outputs as black_box_components"
        )

    def score(
        self,
        predictor: Predictor,
        images: TargetImages,
        batch_size: int = 16,
        progress: ProgressHook | None = None,
    ) -> RankerResult:
        raise ConfigError(
            "consensus ranks a set of candidates against each other: use rank_models (or "
            "alframe rank) with all the candidates, not one model at a time"
        )

    def _score_batch(
        self, predictor: Predictor, batch: np.ndarray, state: dict[str, Any]
    ) -> np.ndarray:  # pragma: no cover - score() never reaches it
        raise ConfigError("consensus has no per-batch score")

    def combine(
        self,
        component_results: list[dict[str, RankerResult]],
        n_images: int,
        flagged: set[str] | frozenset[str] = frozenset(),
    ) -> dict[str, RankerResult]:
        """Consensus results from the components' results over the same candidates.

        Args:
            component_results: one ``model → result`` mapping per component.
            n_images: number of target images (the per-image array is NaN: the consensus is a
                property of the candidate set, not of single images).
            flagged: models the degenerate-model guard flagged; they are placed among
                themselves, so they cannot move the unflagged models' places.

        Returns:
            model → result with the consensus score and each component's place in ``info``.
        """
        models = list(component_results[0]) if component_results else []
        goodness = [{m: by[m].goodness for m in models} for by in component_results]
        places = [consensus_places(g, flagged) for g in goodness]
        out: dict[str, RankerResult] = {}
        for model in models:
            parts = {
                by[model].ranker: place[model]
                for by, place in zip(component_results, places, strict=True)
            }
            out[model] = RankerResult(
                ranker=self.describe(),
                model=model,
                per_image=np.full(n_images, math.nan),
                dataset_score=float(np.mean(list(parts.values()))),
                higher_is_better=True,
                forward_passes=sum(by[model].forward_passes for by in component_results),
                seconds=sum(by[model].seconds for by in component_results),
                info={"places": parts},
            )
        return out


def consensus_places(
    goodness: dict[str, float], flagged: set[str] | frozenset[str] = frozenset()
) -> dict[str, float]:
    """:func:`normalised_ranks` among the unflagged models, and separately among the flagged
    ones (which the report ranks last anyway), so a degenerate model never shifts the places of
    the others.

    Args:
        goodness: model → component score oriented so that higher is better.
        flagged: models flagged by the degenerate-model guard.
    """
    kept = {m: v for m, v in goodness.items() if m not in flagged}
    dropped = {m: v for m, v in goodness.items() if m in flagged}
    places = normalised_ranks(kept) if kept else {}
    if dropped:
        places.update(normalised_ranks(dropped))
    return {m: places[m] for m in goodness}


DEFAULT_RANKER = "consensus"
"""The ranker ``alframe rank`` uses when none is named (see docs/benchmarks/ranking_suite.md)."""
