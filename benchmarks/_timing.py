"""Timing shared by the throughput benchmarks (imported from the scripts' own folder)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

ResultT = TypeVar("ResultT")


def best_of(fn: Callable[[], ResultT], repeats: int) -> tuple[float, ResultT]:
    """Run ``fn`` ``repeats`` times (at least once); the fastest wall time and the last result."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result
