"""Source-model selection: which pretrained encoder to fine-tune, without fine-tuning.

LP·FU (Juodelyte et al., arXiv 2412.20172; docs/methods/lpfu.md) and the classic
transferability scores LogME, LEEP, N-LEEP, SFDA, PARC and NCTI, as registered plugins
(:data:`TRANSFER_SCORES`). The scores are NumPy / scikit-learn functions of target features
(:mod:`alframe.transfer.scores`); torch is used only to extract features and FU's gradients.

Typical use::

    from alframe.transfer import load_target, rank_sources
    target = load_target("cxr_tb.csv", image_size=96)
    ranking = rank_sources(["timm:resnet18=r18.pth", "runs/a/best.ckpt"], target, "lpfu,logme")
    print(ranking.as_rows())
"""

from __future__ import annotations

from alframe.transfer.base import (
    REQUIREMENTS,
    TRANSFER_SCORES,
    ScoreResult,
    TransferInputs,
    TransferScore,
    parse_score_names,
)
from alframe.transfer.scores import (
    leep_from_probabilities,
    leep_score,
    logme_score,
    lp_score,
    lpfu_combine,
    minmax_normalize,
    ncti_combine,
    ncti_terms,
    nleep_score,
    parc_score,
    sfda_score,
    weighted_tau,
)

__all__ = [
    "REQUIREMENTS",
    "TRANSFER_SCORES",
    "CandidateInputs",
    "GradientRatio",
    "Ranking",
    "ScoreResult",
    "SourceModel",
    "SourceSpec",
    "TargetSet",
    "TransferInputs",
    "TransferScore",
    "batch_all_triplet_loss",
    "compute_inputs",
    "find_conv_pair",
    "gradient_ratio",
    "leep_from_probabilities",
    "leep_score",
    "load_source",
    "load_target",
    "logme_score",
    "lp_score",
    "lpfu_combine",
    "minmax_normalize",
    "ncti_combine",
    "ncti_terms",
    "nleep_score",
    "parc_score",
    "parse_score_names",
    "parse_spec",
    "rank_sources",
    "score_pool",
    "sfda_score",
    "weighted_tau",
]

_TORCH_EXPORTS = {
    "GradientRatio": "gradients",
    "batch_all_triplet_loss": "gradients",
    "find_conv_pair": "gradients",
    "gradient_ratio": "gradients",
    "SourceModel": "sources",
    "SourceSpec": "sources",
    "parse_spec": "sources",
    "load_source": "sources",
    "TargetSet": "targets",
    "load_target": "targets",
    "CandidateInputs": "pipeline",
    "Ranking": "pipeline",
    "compute_inputs": "pipeline",
    "rank_sources": "pipeline",
    "score_pool": "pipeline",
}


def __getattr__(name: str) -> object:
    # torch-backed parts load on first use: the scores stay importable without torch start-up.
    module = _TORCH_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alframe.transfer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"alframe.transfer.{module}"), name)
