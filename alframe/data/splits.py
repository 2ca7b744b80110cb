"""Splitting one data set into named parts (``train``, ``test``, ...): random, grouped or from CSV.

Random and grouped splits are a seeded shuffle of the items (or of the groups) cut into
consecutive chunks whose sizes follow ``fractions``; they depend only on the sorted ids and the
seed, so they are identical across runs and machines.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alframe.config.loading import expand_path
from alframe.config.schema import SplitConfig
from alframe.data.samples import IMAGE_EXTENSIONS, NIFTI_EXTENSIONS, Sample
from alframe.errors import ConfigError, DataError


def part_sizes(n_units: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n_units`` into parts proportional to ``fractions``.

    Uses largest-remainder rounding (the sizes sum to ``n_units``), then moves units from the
    largest part to empty parts so that every part is non-empty whenever
    ``n_units >= len(fractions)``.

    Args:
        n_units: number of items (or groups) to distribute.
        fractions: positive weights, one per part, shape (P,).

    Returns:
        P non-negative sizes that sum to ``n_units``.
    """
    weights = np.asarray(fractions, dtype=np.float64)
    exact = n_units * weights / weights.sum()
    sizes = np.floor(exact).astype(np.int64)
    remainder = n_units - int(sizes.sum())
    # Stable sort so that ties go to the earlier part, deterministically.
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[:remainder]] += 1
    if n_units >= len(sizes):
        for empty in np.flatnonzero(sizes == 0):
            donor = int(np.argmax(sizes))
            sizes[donor] -= 1
            sizes[empty] += 1
    return [int(s) for s in sizes]


