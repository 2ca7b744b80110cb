"""Recipe-level embedding: build the encoder of ``recipe.embed``, embed the pool or the source
set with eval transforms, and cache the result keyed by the encoder's weights hash."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alframe._dist import is_global_zero
from alframe.config.loading import expand_path
from alframe.config.schema import Recipe
from alframe.embed.cache import (
    EmbeddingCache,
    EmbeddingKey,
    MemoryMap,
    preprocessing_signature,
    wants_memory_map,
)
from alframe.embed.extract import (
    EMBEDDING_VERSION,
    Embedder,
    encoder_ensemble,
    encoder_from_mae,
    encoder_from_segmentation,
    encoder_from_timm,
    extract_embeddings_and_ids,
)
from alframe.errors import ConfigError, ModelError, StateError
from alframe.parallel import DeviceSpec

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingResult:
    """Embeddings of one set of items.

    Attributes:
        ids: item ids, row order.
        embeddings: (N, D) float32, unit rows: in RAM, or an
            :class:`alframe._rows.OnDiskRows` store read in row chunks when ``memory_map``
            asked for one (see :func:`embed_samples`).
        weights_hash: sha256 of the encoder's state dict.
        cache_path: the cache entry's array file.
        from_cache: whether the array was read from the cache.
    """

    ids: list[str]
    # Typed as an array: an OnDiskRows store reads like a float32 one (slices, gathers, ``@``).
    embeddings: np.ndarray
    weights_hash: str
    cache_path: Path
    from_cache: bool


def mae_checkpoint_path(recipe: Recipe) -> Path:
    """``embed.weights`` when set, else ``<run_dir>/mae/mae.ckpt``."""
    if recipe.embed.weights:
        return expand_path(recipe.embed.weights)
    return Path(recipe.run_dir) / "mae" / "mae.ckpt"


def ensure_mae(recipe: Recipe, progress: bool = True) -> Any:
    """Train the recipe's MAE when it is used and not there yet; no-op otherwise.

    Only the default location (``<run_dir>/mae/mae.ckpt``) is filled: a missing file named by
    ``embed.weights`` stays an error of :func:`build_embedder`. Without ``data.source`` the MAE
    is trained on the pool's own images (a single-site pool).

    Args:
        recipe: the validated recipe.
        progress: print what is trained and, when done, how long it took.

    Returns:
        The :class:`~alframe.embed.mae.MAETrainResult`, or None when nothing was trained.
    """
    if recipe.embed.backbone != "mae" or recipe.embed.weights:
        return None
    path = mae_checkpoint_path(recipe)
    if path.exists():
        return None
    import logging

    from alframe.embed.mae import train_mae

    if progress:
        # Lightning sets its loggers to INFO on import ("GPU available", tips): the bar is enough.
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    cfg = recipe.embed.mae
    images = "the source site" if recipe.data.source is not None else "the pool's own images"
    if progress:
        print(
            f"training the embedding MAE ({cfg.encoder}, {cfg.max_epochs} epochs) on {images} "
            f"→ {path}",
            flush=True,
        )
    result = train_mae(recipe)
    if progress:
        print(
            f"MAE trained on {result.n_images} images in {result.wall_time_s:.0f} s "
            f"(final loss {result.final_loss:.4f})",
            flush=True,
        )
    return result


def build_embedder(recipe: Recipe) -> Embedder:
    """The encoder ``recipe.embed`` describes.

    Raises:
        ModelError: the MAE checkpoint / weights file is missing or does not fit, or the encoder
            expects another number of channels than ``data.in_channels``.
        ConfigError: ``backbone: segmentation`` without ``embed.weights``.
    """
    cfg = recipe.embed
    if cfg.backbone == "mae":
        path = mae_checkpoint_path(recipe)
        if not path.exists():
            raise ModelError(
                f"no MAE checkpoint at {path}: run `alframe embed train-mae --recipe R` first "
                "or set embed.weights"
            )
        embedder = encoder_from_mae(path)
        if cfg.ensemble:
            members = [embedder]
            for extra in cfg.ensemble:
                member_path = expand_path(extra)
                if not member_path.exists():
                    raise ModelError(
                        f"embed.ensemble: no MAE checkpoint at {member_path}; train it "
                        "(alframe embed train-mae with another --set seed=N and "
                        "--set output_dir=...) or remove it from the list"
                    )
                members.append(encoder_from_mae(member_path))
            embedder = encoder_ensemble(members)
    elif cfg.ensemble:
        raise ConfigError(
            f"embed.ensemble lists MAE checkpoints but embed.backbone is {cfg.backbone!r}; "
            "use backbone: mae or remove embed.ensemble"
        )
    elif cfg.backbone == "timm":
        weights = expand_path(cfg.weights) if cfg.weights else None
        embedder = encoder_from_timm(cfg.encoder, recipe.data.in_channels, weights, recipe.seed)
    elif cfg.backbone == "segmentation":
        if not cfg.weights:
            raise ConfigError(
                "embed.backbone is 'segmentation' but embed.weights is not set; set it to a "
                "checkpoint written by `alframe train`"
            )
        embedder = encoder_from_segmentation(expand_path(cfg.weights))
    else:  # pragma: no cover - the schema only allows the three kinds
        raise ConfigError(f"embed.backbone = {cfg.backbone!r}: expected mae, timm or segmentation")
    if embedder.in_channels != recipe.data.in_channels:
        raise ModelError(
            f"the {embedder.kind} encoder ({embedder.source or embedder.name}) takes "
            f"{embedder.in_channels}-channel images but data.in_channels is "
            f"{recipe.data.in_channels}; use matching settings"
        )
    return embedder


def cache_dir(recipe: Recipe) -> Path:
    """``embed.cache_dir`` or ``<run_dir>/embeddings``."""
    if recipe.embed.cache_dir:
        return expand_path(recipe.embed.cache_dir)
    return Path(recipe.run_dir) / "embeddings"


def recipe_preprocessing(recipe: Recipe, backbone: str) -> str:
    """The preprocessing signature of a recipe's eval pipeline (part of the cache key)."""
    return preprocessing_signature(
        image_size=recipe.data.image_size,
        in_channels=recipe.data.in_channels,
        normalization=recipe.data.normalization.model_dump(),
        concat_penultimate=recipe.embed.concat_penultimate,
        backbone=backbone,
        eval_augment=[step.model_dump() for step in recipe.augment.eval],
        pooling=EMBEDDING_VERSION,
        # Only a non-default storage dtype joins the key, so float32 caches keep their keys.
        **(
            {"storage": recipe.embed.storage_dtype}
            if recipe.embed.storage_dtype != "float32"
            else {}
        ),
    )


