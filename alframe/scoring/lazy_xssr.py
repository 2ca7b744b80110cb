"""One-alpha XSSR greedy without a pass over the pool per pick (speculative blocks).

The eager greedy (:func:`alframe.scoring.greedy.xssr_greedy`) updates every item's distance to
its nearest centre δ after each pick: one matrix-vector pass over the N × D pool per pick. On
clustered pools its triangle-inequality pruning skips most rows; on unstructured
high-dimensional pools it cannot, and the pass dominates.

Here the new centres are not applied to the pool one by one. They are kept *pending* and applied
in blocks of up to ``MAX_BLOCK`` with one thin matrix product (about the memory traffic of a
single pass, for up to 32 picks). Between two block passes every item keeps an upper bound of
δ (exact as of the last pass, lowered when refreshed); a pick needs exact values only for a few
rows, which are refreshed against the pending centres (a few dot products each):

- ``high`` (the largest δ over the candidates) as in the lazy k-center greedy: refresh the
  leaders until the largest bound is exact;
- the best composite score: the score is non-decreasing in δ, so a bound of δ gives a bound of
  the score; refresh the contenders until the best one is exact (and every candidate within
  rounding error of it, which is re-ranked in float64 exactly as in the eager greedy).

The one term that bounds cannot give is ``low``, the smallest δ over the candidates, which the
min-max normalisation of δ̂ needs: a pending centre may have brought some unrefreshed item
closer than ``low``. It is taken *speculatively* as the smallest current bound, and checked when
the block pass has the exact distances: if the true ``low`` of some step of the block was
smaller (beyond float32 rounding), the picks from that step on are discarded, the earlier ones
committed, and the greedy resumes from that step with exact values. ``low`` seldom changes on
unstructured pools (a new centre's nearest neighbour must set a new record), so blocks rarely
roll back there; on clustered pools (dense picks whose neighbours are close) they do more often,
so the block size adapts: doubled after a block that holds, cut back to the steps that held
after one that does not. Picks therefore equal the eager greedy's, except where the two
differ only by float32 rounding: the distances come from different products (a thin matrix
product or a few dot products instead of matrix-vector ones), so an exact tie of two scores
may be broken differently (``benchmarks/lazy_xssr_agreement.py``: 2 exact ties in 1,500
adversarial pools, and 1 float32 near-tie in 66 selections on real MAE embeddings, where the
lazy pick was the float64-exact best).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from alframe.scoring.distances import (
    ROW_CHUNK,
    blas_thread_limit,
    nearest_centres,
    squared_row_norms,
)
from alframe.scoring.greedy import (
    NEAR_TIE_MAX_ROWS,
    Combine,
    ExactCentres,
    XssrGreedyResult,
    _affine_parts,
    diversity_resolution,
    exact_best_of,
    near_tie_threshold,
    xssr_result,
)

PASS_BLAS_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
"""BLAS threads of a block pass: a thin product of up to 32 columns is compute-bound, unlike the
greedy's single-row products (see :func:`alframe.scoring.distances.blas_thread_limit`)."""
MAX_BLOCK = 32
"""Largest number of pending centres applied to the pool in one pass."""
FIRST_BLOCK = 4
"""Block size at the start (it doubles after every block whose speculation held)."""
SINGLE_REFRESHES = 16
"""Leaders refreshed one at a time before all stale contenders are refreshed at once."""


@dataclass
class _Block:
    """Centres picked since the last pass, with what each step assumed."""

    rows: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    assumed_low_squared: list[float] = field(default_factory=list)
    """Per step of the block: the smallest candidate bound of δ² it used as ``low``²."""
    first_step: int = 0

    def clear(self, first_step: int) -> None:
        self.rows.clear()
        self.vectors.clear()
        self.norms.clear()
        self.assumed_low_squared.clear()
        self.first_step = first_step


