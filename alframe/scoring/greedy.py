"""Greedy covering selections: k-center (CoreSet) and the XSSR composite greedy.

Both keep, for every pool item, the squared distance to its nearest centre (labelled or already
picked) and update it incrementally after each pick: one matrix-vector product over the pool per
pick, O(N) extra memory, never an N×N matrix. XSSR runs several alphas in lock-step so that one
pass over the embedding matrix serves all of them (a thin matrix-matrix product).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from alframe.errors import ConfigError, DataError
from alframe.scoring.distances import (
    GREEDY_BLAS_THREADS,
    ROW_CHUNK,
    blas_thread_limit,
    min_squared_distances_to_set,
    nearest_centres,
    squared_distances_to_rows,
    squared_row_norms,
)
from alframe.scoring.lazy_kcenter import LazyFarthestFirst

FirstPick = Literal["mean", "random"] | int
Combine = Literal["mul", "add"]
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * step, 1) for step in range(11))
ALPHA_TIE_TOLERANCE = 1e-6
"""Coverage costs within this relative tolerance of the minimum count as ties (→ smaller alpha)."""


def _check_inputs(embeddings: np.ndarray, labelled: np.ndarray, budget: int) -> np.ndarray:
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise DataError(
            f"embeddings must be a (N, D) float32 array, got {embeddings.shape} {embeddings.dtype}"
        )
    labelled = np.asarray(labelled, dtype=bool)
    if labelled.shape != (embeddings.shape[0],):
        raise DataError(
            f"labelled mask has shape {labelled.shape}, expected ({embeddings.shape[0]},)"
        )
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0:
        raise ConfigError(f"budget must be a non-negative integer, got {budget!r}")
    n_candidates = int(embeddings.shape[0] - labelled.sum())
    if budget > n_candidates:
        raise DataError(
            f"budget {budget} exceeds the {n_candidates} unlabelled items; clip it first"
        )
    return labelled


PRUNE_MAX_CENTRES = 65_536
"""Triangle-inequality pruning keeps a copy of the centres; above this many it is switched off."""
PRUNE_FULL_PASS_FRACTION = 0.4
"""When more than this fraction of the pool may get closer, a full pass is cheaper than a gather."""
PRUNE_SKIP_AFTER = 8
"""After this many consecutive picks whose pruning test ended in a full pass, the test is skipped
(a full pass is made directly) ..."""
PRUNE_RETRY_EVERY = 16
"""... except every this many picks, when it is tried again."""
_PRUNE_SLACK = 1e-3
"""Relative slack of the pruning test, so that float32 rounding can only cause extra updates."""


class CoverageState:
    """Nearest-centre squared distances of every pool item for ``n_runs`` parallel selections.

    With one run, updates are pruned with the triangle inequality (exact, as in accelerated
    k-means): an item x whose nearest centre c satisfies d(c, new) ≥ 2·d(x, c) cannot get closer
    to the new centre, so only the other items are recomputed, gathered chunk by chunk. This
    helps on clustered pools (late picks touch few items); on unstructured high-dimensional
    pools nearly every item qualifies and a plain pass over the matrix is made instead.

    Args:
        embeddings: (N, D) float32 pool.
        labelled: (N,) bool, the initial centres shared by all runs.
        n_runs: number of independent selections advanced in lock-step.
        norms: optional precomputed (N,) squared row norms.
        prune: force the pruning on or off (default: on for one run with at most
            ``PRUNE_MAX_CENTRES`` labelled items).

    Attributes:
        min_squared: (n_runs, N) float32 squared distance to the nearest centre (+inf while a
            run has no centre; 0 at centres).
        candidate: (n_runs, N) bool, True for items that are neither labelled nor picked.
        n_centres: (n_runs,) number of centres (labelled + picked).
        rows_updated: total number of item distances recomputed so far (a pass = N).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        labelled: np.ndarray,
        n_runs: int = 1,
        norms: np.ndarray | None = None,
        prune: bool | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.norms = squared_row_norms(embeddings) if norms is None else norms
        labelled_rows = np.flatnonzero(labelled)
        if prune is None:
            prune = labelled_rows.size <= PRUNE_MAX_CENTRES
        self._prune = bool(prune) and n_runs == 1
        if self._prune:
            initial, nearest = nearest_centres(embeddings, self.norms, labelled_rows)
            self._nearest = nearest
            capacity = max(16, 2 * labelled_rows.size)
            self._centres = np.empty((capacity, embeddings.shape[1]), dtype=np.float32)
            self._centres[: labelled_rows.size] = embeddings[labelled_rows]
            self._centre_norms = np.empty(capacity, dtype=np.float32)
            self._centre_norms[: labelled_rows.size] = self.norms[labelled_rows]
        else:
            initial = min_squared_distances_to_set(embeddings, self.norms, labelled_rows)
        self.min_squared = np.repeat(initial[None, :], n_runs, axis=0)
        self.candidate = np.repeat(~labelled[None, :], n_runs, axis=0)
        self.n_centres = np.full(n_runs, labelled_rows.size, dtype=np.int64)
        self.rows_updated = 0
        self._full_pass_streak = 0

    def add_centres(self, rows: np.ndarray) -> None:
        """Makes ``rows[r]`` a centre of run r and updates the distances.

        Args:
            rows: (n_runs,) int pool rows.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self._prune:
            self._add_centre_pruned(int(rows[0]))
        else:
            squared = squared_distances_to_rows(self.embeddings, self.norms, rows)
            np.minimum(self.min_squared, squared, out=self.min_squared)
            self.rows_updated += self.embeddings.shape[0]
        run_index = np.arange(rows.size)
        self.min_squared[run_index, rows] = 0.0
        self.candidate[run_index, rows] = False
        self.n_centres += 1

    def _add_centre_pruned(self, row: int) -> None:
        n_items = self.embeddings.shape[0]
        n_stored = int(self.n_centres[0])
        centre = self.embeddings[row]
        centre_norm = self.norms[row]
        min_squared = self.min_squared[0]
        # On unstructured pools the test nearly always ends in a full pass anyway; after a run
        # of those, skip the test (its gather and compare cost ~4 vector passes per pick) and
        # re-try it every PRUNE_RETRY_EVERY picks. Either way every distance stays exact.
        skip_test = (
            self._full_pass_streak >= PRUNE_SKIP_AFTER
            and self._full_pass_streak % PRUNE_RETRY_EVERY != 0
        )
        if n_stored == 0 or skip_test:
            rows_to_update = None
        else:
            # Squared distances from the new centre to every existing centre (a few thousand).
            to_centres = self._centre_norms[:n_stored] - 2.0 * (self._centres[:n_stored] @ centre)
            to_centres += centre_norm
            np.maximum(to_centres, 0.0, out=to_centres)
            # d(c, new) < 2·d(x, c)  ⇔  d²(c, new) < 4·d²(x, c); centres themselves have 0.
            may_improve = to_centres[self._nearest] < (4.0 * (1.0 + _PRUNE_SLACK)) * min_squared
            rows_to_update = np.flatnonzero(may_improve)
            if rows_to_update.size > PRUNE_FULL_PASS_FRACTION * n_items:
                rows_to_update = None
        if rows_to_update is None:
            squared = squared_distances_to_rows(self.embeddings, self.norms, np.array([row]))[0]
            closer = squared < min_squared
            min_squared[closer] = squared[closer]
            self._nearest[closer] = n_stored
            self.rows_updated += n_items
            self._full_pass_streak += 1
        else:
            self._full_pass_streak = 0
            for start in range(0, rows_to_update.size, ROW_CHUNK):
                chunk = rows_to_update[start : start + ROW_CHUNK]
                squared = self.norms[chunk] - 2.0 * (self.embeddings[chunk] @ centre)
                squared += centre_norm
                np.maximum(squared, 0.0, out=squared)
                closer = squared < min_squared[chunk]
                min_squared[chunk[closer]] = squared[closer]
                self._nearest[chunk[closer]] = n_stored
            self.rows_updated += int(rows_to_update.size)
        self._nearest[row] = n_stored
        if n_stored == self._centres.shape[0]:
            self._centres = np.concatenate([self._centres, np.empty_like(self._centres)])
            self._centre_norms = np.concatenate(
                [self._centre_norms, np.empty_like(self._centre_norms)]
            )
        self._centres[n_stored] = centre
        self._centre_norms[n_stored] = centre_norm

    def distances(self) -> np.ndarray:
        """(n_runs, N) float32 Euclidean distance to the nearest centre (+inf with no centre)."""
        return np.sqrt(self.min_squared)


@dataclass(frozen=True, eq=False)
class KCenterResult:
    """Outcome of :func:`k_center_greedy`.

    Attributes:
        indices: (B,) int64 picks in order.
        pick_distances: (B,) float64 distance of each pick to its nearest centre when it was
            picked (+inf for a cold-start first pick: there was no centre yet).
        min_distances: (N,) float64 distance of every item to its nearest centre after the
            last pick (0 for labelled and picked items).
        first_pick: how the first pick was made (``"mean"``, ``"random"``, ``"given"`` or
            ``"farthest"`` when labelled items existed).
    """

    indices: np.ndarray
    pick_distances: np.ndarray
    min_distances: np.ndarray
    first_pick: str

    @property
    def coverage_cost(self) -> float:
        """Mean distance of the pool items to their nearest centre."""
        return float(self.min_distances.mean()) if self.min_distances.size else 0.0

    @property
    def covering_radius(self) -> float:
        """Largest distance of a pool item to its nearest centre."""
        return float(self.min_distances.max()) if self.min_distances.size else 0.0


def point_nearest_mean(
    embeddings: np.ndarray, rows: np.ndarray, norms: np.ndarray, chunk_rows: int = 65_536
) -> int:
    """The row (among ``rows``) nearest to the mean of ``rows``; ties → lowest row.

    Works chunk by chunk, so no copy of the (selected) embedding rows is ever made.

    Args:
        embeddings: (N, D) float32 pool.
        rows: (M,) ascending candidate rows, M ≥ 1.
        norms: (N,) squared row norms.
        chunk_rows: rows per chunk.
    """
    all_rows = rows.size == embeddings.shape[0]
    total = np.zeros(embeddings.shape[1], dtype=np.float64)
    for start in range(0, rows.size, chunk_rows):
        block = (
            embeddings[start : start + chunk_rows]
            if all_rows
            else embeddings[rows[start : start + chunk_rows]]
        )
        total += block.sum(axis=0, dtype=np.float64)
    mean = (total / rows.size).astype(np.float32)
    # ‖x − m‖² = ‖x‖² − 2 x·m + ‖m‖²; the last term is common to all rows.
    best_row, best_value = -1, np.inf
    for start in range(0, rows.size, chunk_rows):
        chunk = rows[start : start + chunk_rows]
        block = embeddings[start : start + chunk_rows] if all_rows else embeddings[chunk]
        squared = norms[chunk] - 2.0 * (block @ mean)
        position = int(np.argmin(squared))
        if squared[position] < best_value:  # strict: an earlier chunk wins ties
            best_row, best_value = int(chunk[position]), float(squared[position])
    return best_row


NEAR_TIE_RELATIVE = 1e-5
"""Candidates whose float32 squared distance is within this fraction of the ‖x‖² scale of the
best one are re-ranked with exact float64 distances (float32 dot products over D = 256
dimensions err by ~1e-6 relative)."""
NEAR_TIE_MAX_ROWS = 256


def diversity_resolution(norm_scale: float) -> float:
    """The smallest range of δ over the candidates that float32 distances can resolve.

    δ² comes from ‖x‖² + ‖c‖² − 2x·c, whose rounding error is ~1e-7·‖x‖²: an exact duplicate of a
    centre gets δ of up to ~1e-3·‖x‖ instead of 0, and which duplicate gets how much depends on
    the order of the sums (matrix-vector or matrix-matrix products). A δ range below this
    (e.g. every candidate left is a duplicate of a centre) is no range: δ̂ is then ≡ 1, as for
    equal distances, instead of normalised rounding noise.

    Args:
        norm_scale: max ‖x‖² over the pool.
    """
    return float(np.sqrt(NEAR_TIE_RELATIVE * norm_scale))


EXACT_CENTRES_MAX_SHARED = 65_536
"""Labelled centres kept as a float64 copy for near-tie re-ranking (above: converted per use)."""


class ExactCentres:
    """Float64 copies of the centres of each run, for exact re-ranking of near-ties.

    Args:
        embeddings: (N, D) float32 pool.
        labelled_rows: (L,) centres shared by every run.
        n_runs: number of runs.
        budget: picks per run.
    """

    def __init__(
        self, embeddings: np.ndarray, labelled_rows: np.ndarray, n_runs: int, budget: int
    ) -> None:
        self.embeddings = embeddings
        self.labelled_rows = labelled_rows
        self.shared: np.ndarray | None = None
        self.shared_norms: np.ndarray | None = None
        if labelled_rows.size <= EXACT_CENTRES_MAX_SHARED:
            self.shared = embeddings[labelled_rows].astype(np.float64)
            self.shared_norms = (self.shared**2).sum(axis=1)
        dim = embeddings.shape[1]
        self.picked = np.empty((n_runs, budget, dim), dtype=np.float64)
        self.picked_norms = np.empty((n_runs, budget), dtype=np.float64)
        self.n_picked = np.zeros(n_runs, dtype=np.int64)

    @property
    def has_centres(self) -> bool:
        """Whether there is at least one centre in every run."""
        return bool(self.labelled_rows.size > 0 or self.n_picked.min() > 0)

    def add(self, run: int, row: int) -> None:
        """Records ``row`` as the next pick of ``run``."""
        position = self.n_picked[run]
        self.picked[run, position] = self.embeddings[row]
        self.picked_norms[run, position] = (self.picked[run, position] ** 2).sum()
        self.n_picked[run] += 1

    def min_squared(self, run: int, rows: np.ndarray) -> np.ndarray:
        """(k,) float64 squared distance of ``rows`` to their nearest centre of ``run``.

        Float64 norm expansion: rounding ~1e-14·‖x‖², far below float32 resolution.
        """
        points = self.embeddings[rows].astype(np.float64)
        point_norms = (points**2).sum(axis=1)
        best = np.full(rows.size, np.inf)
        count = int(self.n_picked[run])
        blocks = [(self.picked[run, :count], self.picked_norms[run, :count])]
        if self.shared is not None and self.shared_norms is not None:
            blocks.append((self.shared, self.shared_norms))
        else:
            for start in range(0, self.labelled_rows.size, 4096):
                centres = self.embeddings[self.labelled_rows[start : start + 4096]]
                centres = centres.astype(np.float64)
                blocks.append((centres, (centres**2).sum(axis=1)))
        for centres, centre_norms in blocks:
            if centres.shape[0]:
                squared = point_norms[:, None] + centre_norms[None, :] - 2.0 * (points @ centres.T)
                np.minimum(best, squared.min(axis=1), out=best)
        return np.maximum(best, 0.0)


def farthest_candidate(
    min_squared: np.ndarray,
    candidate: np.ndarray,
    exact_centres: ExactCentres,
    norm_scale: float,
    run: int = 0,
) -> int:
    """The candidate farthest from its nearest centre; ties → lowest index.

    The float32 distances of the incremental update carry rounding errors; candidates within
    that error of the maximum are re-ranked with exact float64 distances, so that the picks do
    not depend on BLAS rounding and agree with a float64 reference implementation.

    Args:
        min_squared: (N,) float32 nearest-centre squared distances.
        candidate: (N,) bool current candidates.
        exact_centres: float64 centres for the re-ranking.
        norm_scale: max ‖x‖² over the pool (scale of the rounding errors).
        run: which run of ``exact_centres``.
    """
    masked = np.where(candidate, min_squared, -np.inf)
    best = int(np.argmax(masked))
    top = float(masked[best])
    if not np.isfinite(top) or not exact_centres.has_centres:
        return best
    near = np.flatnonzero(masked >= top - NEAR_TIE_RELATIVE * (top + norm_scale))
    if near.size < 2 or near.size > NEAR_TIE_MAX_ROWS:
        return best
    return int(near[int(np.argmax(exact_centres.min_squared(run, near)))])


def k_center_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    first_pick: FirstPick = "mean",
    seed: int | np.random.Generator = 0,
    blas_threads: int | None = GREEDY_BLAS_THREADS,
    method: Literal["lazy", "eager"] = "lazy",
) -> KCenterResult:
    """Greedy k-center (farthest-first traversal): each pick maximises the distance to its
    nearest centre, centres being the labelled items and the earlier picks.

    Args:
        embeddings: (N, D) float32 pool.
        labelled: (N,) bool mask of labelled items (the initial centres).
        budget: number of picks, ≤ number of unlabelled items.
        first_pick: used only at cold start (no labelled item): ``"mean"`` = the item nearest
            the pool mean, ``"random"`` = a seeded uniform choice, or an explicit unlabelled
            row (honoured also when labelled items exist). With labelled items and a string
            ``first_pick``, the first pick is simply the farthest item from the labelled set.
        seed: seed or Generator for ``first_pick="random"``.
        blas_threads: BLAS threads during the loop (``None`` = leave the setting alone); see
            :func:`alframe.scoring.distances.blas_thread_limit`.
        method: ``"lazy"`` (default; upper bounds refreshed only for the leading candidates,
            see :mod:`alframe.scoring.lazy_kcenter`) or ``"eager"`` (one pass over the pool per
            pick, with triangle-inequality pruning). Both return the same picks.

    Returns:
        The picks, their distances at pick time and the final nearest-centre distances.
        Ties → lowest index. Cost: ``budget`` passes over ``embeddings``; memory O(N).
    """
    if method not in ("lazy", "eager"):
        raise ConfigError(f"k-center method must be 'lazy' or 'eager', got {method!r}")
    return _k_center_greedy(embeddings, labelled, budget, first_pick, seed, method, blas_threads)


def _resolve_first_pick(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    norms: np.ndarray,
    first_pick: FirstPick,
    seed: int | np.random.Generator,
) -> tuple[int | None, str]:
    """The cold-start (or explicitly given) first pick; ``None`` = farthest from the labelled."""
    if isinstance(first_pick, int | np.integer) and not isinstance(first_pick, bool):
        first = int(first_pick)
        if not 0 <= first < embeddings.shape[0] or labelled[first]:
            raise ConfigError(f"first_pick {first} is not an unlabelled pool row")
        return first, "given"
    if first_pick not in ("mean", "random"):
        raise ConfigError(
            f"first_pick must be 'mean', 'random' or an unlabelled row, got {first_pick!r}"
        )
    if labelled.any():
        return None, "farthest"
    candidate_rows = np.flatnonzero(~labelled)
    if first_pick == "mean":
        return point_nearest_mean(embeddings, candidate_rows, norms), "mean"
    generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return int(generator.choice(candidate_rows)), "random"


def _lazy_k_center_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    first_pick: FirstPick,
    seed: int | np.random.Generator,
    blas_threads: int | None,
) -> KCenterResult:
    norms = squared_row_norms(embeddings)
    first, how = _resolve_first_pick(embeddings, labelled, norms, first_pick, seed)
    lazy = LazyFarthestFirst(embeddings, norms, labelled, budget)
    exact_centres = ExactCentres(embeddings, np.flatnonzero(labelled), 1, budget)
    norm_scale = float(norms.max())
    picks = np.empty(budget, dtype=np.int64)
    pick_distances = np.empty(budget, dtype=np.float64)
    with blas_thread_limit(blas_threads):  # many small products: one thread is faster
        for step in range(budget):
            if step == 0 and first is not None:
                pick = first
            else:
                pick = lazy.exact_top()
                top = lazy.value(pick)
                if exact_centres.has_centres and np.isfinite(top):
                    # Same near-tie rule as the eager version: re-rank in float64.
                    near = lazy.rows_at_least(top - NEAR_TIE_RELATIVE * (top + norm_scale))
                    if 2 <= near.size <= NEAR_TIE_MAX_ROWS:
                        pick = int(near[int(np.argmax(exact_centres.min_squared(0, near)))])
            picks[step] = pick
            pick_distances[step] = float(np.sqrt(lazy.value(pick)))
            lazy.add_centre(pick)
            exact_centres.add(0, pick)
    # One large, compute-bound product brings every distance up to date: all BLAS threads.
    squared = lazy.final_squared_distances(labelled, picks)
    return KCenterResult(
        indices=picks,
        pick_distances=pick_distances,
        min_distances=np.sqrt(squared).astype(np.float64),
        first_pick=how,
    )


def _k_center_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    first_pick: FirstPick,
    seed: int | np.random.Generator,
    method: str,
    blas_threads: int | None,
) -> KCenterResult:
    labelled = _check_inputs(embeddings, labelled, budget)
    if budget == 0:
        distances = np.sqrt(
            min_squared_distances_to_set(
                embeddings, squared_row_norms(embeddings), np.flatnonzero(labelled)
            )
        ).astype(np.float64)
        return KCenterResult(np.empty(0, np.int64), np.empty(0), distances, "none")
    if method == "lazy":
        return _lazy_k_center_greedy(embeddings, labelled, budget, first_pick, seed, blas_threads)
    with blas_thread_limit(blas_threads):
        return _eager_k_center_greedy(embeddings, labelled, budget, first_pick, seed)


def _eager_k_center_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    first_pick: FirstPick,
    seed: int | np.random.Generator,
) -> KCenterResult:
    state = CoverageState(embeddings, labelled, n_runs=1)
    picks = np.empty(budget, dtype=np.int64)
    pick_distances = np.empty(budget, dtype=np.float64)
    exact_centres = ExactCentres(embeddings, np.flatnonzero(labelled), 1, budget)
    norm_scale = float(state.norms.max())
    first, how = _resolve_first_pick(embeddings, labelled, state.norms, first_pick, seed)
    if first is None:
        first = farthest_candidate(
            state.min_squared[0], state.candidate[0], exact_centres, norm_scale
        )
    pick = first
    for step in range(budget):
        if step > 0:
            pick = farthest_candidate(
                state.min_squared[0], state.candidate[0], exact_centres, norm_scale
            )
        picks[step] = pick
        pick_distances[step] = float(np.sqrt(state.min_squared[0, pick]))
        state.add_centres(np.array([pick]))
        exact_centres.add(0, pick)
    return KCenterResult(
        indices=picks,
        pick_distances=pick_distances,
        min_distances=state.distances()[0].astype(np.float64),
        first_pick=how,
    )


def normalized_diversity(
    distances: np.ndarray, candidate: np.ndarray, has_centre: np.ndarray
) -> np.ndarray:
    """Min-max normalised diversity δ̂ over the current candidates, one row per run.

    Args:
        distances: (R, N) float32 nearest-centre distances δ.
        candidate: (R, N) bool current candidates U of each run.
        has_centre: (R,) bool; a run without any centre has δ ≡ 1 (spec: L = ∅).

    Returns:
        (R, N) float32 δ̂ (1 for every item when the range over U is degenerate).
    """
    low = np.where(candidate, distances, np.inf).min(axis=1)
    high = np.where(candidate, distances, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore"):  # inf − inf while a run has no centre yet
        width = high - low
    degenerate = ~has_centre | ~(width > 0) | ~np.isfinite(width)
    safe_low = np.where(degenerate, 0.0, low).astype(np.float32)
    safe_width = np.where(degenerate, 1.0, width).astype(np.float32)
    normalized = (distances - safe_low[:, None]) / safe_width[:, None]
    normalized[degenerate] = 1.0
    return normalized


def combine_terms(
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    diversity_hat: np.ndarray,
    alphas: np.ndarray,
    combine: Combine = "mul",
) -> np.ndarray:
    """The XSSR composite score.

    ``mul``: ρ̂·[α·ν̂ + (1−α)·δ̂] (density gates outliers out); ``add``: ρ̂ + α·ν̂ + (1−α)·δ̂.

    Args:
        density_hat: (N,) normalised density ρ̂.
        novelty_hat: (N,) normalised novelty ν̂.
        diversity_hat: (R, N) normalised diversity δ̂, one row per alpha.
        alphas: (R,) novelty weights in [0, 1].
        combine: ``"mul"`` or ``"add"``.

    Returns:
        (R, N) float32 scores.
    """
    alphas32 = np.asarray(alphas, dtype=np.float32)[:, None]
    mix = alphas32 * novelty_hat[None, :].astype(np.float32) + (1.0 - alphas32) * diversity_hat
    if combine == "mul":
        return mix * density_hat[None, :].astype(np.float32)
    if combine == "add":
        return mix + density_hat[None, :].astype(np.float32)
    raise ConfigError(f"combine must be 'mul' or 'add', got {combine!r}")


def _affine_parts(
    density_hat: np.ndarray, novelty_hat: np.ndarray, alphas: np.ndarray, combine: Combine
) -> tuple[np.ndarray, np.ndarray]:
    """(R, N) float32 static part and (R, N) or (R, 1) float32 slope of the composite in δ̂."""
    alphas32 = alphas.astype(np.float32)[:, None]
    density32 = density_hat.astype(np.float32)[None, :]
    novelty32 = novelty_hat.astype(np.float32)[None, :]
    if combine == "mul":
        return density32 * (alphas32 * novelty32), density32 * (1.0 - alphas32)
    return density32 + alphas32 * novelty32, (1.0 - alphas32).astype(np.float32)


def _scores_from_diversity(
    distances: np.ndarray,
    candidate: np.ndarray,
    has_centre: np.ndarray,
    static: np.ndarray,
    slope: np.ndarray,
    min_width: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite scores static + slope·δ̂, δ̂ min-max normalised over each run's candidates
    (δ̂ ≡ 1 when the range of δ is at most ``min_width``: see :func:`diversity_resolution`).

    Returns:
        ``(scores, low, width)``: (R, N) float32 scores and the (R,) float64 normalisation
        offsets and widths (width 0 marks a degenerate run, where δ̂ ≡ 1).
    """
    low = np.min(distances, axis=1, where=candidate, initial=np.inf).astype(np.float64)
    high = np.max(distances, axis=1, where=candidate, initial=-np.inf).astype(np.float64)
    with np.errstate(invalid="ignore"):
        width = high - low
    degenerate = ~has_centre | ~(width > min_width) | ~np.isfinite(width)
    width = np.where(degenerate, 0.0, width)
    low = np.where(degenerate, 0.0, low)
    scale = np.where(degenerate, 0.0, 1.0 / np.where(degenerate, 1.0, width))
    with np.errstate(invalid="ignore"):  # inf · 0 in runs without centres, overwritten below
        scores = distances - low.astype(np.float32)[:, None]
        scores *= scale.astype(np.float32)[:, None]
    if degenerate.any():
        scores[degenerate] = 1.0
    scores *= slope
    scores += static
    return scores, low, width


