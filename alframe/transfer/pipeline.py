"""Source-model selection end to end: candidates × target → inputs → scores → ranking."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import default_collate

from alframe.errors import ConfigError, DataError
from alframe.transfer.base import (
    TRANSFER_SCORES,
    ScoreResult,
    TransferInputs,
    TransferScore,
    parse_score_names,
)
from alframe.transfer.gradients import gradient_ratio
from alframe.transfer.scores import weighted_tau
from alframe.transfer.sources import SourceModel, SourceSpec, load_source
from alframe.transfer.targets import TargetSet

if TYPE_CHECKING:
    from alframe.inference import Hardware


def _sample_pixels(
    fmap: torch.Tensor, masks: torch.Tensor, per_class: int, seeds: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel features (M, D) and labels (M,) sampled from feature maps (B, D, h, w).

    Masks (B, H, W) are resized to (h, w) by nearest neighbour; up to ``per_class`` positions per
    class and image are drawn with ``numpy.random.default_rng(seeds[b])`` (ignore = −1 skipped).
    """
    h, w = fmap.shape[2:]
    small = torch.nn.functional.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")
    small_np = small[:, 0].long().cpu().numpy()
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    for b in range(fmap.shape[0]):
        rng = np.random.default_rng(seeds[b])
        flat = small_np[b].reshape(-1)
        for value in np.unique(flat[flat >= 0]):
            positions = np.flatnonzero(flat == value)
            take = rng.choice(positions, size=min(per_class, positions.size), replace=False)
            ys, xs = np.divmod(np.sort(take), w)
            feats.append(fmap[b, :, torch.as_tensor(ys), torch.as_tensor(xs)].T)
            labels.extend([int(value)] * take.size)
    return torch.cat(feats, dim=0), torch.as_tensor(labels, dtype=torch.long)


