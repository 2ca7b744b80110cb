"""Label-free checkpoint ranking: CTE (consistency under perturbation) and baselines.

Typical use::

    from alframe.ranking import create_ranker, images_from_folder, load_predictor, rank_models

    models = [load_predictor(p) for p in checkpoint_paths]
    images = images_from_folder("target/images", recipe=models[0].recipe)
    report = rank_models(models, images, [create_ranker("consensus"), create_ranker("entropy")])
    print(report.format())          # sorted by the first ranker; degenerate models flagged, last

Scores are pure NumPy (:mod:`alframe.ranking.scores`); torch only runs the models. See
docs/methods/cte.md for the method and :mod:`alframe.ranking.rankers` for the plugin contract.
"""

from __future__ import annotations

from alframe.ranking.guard import DegenerateGuard, PredictionProfile, ProfileAccumulator
from alframe.ranking.images import TargetImages, images_from_folder
from alframe.ranking.perturbations import (
    FEATURE_PERTURBATIONS,
    INPUT_PERTURBATIONS,
    PERTURBATIONS,
    SCALES,
    ChannelDropout,
    InputPerturbation,
    channel_dropout,
    make_perturbation,
    robust_range,
    robust_spread,
)
from alframe.ranking.pipeline import RankingReport, rank_models, validate, write_report
from alframe.ranking.predictors import (
    Predictor,
    display_names,
    load_predictor,
    logits_to_probabilities,
)
from alframe.ranking.rankers import (
    DEFAULT_RANKER,
    RANKERS,
    ConsensusRanker,
    CTERanker,
    EntropyRanker,
    InformationMaximisationRanker,
    Ranker,
    RankerResult,
    SourceDiceRanker,
    TransferScoreRanker,
    consensus_places,
    create_ranker,
    normalised_ranks,
)
from alframe.ranking.validation import Correlation, correlate, plot_scores, true_dice

__all__ = [
    "DEFAULT_RANKER",
    "FEATURE_PERTURBATIONS",
    "INPUT_PERTURBATIONS",
    "PERTURBATIONS",
    "RANKERS",
    "SCALES",
    "CTERanker",
    "ChannelDropout",
    "ConsensusRanker",
    "Correlation",
    "DegenerateGuard",
    "EntropyRanker",
    "InformationMaximisationRanker",
    "InputPerturbation",
    "PredictionProfile",
    "Predictor",
    "ProfileAccumulator",
    "Ranker",
    "RankerResult",
    "RankingReport",
    "SourceDiceRanker",
    "TargetImages",
    "TransferScoreRanker",
    "channel_dropout",
    "consensus_places",
    "correlate",
    "create_ranker",
    "display_names",
    "images_from_folder",
    "load_predictor",
    "logits_to_probabilities",
    "make_perturbation",
    "normalised_ranks",
    "plot_scores",
    "rank_models",
    "robust_range",
    "robust_spread",
    "true_dice",
    "validate",
    "write_report",
]
