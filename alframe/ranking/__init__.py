"""Label-free checkpoint ranking: CTE (consistency under perturbation) and baselines.

Typical use::

    from alframe.ranking import create_ranker, images_from_folder, load_predictor, rank_models

    models = [load_predictor(p) for p in checkpoint_paths]
    images = images_from_folder("target/images", recipe=models[0].recipe)
    report = rank_models(models, images, [create_ranker("cte-ei"), create_ranker("entropy")])
    print(report.format())

Scores are pure NumPy (:mod:`alframe.ranking.scores`); torch only runs the models. See
docs methods/cte.md for the method and :mod:`alframe.ranking.rankers` for the plugin contract.
"""

from __future__ import annotations

from alframe.ranking.images import TargetImages, images_from_folder
from alframe.ranking.perturbations import (
    FEATURE_PERTURBATIONS,
    INPUT_PERTURBATIONS,
    PERTURBATIONS,
    ChannelDropout,
    InputPerturbation,
    channel_dropout,
    make_perturbation,
)
from alframe.ranking.pipeline import RankingReport, rank_models, validate, write_report
from alframe.ranking.predictors import Predictor, load_predictor, logits_to_probabilities
from alframe.ranking.rankers import (
    RANKERS,
    CTERanker,
    EntropyRanker,
    InformationMaximisationRanker,
    Ranker,
    RankerResult,
    SourceDiceRanker,
    TransferScoreRanker,
    create_ranker,
)
from alframe.ranking.validation import Correlation, correlate, plot_scores, true_dice

__all__ = [
    "FEATURE_PERTURBATIONS",
    "INPUT_PERTURBATIONS",
    "PERTURBATIONS",
    "RANKERS",
    "CTERanker",
    "ChannelDropout",
    "Correlation",
    "EntropyRanker",
    "InformationMaximisationRanker",
    "InputPerturbation",
    "Predictor",
    "Ranker",
    "RankerResult",
    "RankingReport",
    "SourceDiceRanker",
    "TargetImages",
    "TransferScoreRanker",
    "channel_dropout",
    "correlate",
    "create_ranker",
    "images_from_folder",
    "load_predictor",
    "logits_to_probabilities",
    "make_perturbation",
    "plot_scores",
    "rank_models",
    "true_dice",
    "validate",
    "write_report",
]