class _FeatureItems(torch.utils.data.Dataset[dict[str, Any]]):
    """Target images (and masks) with their positions: pixel sampling is seeded by position."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor | None) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"image": self.images[index], "position": index}
        if self.masks is not None:
            item["mask"] = self.masks[index]
        return item


def _feature_rows(
    _module: torch.nn.Module,
    batch: Mapping[str, Any],
    source: SourceModel,
    want_logits: bool,
    pixels_per_class: int,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """One batch → per image ``(features, labels or logits or None)`` (a predict step).

    ``source.module`` is the module the predict loop placed, so the features are computed on
    this process's device. Pixel mode: the image's sampled pixel features (M_i, D) and labels
    (M_i,); otherwise its pooled feature (1, D) and, when wanted, source logits (1, Z).
    """
    images = batch["image"]
    fmap = source.feature_map(source.prepare(images))
    positions = [int(p) for p in batch["position"]]
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    if "mask" in batch:
        masks = batch["mask"]
        for b, position in enumerate(positions):
            rows, ys = _sample_pixels(
                fmap[b : b + 1], masks[b : b + 1], pixels_per_class, [seed * 100_003 + position]
            )
            out.append((rows.float().cpu().numpy(), ys.numpy()))
        return out
    pooled = fmap.float().mean(dim=(2, 3)).cpu().numpy()
    logits = (
        source.logits_fn(fmap).float().cpu().numpy() if want_logits and source.logits_fn else None
    )
    for b in range(len(positions)):
        out.append((pooled[b : b + 1], None if logits is None else logits[b : b + 1]))
    return out


@dataclass
class CandidateInputs:
    """What was computed for one candidate, plus facts for the report."""

    name: str
    inputs: TransferInputs
    info: dict[str, Any] = field(default_factory=dict)


def compute_inputs(
    source: SourceModel,
    target: TargetSet,
    needs: set[str] | frozenset[str],
    batch_size: int = 32,
    fu_batches: int = 6,
    conv_layers: tuple[str, str] | None = None,
    pixels_per_class: int = 8,
    seed: int = 0,
    hardware: Hardware | None = None,
) -> CandidateInputs:
    """Features / source logits / FU of one candidate on the target, as the scores need.

    Args:
        source: the candidate.
        target: the labelled target set.
        needs: union of the selected scores' ``requires``.
        batch_size: images per forward pass for features.
        fu_batches: FU splits the target, shuffled once with ``seed``, into this many
            consecutive batches.
        conv_layers: FU layer pair by module name (default: first two convs executed).
        pixels_per_class: ``pixels`` targets: positions sampled per class and image.
        seed: seed of the FU batch order and of the pixel sampling.
        hardware: run the feature pass in Lightning's predict loop on this hardware
            (:class:`alframe.inference.Hardware`; several processes each take whole batches,
            rank 0 puts the rows back in order: the same features as one process). None: here,
            where the module is. FU (gradients) always runs here.

    Returns:
        The candidate's :class:`CandidateInputs` (features float32).
    """
    images = torch.from_numpy(target.channels(source.in_channels, source.normalization))
    pixel_mode = target.label_mode == "pixels"
    masks = torch.from_numpy(target.masks) if pixel_mode and target.masks is not None else None
    n = images.shape[0]
    info: dict[str, Any] = {"kind": source.kind, "n_images": n}
    features = logits = None
    labels = target.labels
    module = source.module.eval()
    if "features" in needs or "source_logits" in needs:
        want_logits = "source_logits" in needs and source.logits_fn is not None
        items = _FeatureItems(images, masks)
        step = partial(
            _feature_rows,
            source=source,
            want_logits=want_logits,
            pixels_per_class=pixels_per_class,
            seed=seed,
        )
        if hardware is None:
            with torch.no_grad():
                rows = [
                    row
                    for start in range(0, n, batch_size)
                    for row in step(
                        module,
                        default_collate(
                            [items[i] for i in range(start, min(start + batch_size, n))]
                        ),
                    )
                ]
        else:
            from alframe.inference import predict_rows

            rows, _ = predict_rows(module, step, items, hardware, batch_size=batch_size)
        features = np.concatenate([r[0] for r in rows]).astype(np.float32)
        if masks is not None:
            labels = np.concatenate([r[1] for r in rows])
        elif want_logits:
            logits = np.concatenate([r[1] for r in rows]).astype(np.float32)
        info["feature_dim"] = int(features.shape[1])
    ratio = None
    if "gradient_ratio" in needs:
        per_batch = max(2, math.ceil(n / max(1, fu_batches)))
        targets = masks if masks is not None else torch.from_numpy(target.labels)
        # One fixed shuffle, then consecutive batches: files are often listed class by class,
        # and a single-class batch has no valid triplet.
        order = torch.from_numpy(np.random.default_rng(seed).permutation(n))

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, n, per_batch):
                index = order[start : start + per_batch]
                yield images[index], targets[index]

        def embed(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fmap = source.feature_map(source.prepare(x))
            if masks is not None:
                return _sample_pixels(fmap, t, pixels_per_class, [seed] * x.shape[0])
            return fmap.mean(dim=(2, 3)), t

        result = gradient_ratio(module, batches(), embed, conv_layers=conv_layers)
        ratio = result.ratio
        info["fu_layers"] = f"{result.first} → {result.second}"
        info["fu_batches_used"] = len(result.first_norms)
    if "features" in needs and masks is None and features is not None:
        labels = target.labels
    return CandidateInputs(
        source.name,
        TransferInputs(
            labels=np.asarray(labels), features=features, source_logits=logits, gradient_ratio=ratio
        ),
        info,
    )


@dataclass
class Ranking:
    """The result of :func:`rank_sources`.

    Attributes:
        names: candidate names in input order.
        scores: score name → (M,) pool-comparable values (NaN where a score does not apply,
            e.g. LEEP for a candidate without a source classifier).
        raw: score name → per-candidate :class:`ScoreResult` (None where not applicable).
        primary: the score that orders :attr:`order`.
        info: per-candidate facts (kind, FU layers, feature dimension).
    """

    names: list[str]
    scores: dict[str, np.ndarray]
    raw: dict[str, list[ScoreResult | None]]
    primary: str
    info: list[dict[str, Any]]

    @property
    def order(self) -> list[int]:
        """Candidate indices, best first by the primary score (NaN last, ties by name)."""
        values = self.scores[self.primary]
        return sorted(
            range(len(self.names)),
            key=lambda i: (not np.isfinite(values[i]), -np.nan_to_num(values[i]), self.names[i]),
        )

    def tau(self, truth: Mapping[str, float]) -> dict[str, float]:
        """Weighted Kendall τ of every score vs the true performance of the candidates.

        Raises:
            DataError: a candidate has no ground-truth value.
        """
        missing = [n for n in self.names if n not in truth]
        if missing:
            raise DataError(
                f"the truth CSV has no performance for {', '.join(missing)}; its model column "
                "must hold the candidate names (the spec, or the LABEL of LABEL@spec)"
            )
        performance = np.asarray([truth[n] for n in self.names], dtype=np.float64)
        return {name: weighted_tau(values, performance) for name, values in self.scores.items()}

    def as_rows(self) -> list[dict[str, Any]]:
        """One dict per candidate, best first: rank, name, every score, info."""
        rows = []
        for rank, i in enumerate(self.order, start=1):
            row: dict[str, Any] = {"rank": rank, "model": self.names[i]}
            for name, values in self.scores.items():
                row[name] = float(values[i])
            row.update({k: v for k, v in self.info[i].items() if k not in row})
            rows.append(row)
        return rows


def score_pool(
    candidates: Sequence[CandidateInputs],
    score_names: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Ranking:
    """Apply the named scores to precomputed candidate inputs and pool-normalise them.

    Args:
        candidates: one :class:`CandidateInputs` per candidate.
        score_names: registered score names; the first orders the ranking.
        params: per-score constructor parameters (e.g. ``{"lpfu": {"natural_source": True}}``).

    Returns:
        The :class:`Ranking`.
    """
    if not candidates:
        raise ConfigError("no candidate models given")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ConfigError(f"candidate names must be unique, got {names}; label them LABEL@spec")
    scores: dict[str, np.ndarray] = {}
    raw: dict[str, list[ScoreResult | None]] = {}
    for score_name in score_names:
        score: TransferScore = TRANSFER_SCORES.create(
            score_name, **dict((params or {}).get(score_name, {}))
        )
        results: list[ScoreResult | None] = []
        for candidate in candidates:
            inputs = candidate.inputs
            missing = [r for r in score.requires if getattr(inputs, r) is None]
            results.append(None if missing else score.compute(inputs))
        present = [r for r in results if r is not None]
        pooled = score.pool(present) if present else np.zeros(0)
        values = np.full(len(candidates), np.nan)
        values[[i for i, r in enumerate(results) if r is not None]] = pooled
        scores[score_name] = values
        raw[score_name] = results
    return Ranking(names, scores, raw, score_names[0], [dict(c.info) for c in candidates])


def rank_sources(
    specs: Sequence[str | SourceSpec | SourceModel],
    target: TargetSet,
    scores: str | Sequence[str] = "lpfu",
    natural_source: bool = False,
    leave_one_out: bool = False,
    conv_layers: tuple[str, str] | None = None,
    fu_batches: int = 6,
    progress: bool = True,
    on_candidate: Callable[[CandidateInputs], None] | None = None,
    devices: Any = None,
    hardware: Hardware | None = None,
) -> Ranking:
    """Rank candidate source models for a labelled target set.

    Args:
        specs: candidate spec strings (see :mod:`alframe.transfer.sources`), parsed specs or
            built models.
        target: the labelled target set (:func:`alframe.transfer.load_target`).
        scores: ``"lpfu,logme,..."``, ``"all"`` or a list of registered names; the first
            orders the ranking.
        natural_source: LP·FU as ``(1 − LP̃)(1 − FŨ)`` (natural-image source pools).
        leave_one_out: LP (and LP·FU) with leave-one-out kNN instead of resubstitution.
        conv_layers: FU layer pair by module name for every candidate (default: detected).
        fu_batches: number of in-order FU batches.
        progress: show a progress bar over candidates.
        on_candidate: called with each candidate's inputs once computed (e.g. to cache them).
        devices: where the feature passes run, spelled as ``embed.devices`` (``auto``,
            ``cpu``, ``cuda:0,cuda:1``, a count, ...; ``alframe rank-sources --devices``):
            several devices are several processes of Lightning's predict loop, each taking
            whole batches (the same features as one process); a request that is one process
            on the candidate's own device runs here
            (:func:`alframe.inference.hardware_unless_here`). None: here, where each candidate
            is. FU (gradients) always runs here.
        hardware: overrides ``devices`` with Lightning's own keys
            (:class:`alframe.inference.Hardware`).

    Returns:
        The :class:`Ranking`.

    Raises:
        ModelError: ``devices`` names devices this machine does not have.
    """
    from tqdm.auto import tqdm

    names = parse_score_names(scores)
    needs: set[str] = set()
    for name in names:
        needs |= TRANSFER_SCORES.get(name).requires
    computed: list[CandidateInputs] = []
    for spec in tqdm(list(specs), desc="candidates", unit="model", disable=not progress):
        source = spec if isinstance(spec, SourceModel) else load_source(spec)
        where = hardware
        if where is None and devices is not None:
            from alframe.inference import hardware_unless_here

            first = next(iter(source.module.parameters()), None)
            where = hardware_unless_here(devices, first.device if first is not None else "cpu")
        inputs = compute_inputs(
            source, target, needs, fu_batches=fu_batches, conv_layers=conv_layers, hardware=where
        )
        if on_candidate is not None:
            on_candidate(inputs)
        computed.append(inputs)
    params: dict[str, dict[str, Any]] = {
        "lpfu": {"natural_source": natural_source, "leave_one_out": leave_one_out},
        "lp": {"leave_one_out": leave_one_out},
    }
    return score_pool(computed, names, {k: v for k, v in params.items() if k in names})