def near_tie_threshold(
    top: float, best_distance: float, width: float, norm_scale: float
) -> np.float32:
    """The float32 score above which a candidate may tie the best one within rounding error.

    A squared-distance error ε ≈ NEAR_TIE_RELATIVE·‖x‖² becomes ε / (2δ) on δ and
    ε / (2δ·width) on δ̂; the slope of the score in δ̂ is at most 1.

    Args:
        top: the best float32 score.
        best_distance: δ of the best candidate.
        width: the δ̂ normalisation width (≤ 0: degenerate).
        norm_scale: max ‖x‖² over the pool.
    """
    safe_width = width if width > 0 else 1.0
    tolerance = NEAR_TIE_RELATIVE * norm_scale / (2.0 * max(best_distance, 1e-12) * safe_width)
    tolerance += 1e-6 * (abs(top) + 1.0)  # float32 rounding of the score itself
    return np.float32(top - tolerance)


def exact_best_of(
    near: np.ndarray,
    run: int,
    low: float,
    width: float,
    exact_centres: ExactCentres,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alpha: float,
    combine: Combine,
) -> int:
    """The row among ``near`` with the best float64 score (exact δ; ties → first in ``near``).

    Args:
        near: (k,) ascending candidate rows within rounding error of the best score.
        run: which run of ``exact_centres``.
        low, width: the δ̂ normalisation of the step (width ≤ 0: δ̂ ≡ 1).
    """
    diversity = np.sqrt(exact_centres.min_squared(run, near))
    diversity_hat = (diversity - low) / width if width > 0 else 1.0
    density, novelty = density_hat[near], novelty_hat[near]
    if combine == "mul":
        exact = density * (alpha * novelty + (1.0 - alpha) * diversity_hat)
    else:
        exact = density + alpha * novelty + (1.0 - alpha) * diversity_hat
    return int(near[int(np.argmax(exact))])