class _Bounds:
    """Upper bounds of the nearest-centre squared distances, exact after each block pass.

    Attributes:
        committed: (N,) float32 exact δ² against the labelled items and every committed pick.
        bound: (N,) float32 δ² bounds: ``committed`` lowered by the refreshes against the
            pending centres; −inf for non-candidates (so ``max`` skips them).
        low_bound: (N,) float32 the same bounds with +inf for non-candidates (for ``min``).
        checked: (N,) int32 how many of the pending centres ``bound`` accounts for (all of
            them: the bound is exact).
    """

    def __init__(self, embeddings: np.ndarray, norms: np.ndarray, labelled: np.ndarray) -> None:
        self.embeddings = embeddings
        self.norms = norms
        initial, _ = nearest_centres(embeddings, norms, np.flatnonzero(labelled))
        self.committed = initial
        self.bound = np.where(labelled, -np.inf, initial).astype(np.float32)
        self.low_bound = np.where(labelled, np.inf, initial).astype(np.float32)
        self.checked = np.zeros(embeddings.shape[0], dtype=np.int32)
        self.refreshed_rows = 0

    def refresh(self, rows: np.ndarray, block: _Block) -> None:
        """Makes the bounds of the candidate ``rows`` exact, checking each against the pending
        centres it has not seen yet (one small product per group of rows that saw as many)."""
        n_pending = len(block.rows)
        rows = rows[(self.checked[rows] < n_pending) & (self.bound[rows] > -np.inf)]
        if rows.size == 0:
            return
        centres = np.stack(block.vectors)  # (P, D)
        centre_norms = np.asarray(block.norms, dtype=np.float32)
        seen = self.checked[rows]
        for first in np.unique(seen):
            group = rows[seen == first]
            squared = self.embeddings[group] @ centres[first:].T  # (k, P − first)
            squared *= -2.0
            squared += self.norms[group, None]
            squared += centre_norms[None, first:]
            values = np.maximum(squared.min(axis=1), 0.0)
            values = np.minimum(values, self.bound[group])
            self.bound[group] = values
            self.low_bound[group] = values
            self.refreshed_rows += int(group.size) * (n_pending - int(first))
        self.checked[rows] = n_pending

    def drop_candidate(self, row: int) -> None:
        self.bound[row] = -np.inf
        self.low_bound[row] = np.inf

    def exact_high_squared(self, block: _Block) -> float:
        """The largest exact δ² over the candidates (−inf without candidates)."""
        best = _exact_argmax(self.bound, lambda rows: self.refresh(rows, block), self, block)
        return float(self.bound[best])


def _exact_argmax(
    values: np.ndarray, refresh: Callable[[np.ndarray], None], bounds: _Bounds, block: _Block
) -> int:
    """Row of the largest of ``values`` once it is exact (ties → lowest row).

    ``values`` are upper bounds for stale rows and exact for fresh ones; ``refresh(rows)`` makes
    those rows exact and updates ``values`` in place. Refreshes the leader one at a time (it
    usually keeps its value: a pending centre is rarely the nearest one of a far item); after
    ``SINGLE_REFRESHES`` of them, every stale row reaching the best exact value at once.
    """
    for _ in range(SINGLE_REFRESHES):
        best = int(np.argmax(values))
        if bounds.checked[best] == len(block.rows):
            # Rows before it are lower; a stale row after it reaching its value can at most tie.
            return best
        refresh(np.array([best]))
    while True:
        best = int(np.argmax(values))
        if bounds.checked[best] == len(block.rows):
            return best
        fresh = bounds.checked == len(block.rows)
        best_exact = float(np.max(values, where=fresh, initial=-np.inf))
        refresh(np.flatnonzero((values >= best_exact) & ~fresh))