def _make_dataset(recipe: Recipe, samples: Sequence[Any]) -> Any:
    from alframe.data import SegmentationDataset

    return SegmentationDataset(list(samples), recipe.data, list(recipe.augment.eval), train=False)


def _samples_for(recipe: Recipe, which: str) -> list[Any]:
    from alframe.data.catalog import DataCatalog

    if which == "pool":
        ref = recipe.data.train
    elif which == "source":
        if recipe.data.source is None:
            raise ConfigError(
                "data.source is not set, so there are no source images to embed; set "
                "data.source (e.g. {dataset: montgomery}) in the recipe"
            )
        ref = recipe.data.source
    else:
        raise ConfigError(f"which = {which!r}: expected 'pool' or 'source'")
    return list(DataCatalog(recipe).samples(ref))


def source_samples(recipe: Recipe) -> list[Any]:
    """The samples of ``data.source`` in catalog order.

    Raises:
        ConfigError: the recipe has no ``data.source``.
    """
    return _samples_for(recipe, "source")


def embed_samples(
    recipe: Recipe,
    samples: Sequence[Any],
    embedder: Embedder | None = None,
    recompute: bool = False,
    progress: bool = True,
    device: DeviceSpec = None,
    memory_map: MemoryMap = False,
) -> EmbeddingResult:
    """Embed given samples (anything with an ``id``) with the recipe's encoder, through the cache.

    Args:
        recipe: the validated recipe.
        samples: items in row order (``alframe.data.Sample``).
        embedder: the encoder to use (default: :func:`build_embedder`).
        recompute: ignore (and overwrite) an existing cache entry, stale or not.
        progress: show a progress bar.
        device: overrides ``embed.devices`` (see :func:`alframe.inference.hardware_for_devices`).
        memory_map: open the cache entry as an :class:`alframe._rows.OnDiskRows` store instead
            of reading it into RAM: True, False or ``"auto"``
            (:func:`alframe.embed.cache.wants_memory_map`); callers that select pass
            ``recipe.embed.memory_map``. Freshly computed rows are handed over as the store
            once the entry is written (on the process that writes it; the others keep their
            rows in RAM). The values are the same either way.

    Returns:
        An :class:`EmbeddingResult`.

    Raises:
        StateError: a stale cache entry (without ``recompute``), or a dataset whose item order
            differs from ``samples``.
    """
    ids = [str(s.id) for s in samples]
    if not ids:
        raise ConfigError("no samples to embed: the referenced data set / split is empty")
    if len(set(ids)) != len(ids):
        raise StateError("sample ids are not unique; every item needs its own id")
    encoder = embedder if embedder is not None else build_embedder(recipe)
    digest = encoder.weights_hash()
    key = EmbeddingKey.create(digest, ids, recipe_preprocessing(recipe, encoder.kind))
    cache = EmbeddingCache(cache_dir(recipe))
    path = cache.array_path(key)
    if recompute:
        cache.delete(key)
    else:
        cached = cache.get(key, mmap=wants_memory_map(memory_map, path))
        if cached is not None:
            logger.info("embeddings read from %s", path)
            return EmbeddingResult(ids, cached, digest, path, True)
    dataset = _make_dataset(recipe, samples)
    array, seen_ids = extract_embeddings_and_ids(
        encoder,
        dataset,
        batch_size=recipe.embed.batch_size,
        concat_penultimate=recipe.embed.concat_penultimate,
        progress=progress,
        device=recipe.embed.devices if device is None else device,
        num_workers=recipe.train.num_workers,
    )
    if seen_ids is not None and seen_ids != ids:
        raise StateError(
            "the dataset returned items in another order than the samples; embeddings cannot "
            "be matched to ids (this is a bug in the dataset — please report it)"
        )
    info = {
        "backbone": encoder.kind,
        "encoder": encoder.name,
        "source": str(encoder.source) if encoder.source else None,
        "n": len(ids),
    }
    dtype = recipe.embed.storage_dtype
    if dtype != "float32":
        # The rows as the cache will give them back next time: the same picks either way.
        array = array.astype(dtype).astype(np.float32)
    # Under torchrun / SLURM every process has the rows; one of them writes the entry.
    if is_global_zero():
        cache.put(key, ids, array, info, dtype=dtype)
        if wants_memory_map(memory_map, path):
            # Written and checksummed a moment ago: a second checksum pass would find nothing.
            entry = cache.get_entry(key, mmap=True, verify=False)
            if entry is not None:
                del array  # the selection reads the store; the matrix need not stay in RAM
                return EmbeddingResult(ids, entry[0], digest, path, False)
    return EmbeddingResult(ids, array, digest, path, False)


