"""Pseudo-labels for unlabelled images: reference-guided label transfer (RPG) and its training.

* :mod:`~alframe.pseudolabel.base`: the :class:`PseudoLabeller` contract (built from reference
  images + masks; returns labels and confidence for new images) and the :data:`PSEUDOLABELLERS`
  registry. ``create("rpg", features=..., num_classes=K)`` builds one.
* :mod:`~alframe.pseudolabel.matching`: class-balanced reference bank and chunked matching.
* :mod:`~alframe.pseudolabel.features`: decoder (forward hook), frozen-encoder and intensity
  feature sources.
* :mod:`~alframe.pseudolabel.rpg`: the RPG pseudo-labeller.
* :mod:`~alframe.pseudolabel.semisup`: semi-supervised Lightning training with RPG targets.
* :mod:`~alframe.pseudolabel.pool`: pseudo-labels of a whole pool (the loop's recipe switch),
  stored apart from human labels with their accuracy against hidden ground truth.

Names are imported lazily so that ``import alframe.pseudolabel`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alframe._lazy import lazy_exports

if TYPE_CHECKING:
    from alframe.pseudolabel.base import (
        PSEUDOLABELLERS,
        PseudoLabeller,
        PseudoLabels,
    )
    from alframe.pseudolabel.features import (
        DecoderFeatures,
        EncoderFeatures,
        FeatureSource,
        IntensityFeatures,
        capture_decoder_features,
    )
    from alframe.pseudolabel.matching import (
        IGNORE_LABEL,
        MatchResult,
        ReferenceBank,
        ReferenceBankBuilder,
        filter_by_similarity,
        match_labels,
    )
    from alframe.pseudolabel.pool import (
        PoolPseudoLabels,
        options_from_config,
        pseudo_label_samples,
        write_pool_pseudolabels,
    )
    from alframe.pseudolabel.rpg import RPGOptions, RPGPseudoLabeller, transfer_labels
    from alframe.pseudolabel.semisup import (
        SemiSupervisedOptions,
        SemiSupervisedResult,
        SemiSupervisedTask,
        fit_semisupervised,
        sigmoid_rampup,
    )

_WHERE = {
    "PSEUDOLABELLERS": "base",
    "PseudoLabeller": "base",
    "PseudoLabels": "base",
    "DecoderFeatures": "features",
    "EncoderFeatures": "features",
    "FeatureSource": "features",
    "IntensityFeatures": "features",
    "capture_decoder_features": "features",
    "IGNORE_LABEL": "matching",
    "MatchResult": "matching",
    "ReferenceBank": "matching",
    "ReferenceBankBuilder": "matching",
    "filter_by_similarity": "matching",
    "match_labels": "matching",
    "PoolPseudoLabels": "pool",
    "options_from_config": "pool",
    "pseudo_label_samples": "pool",
    "write_pool_pseudolabels": "pool",
    "RPGOptions": "rpg",
    "RPGPseudoLabeller": "rpg",
    "transfer_labels": "rpg",
    "SemiSupervisedOptions": "semisup",
    "SemiSupervisedResult": "semisup",
    "SemiSupervisedTask": "semisup",
    "fit_semisupervised": "semisup",
    "sigmoid_rampup": "semisup",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)


def create(name: str, **params: Any) -> PseudoLabeller:
    """Builds the pseudo-labeller registered as ``name`` (e.g. ``"rpg"``) with its parameters.

    Raises:
        ConfigError: unknown name (close matches listed) or invalid parameter.
    """
    from alframe.pseudolabel import rpg  # noqa: F401  (registers the built-in labellers)
    from alframe.pseudolabel.base import PSEUDOLABELLERS

    labeller: PseudoLabeller = PSEUDOLABELLERS.create(name, **params)
    return labeller


def names(pattern: str = "*") -> list[str]:
    """Sorted names of the registered pseudo-labellers matching a shell-style wildcard."""
    from alframe.pseudolabel import rpg  # noqa: F401
    from alframe.pseudolabel.base import PSEUDOLABELLERS

    return PSEUDOLABELLERS.names(pattern)


__all__ = [
    "IGNORE_LABEL",
    "PSEUDOLABELLERS",
    "DecoderFeatures",
    "EncoderFeatures",
    "FeatureSource",
    "IntensityFeatures",
    "MatchResult",
    "PoolPseudoLabels",
    "PseudoLabeller",
    "PseudoLabels",
    "RPGOptions",
    "RPGPseudoLabeller",
    "ReferenceBank",
    "ReferenceBankBuilder",
    "SemiSupervisedOptions",
    "SemiSupervisedResult",
    "SemiSupervisedTask",
    "capture_decoder_features",
    "create",
    "filter_by_similarity",
    "fit_semisupervised",
    "match_labels",
    "names",
    "options_from_config",
    "pseudo_label_samples",
    "sigmoid_rampup",
    "transfer_labels",
    "write_pool_pseudolabels",
]
