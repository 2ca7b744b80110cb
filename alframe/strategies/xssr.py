"""XSSR: cross-domain self-supervised representative selection (method note: docs/methods/xssr.md).

score(x) = ρ̂(x) · [α·ν̂(x) + (1−α)·δ̂(x | L)]  (``combine="mul"``, default)
score(x) = ρ̂(x) + α·ν̂(x) + (1−α)·δ̂(x | L)   (``combine="add"``)

- density ρ(x) = 1 / (ε + mean distance to its ``density_k`` nearest target-pool neighbours);
- novelty ν(x) = mean distance to its ``novelty_k`` nearest source neighbours;
- diversity δ(x | L) = distance to the nearest labelled-or-picked item (δ ≡ 1 when there is none),
  updated incrementally after each pick.

ρ̂ and ν̂ are min-max normalised once over the candidates of the round (they are static); δ̂ is
re-normalised over the current candidates before every pick. A degenerate (constant) term
normalises to 1 for every item.

``alpha="auto"`` runs the greedy for every alpha of ``alpha_grid`` (in lock-step: one pass over the
pool per pick serves all alphas) and keeps the alpha minimising the coverage cost
C(α) = mean_x min_l d(x, l) over the pool, the minimum running over labelled and selected items;
ties (relative 1e-6) → smaller alpha. For pools larger than ``calibration_subsample`` items the
calibration runs on a seeded uniform subsample of that size with the budget scaled by the same
fraction, then the selection itself runs once with the chosen alpha on the whole pool.

Without source embeddings novelty carries no information: ν ≡ 0, a :class:`MissingSourceWarning`
is issued and alpha is forced to 0 (density × diversity), for fixed and "auto" alpha alike; a
grid search would only trade diversity against a constant.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from alframe.errors import AlframeNote, ConfigError
from alframe.index import Device
from alframe.index.self_knn import SelfKnnMethod
from alframe.scoring.greedy import (
    DEFAULT_ALPHA_GRID,
    Combine,
    calibrate_alpha,
    combine_terms,
    normalized_diversity,
    xssr_greedy,
)
from alframe.scoring.knn_terms import (
    DEFAULT_DENSITY_EPSILON,
    DEFAULT_DENSITY_K,
    DEFAULT_NOVELTY_K,
    density,
    novelty,
)
from alframe.scoring.normalize import min_max_normalize
from alframe.strategies.base import STRATEGIES, Strategy, pool_array
from alframe.types import QueryContext, Selection

DEFAULT_CALIBRATION_SUBSAMPLE = 100_000
DENSITY_REFERENCE_MIN_ITEMS = 500_000
"""``density_reference="auto"`` estimates the density from a reference subsample only above this
pool size (below it the full self-kNN is cheap enough)."""
DENSITY_REFERENCE_FRACTION = 0.25
"""``"auto"`` reference size as a fraction of the pool (at least ``DENSITY_REFERENCE_MIN_SIZE``)."""
DENSITY_REFERENCE_MIN_SIZE = 250_000


class MissingSourceWarning(AlframeNote):
    """XSSR ran without source embeddings: novelty is 0 and alpha is forced to 0.

    The normal case of a single-site pool (no ``data.source``), so the command line prints it as
    one ``note:`` line.
    """


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"xssr {name} must be a positive integer, got {value!r}")


@STRATEGIES.register("xssr")
@dataclass(frozen=True)
class XSSRStrategy(Strategy):
    """XSSR greedy selection with density, novelty and diversity (see the module docstring).

    Args:
        alpha: novelty weight in [0, 1], or ``"auto"`` to calibrate it by minimum coverage cost.
        alpha_grid: alphas tried by ``"auto"`` (default 0.0, 0.1, …, 1.0).
        combine: ``"mul"`` (density gates the mix) or ``"add"``.
        density_k: neighbours of the density (over the whole target pool).
        novelty_k: source neighbours of the novelty.
        density_epsilon: ε of ρ = 1 / (ε + mean kNN distance).
        use_density: False sets ρ̂ ≡ 1 (ablation; with alpha = 0 this is CoreSet).
        calibration_subsample: pools above this size calibrate alpha on a seeded subsample of
            this many items (``None`` = always the whole pool; exact but ~``len(alpha_grid)``×
            the vector work per pick).
        knn_method: density kNN search: ``"exact"``, ``"cells"`` (k-means partitioned,
            approximate, for large pools) or ``"auto"`` (exact up to ``knn_exact_max_items``).
        knn_exact_max_items: the ``"auto"`` threshold.
        knn_probe: cells searched per cell by the cells method.
        density_reference: where the density's neighbours come from: ``None`` = the whole
            pool; an integer = a seeded subsample of that many pool items (search cost ÷
            N / size; a smoothed estimate); ``"auto"`` = the whole pool up to
            ``DENSITY_REFERENCE_MIN_ITEMS`` items, above it a subsample of
            ``max(DENSITY_REFERENCE_MIN_SIZE, DENSITY_REFERENCE_FRACTION · N)`` items (accuracy
            against the exact density: docs/benchmarks/selection_scaling.md).
        device: FAISS device for the exact kNN (``"cpu"``, ``"gpu"``, ``"auto"``).

    ``terms``: ``density``, ``novelty``, ``diversity`` (normalised, as they entered the score)
    and ``density_raw``, ``novelty_raw``, ``diversity_raw``. Diversity of a selected item is its
    value at pick time (why it was picked); of an unselected item, after the last pick. A
    cold-start first pick has ``diversity_raw = +inf`` (there was nothing to be far from) and
    ``diversity = 1`` (δ ≡ 1 when L = ∅).
    ``scores``: the composite at pick time (selected) or after the last pick (others).
    ``info``: ``alpha``, ``coverage_curve`` {alpha: C(alpha)}, ``covering_radius_curve``,
    ``coverage_cost`` and ``covering_radius`` of the final selection on the whole pool,
    ``calibration`` (items, budget, subsampled) for ``"auto"``, and ``seconds`` per phase.
    """

    alpha: float | str = "auto"
    alpha_grid: tuple[float, ...] = field(default=DEFAULT_ALPHA_GRID)
    combine: Combine = "mul"
    density_k: int = DEFAULT_DENSITY_K
    novelty_k: int = DEFAULT_NOVELTY_K
    density_epsilon: float = DEFAULT_DENSITY_EPSILON
    use_density: bool = True
    calibration_subsample: int | None = DEFAULT_CALIBRATION_SUBSAMPLE
    knn_method: SelfKnnMethod = "auto"
    knn_exact_max_items: int = 20_000
    knn_probe: int = 4
    density_reference: int | str | None = "auto"
    device: Device = "cpu"

    name: ClassVar[str] = "xssr"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings", "source_embeddings"})
    supports_on_disk: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.alpha, str):
            if self.alpha != "auto":
                raise ConfigError(
                    f"xssr alpha must be a number in [0, 1] or 'auto', got {self.alpha!r}"
                )
        elif (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not (0.0 <= float(self.alpha) <= 1.0)
        ):
            raise ConfigError(
                f"xssr alpha must be a number in [0, 1] or 'auto', got {self.alpha!r}"
            )
        grid = tuple(float(a) for a in self.alpha_grid)
        if not grid or any(not (0.0 <= a <= 1.0) or math.isnan(a) for a in grid):
            raise ConfigError(f"xssr alpha_grid must be non-empty values in [0, 1], got {grid}")
        object.__setattr__(self, "alpha_grid", tuple(sorted(set(grid))))
        if self.combine not in ("mul", "add"):
            raise ConfigError(f"xssr combine must be 'mul' or 'add', got {self.combine!r}")
        _positive_int("density_k", self.density_k)
        _positive_int("novelty_k", self.novelty_k)
        _positive_int("knn_exact_max_items", self.knn_exact_max_items)
        _positive_int("knn_probe", self.knn_probe)
        if not self.density_epsilon > 0:
            raise ConfigError(f"xssr density_epsilon must be > 0, got {self.density_epsilon}")
        if self.calibration_subsample is not None and (
            isinstance(self.calibration_subsample, bool)
            or not isinstance(self.calibration_subsample, int)
            or self.calibration_subsample < 2
        ):
            raise ConfigError(
                "xssr calibration_subsample must be an integer ≥ 2 or null, "
                f"got {self.calibration_subsample!r}"
            )
        if self.knn_method not in ("auto", "exact", "cells"):
            raise ConfigError(
                f"xssr knn_method must be 'auto', 'exact' or 'cells', got {self.knn_method!r}"
            )
        reference = self.density_reference
        if (
            reference is not None
            and reference != "auto"
            and (isinstance(reference, bool) or not isinstance(reference, int) or reference < 2)
        ):
            raise ConfigError(
                f"xssr density_reference must be 'auto', null or an integer ≥ 2, got {reference!r}"
            )
        if self.device not in ("cpu", "gpu", "auto"):
            raise ConfigError(f"xssr device must be 'cpu', 'gpu' or 'auto', got {self.device!r}")

    def density_reference_size(self, n_items: int) -> int | None:
        """Reference items of the density for a pool of ``n_items`` (None = the whole pool)."""
        if self.density_reference == "auto":
            if n_items <= DENSITY_REFERENCE_MIN_ITEMS:
                return None
            size = max(DENSITY_REFERENCE_MIN_SIZE, round(DENSITY_REFERENCE_FRACTION * n_items))
            return None if size >= n_items else int(size)
        if self.density_reference is None or int(self.density_reference) >= n_items:
            return None
        return int(self.density_reference)

    def _select(self, ctx: QueryContext, budget: int) -> Selection:
        embeddings, labelled = ctx.embeddings, ctx.labelled
        candidates = ~labelled
        n_items = ctx.n_items
        info: dict[str, Any] = {"combine": self.combine, "use_density": self.use_density}
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        if self.use_density:
            reference_size = self.density_reference_size(n_items)
            info["density_reference"] = reference_size
            density_raw = density(
                embeddings,
                k=self.density_k,
                epsilon=self.density_epsilon,
                method=self.knn_method,
                exact_max_items=self.knn_exact_max_items,
                n_probe=self.knn_probe,
                seed=ctx.seed,
                device=self.device,
                reference_size=reference_size,
            )
            density_hat = min_max_normalize(density_raw, candidates)
            info["density_k"] = min(self.density_k, max(n_items - 1, 0))
        else:
            density_raw = np.ones(n_items)
            density_hat = np.ones(n_items)
        seconds["density"], clock = time.perf_counter() - clock, time.perf_counter()

        source = ctx.source_embeddings
        has_source = source is not None and source.shape[0] > 0
        if source is not None and has_source:
            novelty_raw = novelty(embeddings, source, k=self.novelty_k)
            novelty_hat = min_max_normalize(novelty_raw, candidates)
            info["novelty_k"] = min(self.novelty_k, source.shape[0])
        else:
            warnings.warn(
                "xssr got no source embeddings (a single-site pool): it runs without its novelty "
                "term, i.e. alpha is forced to 0 (density × diversity); give a source site "
                "(data.source) for the cross-domain mode",
                MissingSourceWarning,
                stacklevel=3,
            )
            novelty_raw = np.zeros(n_items)
            novelty_hat = np.zeros(n_items)
        info["has_source"] = has_source
        seconds["novelty"], clock = time.perf_counter() - clock, time.perf_counter()

        if self.alpha == "auto" and has_source:
            calibration = calibrate_alpha(
                embeddings,
                labelled,
                budget,
                density_hat,
                novelty_hat,
                alphas=self.alpha_grid,
                combine=self.combine,
                subsample=self.calibration_subsample,
                seed=ctx.seed,
            )
            seconds["calibration"], clock = time.perf_counter() - clock, time.perf_counter()
            alpha = calibration.alpha
            info["alpha_mode"] = "auto"
            info["coverage_curve"] = dict(
                zip(map(float, calibration.alphas), map(float, calibration.coverage_cost))
            )
            info["covering_radius_curve"] = dict(
                zip(map(float, calibration.alphas), map(float, calibration.covering_radius))
            )
            info["calibration"] = {
                "subsampled": calibration.subsampled,
                "items": int(calibration.calibration_rows.size),
                "budget": calibration.calibration_budget,
            }
            if calibration.subsampled:
                greedy = xssr_greedy(
                    embeddings, labelled, budget, density_hat, novelty_hat, [alpha], self.combine
                )
                run = 0
            else:
                greedy = calibration.greedy
                run = int(np.flatnonzero(calibration.alphas == alpha)[0])
        else:
            # One greedy run at one alpha: the recipe's, or 0 when there is no source to be
            # novel against (novelty is identically 0 then).
            alpha = float(self.alpha) if has_source else 0.0
            info["alpha_mode"] = "fixed" if has_source else "forced (no source embeddings)"
            greedy = xssr_greedy(
                embeddings, labelled, budget, density_hat, novelty_hat, [alpha], self.combine
            )
            run = 0
            info["coverage_curve"] = {alpha: float(greedy.coverage_cost[0])}
            info["covering_radius_curve"] = {alpha: float(greedy.covering_radius[0])}

        seconds["selection"] = time.perf_counter() - clock
        info["seconds"] = seconds
        indices = greedy.indices[run]
        final_distances = greedy.min_distances[run : run + 1]
        remaining = candidates.copy()
        remaining[indices] = False
        final_diversity_hat = normalized_diversity(
            final_distances, remaining[None, :], np.array([True])
        )
        final_scores = combine_terms(
            density_hat, novelty_hat, final_diversity_hat, np.array([alpha]), self.combine
        )[0].astype(np.float64)
        diversity_raw = final_distances[0].astype(np.float64)
        diversity_hat = final_diversity_hat[0].astype(np.float64)
        final_scores[indices] = greedy.pick_scores[run]
        diversity_raw[indices] = greedy.pick_diversity[run]
        diversity_hat[indices] = greedy.pick_diversity_hat[run]

        info.update(
            alpha=alpha,
            alpha_grid=list(self.alpha_grid),
            coverage_cost=float(greedy.coverage_cost[run]),
            covering_radius=float(greedy.covering_radius[run]),
        )
        terms = {
            "density": pool_array(density_hat, labelled),
            "novelty": pool_array(novelty_hat, labelled),
            "diversity": pool_array(diversity_hat, labelled),
            "density_raw": pool_array(density_raw, labelled),
            "novelty_raw": pool_array(novelty_raw, labelled),
            "diversity_raw": pool_array(diversity_raw, labelled),
        }
        return Selection(
            indices=indices.copy(),
            scores=pool_array(final_scores, labelled),
            terms=terms,
            info=info,
        )