def embed_pool(
    recipe: Recipe,
    which: Literal["pool", "source"] = "pool",
    recompute: bool = False,
    progress: bool = True,
    device: DeviceSpec = None,
    memory_map: MemoryMap = False,
) -> EmbeddingResult:
    """Embed the active-learning pool (``data.train``) or the source set (``data.source``).

    The encoder comes from ``recipe.embed`` (``mae``: ``embed.weights`` or
    ``<run_dir>/mae/mae.ckpt``; ``timm``; ``segmentation``), images go through the eval
    transforms, and results are cached in ``embed.cache_dir`` (default ``<run_dir>/embeddings``)
    keyed by (weights hash, ordered ids, preprocessing).

    Args:
        recipe: the validated recipe.
        which: ``"pool"`` or ``"source"``.
        recompute: ignore (and overwrite) an existing cache entry.
        progress: show a progress bar.
        device: overrides ``embed.devices`` (see :func:`alframe.inference.hardware_for_devices`).
        memory_map: return the entry as an on-disk store (see :func:`embed_samples`).

    Returns:
        An :class:`EmbeddingResult` (ids in catalog order, i.e. sorted).

    Raises:
        ConfigError: ``which="source"`` without ``data.source``; unknown ``which``.
        ModelError: no MAE checkpoint yet (run ``alframe embed train-mae --recipe R`` first or
            set ``embed.weights``), or unusable weights.
        StateError: a stale cache entry (delete it or pass ``recompute=True``).
    """
    samples = _samples_for(recipe, which)
    return embed_samples(
        recipe,
        samples,
        recompute=recompute,
        progress=progress,
        device=device,
        memory_map=memory_map,
    )
