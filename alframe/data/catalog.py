"""The data catalog: the recipe's data sets, discovered lazily, and their splits."""

from __future__ import annotations

import difflib
from pathlib import Path

from alframe.config.loading import expand_path
from alframe.config.schema import DataConfig, DatasetConfig, Recipe, SubsetRef
from alframe.data.pool import Pool
from alframe.data.samples import Sample, discover_samples
from alframe.data.splits import split_samples
from alframe.errors import ConfigError, DataError


class DataCatalog:
    """Resolves ``data.root``, lists each data set on first use and caches samples and splits.

    Args:
        recipe: the validated recipe (its ``data`` section and ``seed`` are used).
        base: folder that a relative ``data.root`` is relative to (e.g. the recipe file's
            folder); default: the current working directory.

    Raises:
        ConfigError: ``data.root`` uses an unset environment variable.
    """

    def __init__(self, recipe: Recipe, base: Path | None = None) -> None:
        self.recipe = recipe
        self.data: DataConfig = recipe.data
        self.root: Path = expand_path(recipe.data.root, base)
        self._samples: dict[str, list[Sample]] = {}
        self._splits: dict[str, dict[str, list[str]]] = {}

    @property
    def dataset_names(self) -> list[str]:
        """Names of the data sets in ``data.datasets``, in recipe order."""
        return list(self.data.datasets)

    def config(self, name: str) -> DatasetConfig:
        """The configuration of one data set.

        Raises:
            ConfigError: no data set of that name (the message lists close matches).
        """
        try:
            return self.data.datasets[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.dataset_names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"data set {name!r} is not in data.datasets ({', '.join(self.dataset_names)}){hint}"
            ) from None

    def dataset(self, name: str) -> list[Sample]:
        """All samples of one data set, sorted by id (discovered once, then cached).

        Raises:
            ConfigError: unknown data set name.
            DataError: the data set's folders are missing, empty or inconsistent.
        """
        if name not in self._samples:
            cfg = self.config(name)
            if not self.root.is_dir():
                raise DataError(
                    f"data.root {self.root} does not exist; fix data.root (from "
                    f"{self.data.root!r}) or the ALFRAME_DATA variable"
                )
            self._samples[name] = discover_samples(name, cfg, self.root)
        return list(self._samples[name])

    def splits(self, name: str) -> dict[str, list[str]]:
        """Part name → sorted ids of one data set's split (computed once, then cached).

        Raises:
            ConfigError: the data set has no ``split`` section.
            DataError: the split cannot be computed (see :func:`split_samples`).
        """
        if name not in self._splits:
            cfg = self.config(name)
            if cfg.split is None:
                raise ConfigError(
                    f"data.datasets.{name} has no split, so parts of it cannot be referenced; "
                    f"add 'split: {{kind: random, fractions: {{train: 0.8, test: 0.2}}}}' to it "
                    "or set split: null in the reference"
                )
            self._splits[name] = split_samples(
                self.dataset(name), cfg.split, self.root, self.recipe.seed
            )
        return {part: list(ids) for part, ids in self._splits[name].items()}

    def samples(self, ref: SubsetRef) -> list[Sample]:
        """The samples a recipe reference points to (a whole data set or one part of it).

        Args:
            ref: ``{dataset, split}``; ``split: null`` means every sample of the data set.

        Returns:
            The samples, sorted by id.

        Raises:
            ConfigError: unknown data set, no split configured, or unknown part name (the
                message lists the available parts).
        """
        everything = self.dataset(ref.dataset)
        if ref.split is None:
            return everything
        parts = self.splits(ref.dataset)
        if ref.split not in parts:
            close = difflib.get_close_matches(ref.split, list(parts), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"split {ref.split!r} of data set {ref.dataset!r} does not exist; available "
                f"parts: {', '.join(parts)}{hint}"
            )
        wanted = set(parts[ref.split])
        return [s for s in everything if s.id in wanted]

    def pool(self, ref: SubsetRef) -> Pool:
        """The referenced samples as a :class:`Pool`."""
        return Pool(self.samples(ref))

    def mask_format(self, name: str) -> str:
        """The ``mask_format`` of one data set."""
        return self.config(name).mask_format