def _pass_block(
    embeddings: np.ndarray,
    norms: np.ndarray,
    committed: np.ndarray,
    candidate_at_start: np.ndarray,
    block: _Block,
    n_centres: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Applies the first ``n_centres`` pending centres to the whole pool in one thin product.

    Returns:
        ``(updated, true_low_squared)``: (N,) float32 δ² against the committed centres and the
        first ``n_centres`` pending ones, and (n_centres,) float64 exact ``low``² of each step of
        the block (the smallest δ² over that step's candidates; entry 0 is not checked).
    """
    n_items = embeddings.shape[0]
    centres = np.stack(block.vectors[:n_centres])  # (P, D)
    centres_t = np.ascontiguousarray(centres.T)
    centre_norms = np.asarray(block.norms[:n_centres], dtype=np.float32)
    block_rows = np.asarray(block.rows[:n_centres], dtype=np.int64)
    # Step j of the block saw the centres 0..j−1 and its own candidates: the candidates at the
    # block's start less the block's picks made before step j. The rows that stay candidates
    # all along are reduced per centre over the whole pool; the block's own picks (a few) are
    # added step by step below.
    steady = candidate_at_start.copy()
    steady[block_rows] = False
    unsteady = np.flatnonzero(~steady)  # labelled and picked rows: a (sorted) minority
    updated = np.empty_like(committed)
    nearest_per_centre = np.full(n_centres, np.inf, dtype=np.float32)
    with blas_thread_limit(PASS_BLAS_THREADS):
        for start in range(0, n_items, ROW_CHUNK):
            stop = min(start + ROW_CHUNK, n_items)
            squared = np.asarray(embeddings[start:stop]) @ centres_t  # (chunk, P)
            squared *= -2.0
            squared += norms[start:stop, None]
            squared += centre_norms[None, :]
            np.maximum(squared, 0.0, out=squared)
            np.minimum(committed[start:stop], squared.min(axis=1), out=updated[start:stop])
            lo, hi = np.searchsorted(unsteady, [start, stop])
            squared[unsteady[lo:hi] - start] = np.inf
            # (P,) squared distance of each centre to its nearest steady candidate
            np.minimum(nearest_per_centre, squared.min(axis=0), out=nearest_per_centre)
    base = float(np.where(steady, committed, np.inf).min())
    # true low² of step j = min(base, nearest steady candidate of centres 0..j−1, the block's
    # picks still candidates at step j).
    true_low = np.full(n_centres, np.inf)
    if n_centres > 1:
        true_low[1:] = np.minimum(base, np.minimum.accumulate(nearest_per_centre[:-1]))
        among_picks = block_rows[:, None] == block_rows[None, :]  # a pick is its own centre
        pick_squared = centre_norms[:, None] + centre_norms[None, :] - 2.0 * (centres @ centres_t)
        pick_squared = np.where(among_picks, 0.0, np.maximum(pick_squared, 0.0))
        for picked_step in range(1, n_centres):  # pick p is a candidate up to step p
            row = block_rows[picked_step]
            seen = np.minimum.accumulate(pick_squared[picked_step, :picked_step])
            values = np.minimum(committed[row], seen)  # δ² at steps 1..p
            np.minimum(true_low[1 : picked_step + 1], values, out=true_low[1 : picked_step + 1])
    return updated, true_low


def lazy_xssr_greedy(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alpha: float,
    combine: Combine,
) -> tuple[XssrGreedyResult, dict[str, int]]:
    """The XSSR greedy for one alpha with speculative block updates (see the module docstring).

    Args:
        embeddings: (N, D) float32 pool (an array or an :class:`alframe._rows.OnDiskRows`).
        labelled: (N,) bool, checked by the caller.
        budget: picks, ≤ the unlabelled items.
        density_hat, novelty_hat: (N,) normalised terms.
        alpha: the novelty weight.
        combine: ``"mul"`` or ``"add"``.

    Returns:
        The result (one run) and counters: ``passes`` (block passes over the pool),
        ``rollbacks`` (blocks cut short by a wrong ``low``), ``refreshed_rows`` (item-centre
        distances computed outside the passes).
    """
    n_items = embeddings.shape[0]
    # score = static + slope·δ̂, the same parts as the eager greedy; picks get static −inf.
    static_parts, slope_parts = _affine_parts(
        density_hat, novelty_hat, np.array([alpha], dtype=np.float64), combine
    )
    static = static_parts[0]
    static[labelled] = -np.inf
    slope = np.broadcast_to(slope_parts, (1, n_items))[0].copy()
    norms = squared_row_norms(embeddings)
    norm_scale = float(norms.max()) if n_items else 0.0
    min_width = diversity_resolution(norm_scale)
    bounds = _Bounds(embeddings, norms, labelled)
    original_static = static.copy()
    exact_centres = ExactCentres(embeddings, np.flatnonzero(labelled), 1, budget)
    candidate = ~labelled
    n_labelled = int(labelled.sum())
    picks = np.empty(budget, dtype=np.int64)
    pick_scores = np.empty(budget, dtype=np.float64)
    pick_diversity = np.empty(budget, dtype=np.float64)
    pick_diversity_hat = np.empty(budget, dtype=np.float64)
    block = _Block()
    block_size = FIRST_BLOCK
    candidate_at_start = candidate.copy()
    counters = {"passes": 0, "rollbacks": 0}
    step = 0
    while True:
        if block.rows and (step == budget or len(block.rows) >= block_size):
            held = _commit_block(embeddings, norms, bounds, candidate_at_start, block, norm_scale)
            counters["passes"] += 1 + (held < len(block.rows))
            if held < len(block.rows):
                counters["rollbacks"] += 1
                for undone in block.rows[held:]:  # candidates again (their bounds: reset)
                    static[undone] = original_static[undone]
                    candidate[undone] = True
                step = block.first_step + held
                exact_centres.n_picked[0] = step
                block_size = max(1, held)
            else:
                block_size = min(MAX_BLOCK, 2 * block_size)
            block.clear(step)
            candidate_at_start = candidate.copy()
            continue
        if step == budget:
            break
        has_centre = n_labelled + step > 0
        if has_centre:
            high_squared = bounds.exact_high_squared(block)
            low_squared = float(bounds.low_bound.min())
        else:
            high_squared = low_squared = np.inf
        # Same float32 arithmetic as the eager greedy's normalisation.
        low = float(np.sqrt(np.float32(low_squared)))
        high = float(np.sqrt(np.float32(high_squared)))
        with np.errstate(invalid="ignore"):
            width = high - low
        degenerate = not has_centre or not (width > min_width) or not np.isfinite(width)
        if degenerate:
            width, low = 0.0, 0.0
        pick, score, distance = _best_candidate(
            bounds, block, static, slope, low, width, degenerate, has_centre, norm_scale,
            exact_centres, density_hat, novelty_hat, alpha, combine,
        )  # fmt: skip
        picks[step] = pick
        pick_scores[step] = score
        pick_diversity[step] = distance
        pick_diversity_hat[step] = (distance - low) / width if width > 0 else 1.0
        block.rows.append(pick)
        block.vectors.append(np.asarray(embeddings[pick], dtype=np.float32))
        block.norms.append(float(norms[pick]))
        block.assumed_low_squared.append(low_squared)
        static[pick] = -np.inf
        candidate[pick] = False
        bounds.drop_candidate(pick)
        exact_centres.add(0, pick)
        step += 1
        if not np.isfinite(bounds.committed).any():
            block_size = 1  # no committed centre yet: every bound is +inf until a pass
    committed = bounds.committed
    committed[picks] = 0.0
    counters["refreshed_rows"] = bounds.refreshed_rows
    result = xssr_result(
        np.array([alpha], dtype=np.float64),
        picks[None, :],
        pick_scores[None, :],
        pick_diversity[None, :],
        pick_diversity_hat[None, :],
        np.sqrt(committed)[None, :],
        has_centre=budget > 0 or bool(labelled.any()),
    )
    return result, counters


def _commit_block(
    embeddings: np.ndarray,
    norms: np.ndarray,
    bounds: _Bounds,
    candidate_at_start: np.ndarray,
    block: _Block,
    norm_scale: float,
) -> int:
    """Applies the block to the pool and checks each step's assumed ``low``.

    Returns:
        How many of the block's picks held (all of them, or the steps before the first one whose
        true ``low`` was smaller than assumed); those are committed, the bounds reset to exact.
    """
    n_pending = len(block.rows)
    updated, true_low = _pass_block(
        embeddings, norms, bounds.committed, candidate_at_start, block, n_pending
    )
    # No tolerance: a `low` off by rounding alone would shift every normalised score. A row
    # whose refreshed value (a few dot products) and pass value (the thin product) differ in the
    # last bit only costs a needless rollback, and the step is redone with the pass values.
    held = n_pending
    for step in range(1, n_pending):
        if true_low[step] < block.assumed_low_squared[step]:
            held = step
            break
    if held < n_pending:
        updated, _ = _pass_block(
            embeddings, norms, bounds.committed, candidate_at_start, block, held
        )
    committed_rows = np.asarray(block.rows[:held], dtype=np.int64)
    updated[committed_rows] = 0.0
    bounds.committed = updated
    candidate_now = candidate_at_start.copy()
    candidate_now[committed_rows] = False
    bounds.bound = np.where(candidate_now, updated, -np.inf).astype(np.float32)
    bounds.low_bound = np.where(candidate_now, updated, np.inf).astype(np.float32)
    bounds.checked[:] = 0  # no pending centre left
    return held


def _best_candidate(
    bounds: _Bounds,
    block: _Block,
    static: np.ndarray,
    slope: np.ndarray,
    low: float,
    width: float,
    degenerate: bool,
    has_centre: bool,
    norm_scale: float,
    exact_centres: ExactCentres,
    density_hat: np.ndarray,
    novelty_hat: np.ndarray,
    alpha: float,
    combine: Combine,
) -> tuple[int, float, float]:
    """The candidate with the best exact composite score (ties → lowest row).

    Returns:
        ``(row, score, δ)`` of the pick.
    """
    if degenerate:
        # δ̂ ≡ 1, as in the eager greedy: every score is exact whatever the bounds.
        scores = slope + static
        best = int(np.argmax(scores))
    else:
        low32, scale32 = np.float32(low), np.float32(1.0 / width)

        def score_of(rows: np.ndarray | slice) -> np.ndarray:
            # Same float32 operations, in the same order, as the eager greedy's scores.
            values = np.sqrt(np.maximum(bounds.bound[rows], 0.0)) - low32
            values *= scale32
            values *= slope[rows]
            values += static[rows]
            return values

        scores = score_of(slice(None))

        def refresh_scores(rows: np.ndarray) -> None:
            bounds.refresh(rows, block)
            scores[rows] = score_of(rows)

        # Bounds of δ give bounds of the score (its slope in δ̂ is ≥ 0).
        best = _exact_argmax(scores, refresh_scores, bounds, block)
    top = float(scores[best])
    if not has_centre:
        return best, top, np.inf
    if exact_centres.has_centres and np.isfinite(top):
        bounds.refresh(np.array([best]), block)
        threshold = near_tie_threshold(top, float(np.sqrt(bounds.bound[best])), width, norm_scale)
        near = np.flatnonzero(scores >= threshold)
        if not degenerate and near.size > 1:  # all within rounding error of the best: exact
            bounds.refresh(near, block)
            scores[near] = score_of(near)
            near = near[scores[near] >= threshold]
        if 2 <= near.size <= NEAR_TIE_MAX_ROWS:
            best = exact_best_of(
                near, 0, low, width, exact_centres, density_hat, novelty_hat, alpha, combine
            )
            top = float(scores[best])
    bounds.refresh(np.array([best]), block)
    return best, top, float(np.sqrt(bounds.bound[best]))
