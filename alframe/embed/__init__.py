"""Embeddings: conv-MAE pre-training on source images, extraction, and an on-disk cache.

Names are imported lazily (PEP 562) so that ``import alframe.embed`` stays cheap: the cache
needs only NumPy, while the MAE pulls in Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alframe._lazy import lazy_exports

if TYPE_CHECKING:
    from alframe.embed.cache import (
        EmbeddingCache,
        EmbeddingKey,
        ids_hash,
        preprocessing_signature,
    )
    from alframe.embed.extract import (
        Embedder,
        encoder_from_mae,
        encoder_from_segmentation,
        encoder_from_timm,
        extract_embeddings,
        extract_embeddings_and_ids,
        pool_features,
        weights_hash,
    )
    from alframe.embed.mae import (
        ConvMAE,
        MAETrainResult,
        MaskedAutoencoderTask,
        load_mae,
        masked_mse_loss,
        random_patch_mask,
        train_mae,
    )
    from alframe.embed.pipeline import (
        EmbeddingResult,
        build_embedder,
        embed_pool,
        embed_samples,
    )

_WHERE = {
    "EmbeddingCache": "cache",
    "EmbeddingKey": "cache",
    "ids_hash": "cache",
    "preprocessing_signature": "cache",
    "Embedder": "extract",
    "encoder_from_mae": "extract",
    "encoder_from_segmentation": "extract",
    "encoder_from_timm": "extract",
    "extract_embeddings": "extract",
    "extract_embeddings_and_ids": "extract",
    "pool_features": "extract",
    "weights_hash": "extract",
    "ConvMAE": "mae",
    "MAETrainResult": "mae",
    "MaskedAutoencoderTask": "mae",
    "load_mae": "mae",
    "masked_mse_loss": "mae",
    "random_patch_mask": "mae",
    "train_mae": "mae",
    "EmbeddingResult": "pipeline",
    "build_embedder": "pipeline",
    "embed_pool": "pipeline",
    "embed_samples": "pipeline",
}

__all__ = [
    "ConvMAE",
    "Embedder",
    "EmbeddingCache",
    "EmbeddingKey",
    "EmbeddingResult",
    "MAETrainResult",
    "MaskedAutoencoderTask",
    "build_embedder",
    "embed_pool",
    "embed_samples",
    "encoder_from_mae",
    "encoder_from_segmentation",
    "encoder_from_timm",
    "extract_embeddings",
    "extract_embeddings_and_ids",
    "ids_hash",
    "load_mae",
    "masked_mse_loss",
    "pool_features",
    "preprocessing_signature",
    "random_patch_mask",
    "train_mae",
    "weights_hash",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