def _refine_xssr_near_ties(
    scores: np.ndarray,
    picks: np.ndarray,
    distances: np.ndarray,
    low: np.ndarray,
    width: np.ndarray,
    exact_centres: ExactCentres,
    norm_scale: float,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alphas: np.ndarray,
    combine: Combine,
) -> None:
    """Re-ranks, in float64, the candidates whose float32 score is within rounding error of
    each run's best (updates ``picks`` in place; ties → lowest index)."""
    for run in range(scores.shape[0]):
        threshold = near_tie_threshold(
            float(scores[run, picks[run]]),
            float(distances[run, picks[run]]),
            float(width[run]),
            norm_scale,
        )
        near = np.flatnonzero(scores[run] >= threshold)
        if 2 <= near.size <= NEAR_TIE_MAX_ROWS:
            picks[run] = exact_best_of(
                near,
                run,
                float(low[run]),
                float(width[run]),
                exact_centres,
                density_hat,
                novelty_hat,
                float(alphas[run]),
                combine,
            )


@dataclass(frozen=True, eq=False)
class XssrGreedyResult:
    """Outcome of :func:`xssr_greedy`, one row per alpha.

    Attributes:
        alphas: (R,) the alphas, in the order given.
        indices: (R, B) int64 picks in order.
        pick_scores: (R, B) float64 composite score of each pick when it was picked.
        pick_diversity: (R, B) float64 raw δ of each pick when it was picked (+inf: no centre).
        pick_diversity_hat: (R, B) float64 normalised δ̂ of each pick when it was picked.
        min_distances: (R, N) float32 nearest-centre distance after the last pick.
        coverage_cost: (R,) mean over the pool of ``min_distances`` (labelled items count 0).
        covering_radius: (R,) max over the pool of ``min_distances``.
    """

    alphas: np.ndarray
    indices: np.ndarray
    pick_scores: np.ndarray
    pick_diversity: np.ndarray
    pick_diversity_hat: np.ndarray
    min_distances: np.ndarray
    coverage_cost: np.ndarray
    covering_radius: np.ndarray


