"""The active-learning loop: learner protocol, oracle, budget schedules, round state, experiments.

Names are imported lazily (PEP 562): schedules, the oracle and the round state need only NumPy,
while the learner and experiments pull in Lightning.

Example:
    >>> from alframe.config import load_recipe
    >>> from alframe.loop import run_experiment
    >>> result = run_experiment(load_recipe("recipes/xssr_cxr_budget.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alframe._lazy import lazy_exports

if TYPE_CHECKING:
    from alframe.loop.active import (
        KNOWN_REQUIREMENTS,
        ActiveLearningRun,
        ArmSpec,
        LoopHooks,
        PoolInputs,
        RoundTracker,
    )
    from alframe.loop.experiment import (
        ExperimentResult,
        load_manifests,
        plan_arms,
        reference_recipe,
        rounds_recipe,
        run_experiment,
        summarize_experiment,
    )
    from alframe.loop.learner import FitInfo, Learner, LightningLearner
    from alframe.loop.oracle import Oracle, SimulatedOracle
    from alframe.loop.schedule import BudgetSchedule
    from alframe.loop.state import RunState, derive_seed, package_versions
    from alframe.loop.summary import aulc, results_frame, summary_table

_WHERE = {
    "KNOWN_REQUIREMENTS": "active",
    "ActiveLearningRun": "active",
    "ArmSpec": "active",
    "LoopHooks": "active",
    "PoolInputs": "active",
    "RoundTracker": "active",
    "ExperimentResult": "experiment",
    "load_manifests": "experiment",
    "plan_arms": "experiment",
    "reference_recipe": "experiment",
    "rounds_recipe": "experiment",
    "run_experiment": "experiment",
    "summarize_experiment": "experiment",
    "FitInfo": "learner",
    "Learner": "learner",
    "LightningLearner": "learner",
    "Oracle": "oracle",
    "SimulatedOracle": "oracle",
    "BudgetSchedule": "schedule",
    "RunState": "state",
    "derive_seed": "state",
    "package_versions": "state",
    "aulc": "summary",
    "results_frame": "summary",
    "summary_table": "summary",
}

__all__ = [
    "KNOWN_REQUIREMENTS",
    "ActiveLearningRun",
    "ArmSpec",
    "BudgetSchedule",
    "ExperimentResult",
    "FitInfo",
    "Learner",
    "LightningLearner",
    "LoopHooks",
    "Oracle",
    "PoolInputs",
    "RoundTracker",
    "RunState",
    "SimulatedOracle",
    "aulc",
    "derive_seed",
    "load_manifests",
    "package_versions",
    "plan_arms",
    "reference_recipe",
    "results_frame",
    "rounds_recipe",
    "run_experiment",
    "summarize_experiment",
    "summary_table",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
