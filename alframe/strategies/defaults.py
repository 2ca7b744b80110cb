"""The strategy alframe picks when a recipe names none, and the parameters it recommends.

A strategy class keeps its method's published defaults (XSSR multiplies density into the mix, as
in the paper). The *product* defaults below are what our benchmarks support across pools; a recipe
that names a strategy without ``params`` gets them, one that gives ``params`` gets exactly those.

Evidence (scripts in ``benchmarks/``, pages in ``docs/benchmarks/``):

* ``multisite_cxr.md`` — a three-site chest X-ray pool (80 / 12 / 8 %): XSSR with
  ``combine: add`` had the best mean and worst-site Dice of every strategy at 2.5, 5 and 10 %;
* ``xssr_cxr_recommended.md`` — the single-site Montgomery → Shenzhen pool, where the paper's
  ``mul`` form fell about 1 Dice point below random at 5 %: the same check against random.
"""

from __future__ import annotations

from typing import Any

DEFAULT_STRATEGY = "xssr"
"""Strategy of ``alframe select`` / ``alframe round next`` when the recipe names none."""

RECOMMENDED_PARAMS: dict[str, dict[str, Any]] = {
    # density added to the novelty/diversity mix instead of gating it: a dense cluster can no
    # longer veto a diverse pick, which is what lost to random at small budgets.
    "xssr": {"alpha": "auto", "combine": "add"},
}


def recommended_params(name: str) -> dict[str, Any]:
    """A fresh copy of the parameters alframe recommends for strategy ``name`` ({} if none)."""
    return dict(RECOMMENDED_PARAMS.get(name, {}))