def xssr_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    combine: Combine = "mul",
    blas_threads: int | None = GREEDY_BLAS_THREADS,
    method: Literal["auto", "eager", "lazy"] = "auto",
) -> XssrGreedyResult:
    """XSSR greedy selection for one or several alphas at once (docs/methods/xssr.md).

    Each step, for each alpha: δ̂ = min-max of δ over the current candidates, score =
    :func:`combine_terms`, pick the argmax (ties → lowest index), update δ incrementally.

    Args:
        embeddings: (N, D) float32 pool.
        labelled: (N,) bool labelled mask.
        budget: picks per alpha, ≤ number of unlabelled items.
        density_hat: (N,) normalised density (all ones to switch density off).
        novelty_hat: (N,) normalised novelty (zeros without a source set).
        alphas: R values in [0, 1].
        combine: ``"mul"`` or ``"add"``.
        blas_threads: BLAS threads during the loop (``None`` = leave the setting alone).
        method: ``"eager"``: δ of every item updated after each pick (one pass per pick, all
            alphas in lock-step); ``"lazy"`` (one alpha only): new centres applied to the pool
            in blocks, exact values only where a pick needs them
            (:mod:`alframe.scoring.lazy_xssr`); ``"auto"`` (default): lazy for one alpha,
            eager for several. Both give the same picks, up to float32 near-ties.

    Returns:
        Per-alpha picks, pick-time terms and final coverage. Cost (eager): ``budget + 1``
        passes over ``embeddings`` in total (not per alpha) plus O(R·N) vector work per pick;
        lazy: about one pass per block of up to 32 picks plus O(N) vector work per pick.
    """
    if method not in ("auto", "eager", "lazy"):
        raise ConfigError(f"xssr greedy method must be auto, eager or lazy, got {method!r}")
    with blas_thread_limit(blas_threads):
        return _xssr_greedy(
            embeddings, labelled, budget, density_hat, novelty_hat, alphas, combine, method
        )