def _group_of(sample: Sample, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return sample.group
    match = pattern.search(sample.local_id)
    if match is None:
        raise DataError(
            f"id {sample.id!r} does not match split.group_pattern {pattern.pattern!r}; fix the "
            f"pattern so that it matches every id (it is applied to {sample.local_id!r})"
        )
    return match.group(1) if pattern.groups else match.group(0)


def _shuffled_parts(
    units: list[str], fractions: dict[str, float], seed: int
) -> dict[str, set[str]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    sizes = part_sizes(len(units), list(fractions.values()))
    parts: dict[str, set[str]] = {}
    start = 0
    for name, size in zip(fractions, sizes):
        parts[name] = {units[i] for i in order[start : start + size]}
        start += size
    return parts


def _split_by_units(
    samples: Sequence[Sample], cfg: SplitConfig, seed: int, grouped: bool
) -> dict[str, list[str]]:
    pattern = None
    if grouped and cfg.group_pattern:
        try:
            pattern = re.compile(cfg.group_pattern)
        except re.error as err:
            raise ConfigError(
                f"split.group_pattern = {cfg.group_pattern!r}: not a valid regular expression "
                f"({err})"
            ) from None
    keys = [_group_of(s, pattern) if grouped else s.id for s in samples]
    units = sorted(set(keys))
    parts = _shuffled_parts(units, cfg.fractions, seed)
    return {
        name: sorted(s.id for s, key in zip(samples, keys) if key in members)
        for name, members in parts.items()
    }


def _strip_extension(value: str) -> str:
    lower = value.lower()
    for ext in (*NIFTI_EXTENSIONS, *IMAGE_EXTENSIONS):
        if lower.endswith(ext):
            return value[: -len(ext)]
    return value


def _split_from_csv(
    samples: Sequence[Sample], cfg: SplitConfig, root: Path
) -> dict[str, list[str]]:
    if not cfg.csv:
        raise ConfigError("split.kind 'csv' needs 'csv: <file relative to data.root>'")
    path = expand_path(cfg.csv, root)
    if not path.is_file():
        raise DataError(f"split csv {path} does not exist; fix split.csv (relative to data.root)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read split csv {path} ({err}); save it as UTF-8 CSV") from None
    needed = [cfg.id_column, cfg.split_column, *cfg.filter]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"split csv {path} has no column {', '.join(repr(c) for c in missing)} (columns: "
            f"{', '.join(columns) or 'none'}); fix split.id_column / split_column / filter"
        )
    rows = [r for r in rows if all(r.get(k) == v for k, v in cfg.filter.items())]
    if not rows:
        raise DataError(
            f"split csv {path}: no row matches filter {dict(cfg.filter)}; fix split.filter"
        )

    by_local: dict[str, list[str]] = {}
    for sample in samples:
        by_local.setdefault(sample.local_id, []).append(sample.id)
        if sample.local_id != sample.group:
            # A CSV may list whole volumes: its id then selects every slice of the volume.
            by_local.setdefault(sample.group, []).append(sample.id)

    parts: dict[str, list[str]] = {}
    part_of: dict[str, str] = {}
    unknown: list[str] = []
    for row in rows:
        value = (row.get(cfg.id_column) or "").strip()
        part = (row.get(cfg.split_column) or "").strip()
        ids = by_local.get(value) or by_local.get(_strip_extension(value))
        if not ids:
            unknown.append(value)
            continue
        if not part:
            raise DataError(
                f"split csv {path}: id {value!r} has an empty {cfg.split_column!r}; fill it in"
            )
        for item_id in ids:
            previous = part_of.setdefault(item_id, part)
            if previous != part:
                raise DataError(
                    f"split csv {path}: {item_id!r} is in both {previous!r} and {part!r}; list "
                    "each id in one part"
                )
        parts.setdefault(part, []).extend(ids)
    if unknown:
        dataset = samples[0].dataset if samples else "?"
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        hint = "" if cfg.filter else " or add split.filter (e.g. {source: <name>})"
        raise DataError(
            f"split csv {path}: unknown split id {', '.join(repr(u) for u in unknown[:3])}{more} "
            f"(not in data set '{dataset}', {len(samples)} samples); fix the ids{hint}"
        )
    left_out = len(samples) - len(part_of)
    if left_out:
        warnings.warn(
            f"split csv {path} lists {len(part_of)} of {len(samples)} samples of data set "
            f"'{samples[0].dataset}'; the other {left_out} are in no part",
            stacklevel=3,
        )
    return {name: sorted(set(ids)) for name, ids in parts.items()}


def split_samples(
    samples: Sequence[Sample], cfg: SplitConfig, root: Path, seed: int
) -> dict[str, list[str]]:
    """Split one data set's samples into named parts.

    ``random`` shuffles items, ``grouped`` shuffles groups (``Sample.group``, or the first group
    / whole match of ``cfg.group_pattern`` in the id without its data-set prefix) so a group never
    straddles two parts; both use ``cfg.seed`` or else ``seed``, and fractions count items
    (``random``) or groups (``grouped``). ``csv`` reads ``cfg.csv`` (relative to ``root``), keeps
    rows equal to ``cfg.filter`` and matches ``id_column`` to file stems (or to volume stems,
    which select every slice of the volume); samples the CSV does not list belong to no part.

    Args:
        samples: items of one data set.
        cfg: the data set's split configuration.
        root: resolved ``data.root``.
        seed: the recipe seed, used when ``cfg.seed`` is unset.

    Returns:
        Part name → sorted global ids. Parts keep the order of ``cfg.fractions`` (or of first
        appearance in the CSV).

    Raises:
        DataError: the CSV is missing, lacks a column, or lists an id that matches no sample
            ("unknown split id"), or a group pattern does not match an id.
        ConfigError: ``group_pattern`` is not a valid regular expression.
    """
    effective_seed = cfg.seed if cfg.seed is not None else seed
    if cfg.kind == "csv":
        return _split_from_csv(samples, cfg, root)
    return _split_by_units(samples, cfg, effective_seed, grouped=cfg.kind == "grouped")


def grouped_holdout(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``fraction`` of the groups (e.g. for validation), seeded.

    At least one group is held out whenever ``fraction > 0`` and there are two or more groups, and
    at least one group is always kept.

    Args:
        samples: the items to divide.
        fraction: share of groups to hold out, in [0, 1).
        seed: seed of the shuffle.

    Returns:
        ``(kept, held_out)``, each in the input order.
    """
    groups = sorted({s.group for s in samples})
    if fraction <= 0 or len(groups) < 2:
        return list(samples), []
    n_out = min(max(1, round(fraction * len(groups))), len(groups) - 1)
    order = np.random.default_rng(seed).permutation(len(groups))
    held = {groups[i] for i in order[:n_out]}
    kept = [s for s in samples if s.group not in held]
    return kept, [s for s in samples if s.group in held]
