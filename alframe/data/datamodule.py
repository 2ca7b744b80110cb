"""The Lightning DataModule of a recipe: train / validation / evaluation loaders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from alframe.config.schema import Recipe, SubsetRef
from alframe.data.catalog import DataCatalog
from alframe.data.dataset import SegmentationDataset
from alframe.data.samples import Sample
from alframe.data.splits import grouped_holdout
from alframe.errors import DataError


def _seed_worker(worker_id: int) -> None:
    # Each worker holds a copy of the pipeline with the same random state; reseed it from the
    # worker's torch seed (derived from the DataLoader generator, so it also changes per epoch).
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    dataset = info.dataset
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(info.seed % 2**32))


class SegmentationDataModule(L.LightningDataModule):
    """Train / validation / evaluation loaders for a recipe.

    - train: ``data.train``, restricted to ``train_ids`` when given (e.g. the labelled items of an
      active-learning round); every train sample must have a mask.
    - val: ``data.val`` when set; otherwise a seeded ``data.val_fraction`` of the groups of the
      (restricted) train samples, which are then removed from training. So with ``train_ids``
      the validation items are drawn from the labelled ids, never from the unlabelled pool. With
      a single group there is no validation set (:attr:`has_val` is False).
    - evaluate: one loader per ``data.evaluate`` entry (may be unlabelled: masks are -1).

    Shuffling uses a torch Generator seeded with ``recipe.seed``; batch size and workers come from
    ``recipe.train``.

    Args:
        recipe: the validated recipe.
        train_ids: global ids of the training items (all of ``data.train`` when ``None``).
        base: folder a relative ``data.root`` is relative to (default: working directory).
        catalog: an existing catalog to reuse (its discovered samples are cached).

    Raises:
        DataError: (at :meth:`setup`) an id in ``train_ids`` is not in ``data.train``, or a
            training sample has no mask.
    """

    def __init__(
        self,
        recipe: Recipe,
        train_ids: Sequence[str] | None = None,
        base: Path | None = None,
        catalog: DataCatalog | None = None,
    ) -> None:
        super().__init__()
        self.recipe = recipe
        self.train_ids = list(train_ids) if train_ids is not None else None
        self.catalog = catalog if catalog is not None else DataCatalog(recipe, base)
        self.train_samples: list[Sample] = []
        self.val_samples: list[Sample] = []
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        """Resolve the train and validation samples (idempotent)."""
        if self._ready:
            return
        data = self.recipe.data
        candidates = self.catalog.samples(data.train)
        if self.train_ids is not None:
            by_id = {s.id: s for s in candidates}
            unknown = [i for i in self.train_ids if i not in by_id]
            if unknown:
                shown = ", ".join(repr(i) for i in unknown[:3])
                more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
                raise DataError(
                    f"train ids {shown}{more} are not in data.train ({_describe(data.train)}, "
                    f"{len(candidates)} samples); pass ids of that subset"
                )
            wanted = set(self.train_ids)
            candidates = [s for s in candidates if s.id in wanted]
        unlabelled = [s for s in candidates if not s.labelled]
        if unlabelled:
            raise DataError(
                f"{len(unlabelled)} training samples have no mask (e.g. {unlabelled[0].id}); "
                f"data.train ({_describe(data.train)}) must be labelled — set its masks folder "
                "or pass only labelled train_ids"
            )
        self._split_validation(candidates)

    def _split_validation(self, candidates: list[Sample]) -> None:
        """Train on ``candidates`` and validate on ``data.val``, or hold out a seeded
        ``data.val_fraction`` of their groups when it is not set; marks the module set up."""
        data = self.recipe.data
        if data.val is not None:
            self.train_samples = candidates
            self.val_samples = self.catalog.samples(data.val)
        else:
            self.train_samples, self.val_samples = grouped_holdout(
                candidates, data.val_fraction, self.recipe.seed
            )
        self._ready = True

    @property
    def has_val(self) -> bool:
        """Whether there is at least one validation sample."""
        self.setup()
        return bool(self.val_samples)

    def _loader(self, dataset: SegmentationDataset, shuffle: bool) -> DataLoader[dict[str, Any]]:
        cfg = self.recipe.train
        generator = torch.Generator().manual_seed(self.recipe.seed)
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            num_workers=cfg.num_workers,
            generator=generator,
            worker_init_fn=_seed_worker,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _dataset(self, samples: Sequence[Sample], train: bool) -> SegmentationDataset:
        steps = self.recipe.augment.train if train else self.recipe.augment.eval
        return SegmentationDataset(samples, self.recipe.data, steps, train, seed=self.recipe.seed)

    def train_dataset(self) -> SegmentationDataset:
        """The augmented training set."""
        self.setup()
        return self._dataset(self.train_samples, train=True)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Shuffled, augmented training batches."""
        return self._loader(self.train_dataset(), shuffle=True)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Validation batches (eval pipeline, not shuffled); empty when :attr:`has_val` is False."""
        self.setup()
        return self._loader(self._dataset(self.val_samples, train=False), shuffle=False)

    def eval_dataloaders(self) -> dict[str, DataLoader[dict[str, Any]]]:
        """One loader per ``data.evaluate`` entry, in recipe order (eval pipeline, not shuffled)."""
        return {
            name: self.subset_dataloader(ref) for name, ref in self.recipe.data.evaluate.items()
        }

    def subset_dataloader(self, ref: SubsetRef, train: bool = False) -> DataLoader[dict[str, Any]]:
        """A loader over any recipe reference (e.g. ``data.source`` for pre-training)."""
        samples = self.catalog.samples(ref)
        return self._loader(self._dataset(samples, train=train), shuffle=train)


def _describe(ref: SubsetRef) -> str:
    return f"{ref.dataset}/{ref.split}" if ref.split else ref.dataset