def _xssr_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    combine: Combine,
    method: str = "auto",
) -> XssrGreedyResult:
    labelled = _check_inputs(embeddings, labelled, budget)
    alpha_array = np.asarray(list(alphas), dtype=np.float64)
    if alpha_array.ndim != 1 or alpha_array.size == 0:
        raise ConfigError("alphas must be a non-empty sequence of numbers in [0, 1]")
    if not np.all((alpha_array >= 0) & (alpha_array <= 1)):
        raise ConfigError(f"every alpha must lie in [0, 1], got {alpha_array.tolist()}")
    if combine not in ("mul", "add"):
        raise ConfigError(f"combine must be 'mul' or 'add', got {combine!r}")
    n_items = embeddings.shape[0]
    for name, term in (("density_hat", density_hat), ("novelty_hat", novelty_hat)):
        if np.shape(term) != (n_items,) or not np.all(np.isfinite(term)):
            raise DataError(f"{name} must be ({n_items},) finite values")
    n_runs = alpha_array.size
    if method == "lazy" and n_runs > 1:
        raise ConfigError("the lazy XSSR greedy runs one alpha; use method='eager' for several")
    if method == "lazy" or (method == "auto" and n_runs == 1):
        from alframe.scoring.lazy_xssr import lazy_xssr_greedy

        result, _ = lazy_xssr_greedy(
            embeddings,
            labelled,
            budget,
            np.asarray(density_hat),
            np.asarray(novelty_hat),
            float(alpha_array[0]),
            combine,
        )
        return result
    state = CoverageState(embeddings, labelled, n_runs=n_runs)
    picks = np.empty((n_runs, budget), dtype=np.int64)
    pick_scores = np.empty((n_runs, budget), dtype=np.float64)
    pick_diversity = np.empty((n_runs, budget), dtype=np.float64)
    pick_diversity_hat = np.empty((n_runs, budget), dtype=np.float64)
    run_index = np.arange(n_runs)
    # The composite is affine in δ̂ for both combine modes: score = static + slope · δ̂, with
    # mul: static = ρ̂·α·ν̂, slope = ρ̂·(1 − α);  add: static = ρ̂ + α·ν̂, slope = 1 − α.
    # Precomputing both keeps the per-pick work to a few streaming passes. Non-candidates get a
    # static part of −inf so that they can never be picked.
    static, slope = _affine_parts(density_hat, novelty_hat, alpha_array, combine)
    static[:, labelled] = -np.inf
    exact_centres = ExactCentres(embeddings, np.flatnonzero(labelled), n_runs, budget)
    norm_scale = float(state.norms.max()) if n_items else 0.0
    min_width = diversity_resolution(norm_scale)
    for step in range(budget):
        distances = state.distances()
        scores, low, width = _scores_from_diversity(
            distances, state.candidate, state.n_centres > 0, static, slope, min_width
        )
        step_picks = np.argmax(scores, axis=1)  # first maximum: ties → lowest index
        if exact_centres.has_centres:
            _refine_xssr_near_ties(
                scores,
                step_picks,
                distances,
                low,
                width,
                exact_centres,
                norm_scale,
                density_hat,
                novelty_hat,
                alpha_array,
                combine,
            )
        picks[:, step] = step_picks
        pick_scores[:, step] = scores[run_index, step_picks]
        pick_distances = distances[run_index, step_picks].astype(np.float64)
        pick_diversity[:, step] = pick_distances
        with np.errstate(invalid="ignore"):
            pick_diversity_hat[:, step] = np.where(
                width > 0, (pick_distances - low) / np.where(width > 0, width, 1.0), 1.0
            )
        static[run_index, step_picks] = -np.inf
        state.add_centres(step_picks)
        for run in range(n_runs):
            exact_centres.add(run, int(step_picks[run]))
    return xssr_result(
        alpha_array,
        picks,
        pick_scores,
        pick_diversity,
        pick_diversity_hat,
        state.distances(),
        has_centre=budget > 0 or bool(labelled.any()),
    )


def xssr_result(
    alphas: np.ndarray,
    picks: np.ndarray,
    pick_scores: np.ndarray,
    pick_diversity: np.ndarray,
    pick_diversity_hat: np.ndarray,
    final_distances: np.ndarray,
    has_centre: bool,
) -> XssrGreedyResult:
    """An :class:`XssrGreedyResult` with the coverage cost and radius of ``final_distances``
    ((R, N); +inf for both when there is no centre at all)."""
    n_runs = final_distances.shape[0]
    if has_centre:
        coverage = final_distances.mean(axis=1, dtype=np.float64)
        radius = final_distances.max(axis=1).astype(np.float64)
    else:
        coverage, radius = np.full(n_runs, np.inf), np.full(n_runs, np.inf)
    return XssrGreedyResult(
        alphas=alphas,
        indices=picks,
        pick_scores=pick_scores,
        pick_diversity=pick_diversity,
        pick_diversity_hat=pick_diversity_hat,
        min_distances=final_distances,
        coverage_cost=coverage,
        covering_radius=radius,
    )


def coverage_cost(embeddings: np.ndarray, centre_rows: np.ndarray) -> tuple[float, float]:
    """Facility-location coverage of a set of centres: (mean, max) nearest-centre distance.

    Args:
        embeddings: (N, D) float32 pool.
        centre_rows: (M,) rows of the centres (labelled and selected items), M ≥ 1.

    Returns:
        ``(C, radius)``: mean over the pool of min over centres of d(x, l), and its maximum.
    """
    if np.asarray(centre_rows).size == 0:
        raise DataError("coverage needs at least one centre (labelled or selected item)")
    squared = min_squared_distances_to_set(embeddings, squared_row_norms(embeddings), centre_rows)
    distances = np.sqrt(squared)
    return float(distances.mean(dtype=np.float64)), float(distances.max())


def choose_alpha(alphas: np.ndarray, costs: np.ndarray) -> int:
    """Position of the alpha with the smallest coverage cost; ties → the smaller alpha.

    Costs within a relative ``ALPHA_TIE_TOLERANCE`` of the minimum are ties, so that float
    rounding differences between identical selections cannot favour a larger alpha.
    """
    costs = np.asarray(costs, dtype=np.float64)
    best = float(np.min(costs))
    tolerance = ALPHA_TIE_TOLERANCE * max(abs(best), 1e-12) if np.isfinite(best) else 0.0
    tied = np.flatnonzero(costs <= best + tolerance)
    return int(tied[np.argmin(np.asarray(alphas)[tied])])


@dataclass(frozen=True, eq=False)
class AlphaCalibration:
    """Outcome of :func:`calibrate_alpha`.

    Attributes:
        alpha: the chosen α* (argmin of the coverage cost, ties → smaller).
        alphas: (R,) the grid.
        coverage_cost: (R,) C(α) of each grid value.
        covering_radius: (R,) covering radius of each grid value.
        calibration_rows: rows of the pool used (all rows unless subsampled).
        calibration_budget: picks made per alpha during calibration.
        greedy: the lock-step greedy run (on the subsample when subsampled).
        subsampled: whether the calibration ran on a subsample of the pool.
    """

    alpha: float
    alphas: np.ndarray
    coverage_cost: np.ndarray
    covering_radius: np.ndarray
    calibration_rows: np.ndarray
    calibration_budget: int
    greedy: XssrGreedyResult
    subsampled: bool


def calibrate_alpha(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHA_GRID,
    combine: Combine = "mul",
    subsample: int | None = None,
    seed: int = 0,
) -> AlphaCalibration:
    """Chooses α by minimising the coverage cost C(α) of the greedy selection over a grid.

    C(α) = mean over the pool of the distance to the nearest labelled-or-selected item.

    With ``subsample`` smaller than the pool, the calibration runs on a seeded uniform subsample
    of the pool (labelled and unlabelled items alike, so the whole problem shrinks by the same
    fraction f) with the budget scaled to ``max(1, round(budget · f_unlabelled))``; the density
    and novelty values stay those normalised over the full pool.

    Args:
        embeddings: (N, D) float32 pool.
        labelled: (N,) bool.
        budget: picks of the real selection.
        density_hat: (N,) normalised density.
        novelty_hat: (N,) normalised novelty.
        alphas: the grid (default 0.0, 0.1, …, 1.0).
        combine: ``"mul"`` or ``"add"``.
        subsample: maximum number of pool items used; ``None`` = the whole pool.
        seed: seed of the subsample.

    Returns:
        The chosen alpha, the coverage curve, and the greedy run it came from.
    """
    labelled = np.asarray(labelled, dtype=bool)
    n_items = embeddings.shape[0]
    alpha_array = np.asarray(list(alphas), dtype=np.float64)
    if subsample is not None and (isinstance(subsample, bool) or subsample < 2):
        raise ConfigError(f"calibration_subsample must be ≥ 2 or None, got {subsample!r}")
    rows = np.arange(n_items, dtype=np.int64)
    calibration_budget = int(budget)
    if subsample is not None and subsample < n_items:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n_items, size=subsample, replace=False)).astype(np.int64)
        n_candidates = int((~labelled).sum())
        sub_candidates = int((~labelled[rows]).sum())
        if sub_candidates == 0:  # pathological: every sampled item is labelled
            extra = np.flatnonzero(~labelled)[: max(1, budget)]
            rows = np.union1d(rows, extra).astype(np.int64)
            sub_candidates = int((~labelled[rows]).sum())
        scaled = round(budget * sub_candidates / max(n_candidates, 1))
        calibration_budget = int(min(sub_candidates, max(1, scaled))) if budget > 0 else 0
        greedy = xssr_greedy(
            np.ascontiguousarray(embeddings[rows]),
            labelled[rows],
            calibration_budget,
            density_hat[rows],
            novelty_hat[rows],
            alpha_array,
            combine,
        )
    else:
        greedy = xssr_greedy(
            embeddings, labelled, budget, density_hat, novelty_hat, alpha_array, combine
        )
    chosen = choose_alpha(alpha_array, greedy.coverage_cost)
    return AlphaCalibration(
        alpha=float(alpha_array[chosen]),
        alphas=alpha_array,
        coverage_cost=greedy.coverage_cost,
        covering_radius=greedy.covering_radius,
        calibration_rows=rows,
        calibration_budget=calibration_budget,
        greedy=greedy,
        subsampled=bool(rows.size < n_items),
    )
