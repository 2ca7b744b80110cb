"""The active-learning loop: rounds of select → label → train → evaluate, with resumable state.

One :class:`ActiveLearningRun` is one strategy × budget schedule × seed (or the full-data
reference). Each round:

1. the strategy (or, while there is no model and the strategy needs one, the cold-start
   strategy) selects ``n_r - n_{r-1}`` unlabelled items from what it declares in ``requires``:
   pool embeddings, source embeddings, the current model's probabilities / uncertainty;
2. the oracle labels them;
3. the learner trains on every labelled item (from scratch, or fine-tuned from the previous
   round's weights) and is evaluated on every evaluation set;
4. the current model predicts the items still unlabelled; the agreement of those predictions
   with the previous round's model (mean foreground Dice, :mod:`alframe.loop.pool_agreement`) is
   the round's label-free stopping signal ``pool_agreement``;
5. the round's manifest is written atomically (the commit point), then the round is logged to
   MLflow and one progress line is printed.

Every random choice derives from (seed, round): the selection seed and the training seed are
:func:`~alframe.loop.state.derive_seed` of them, so a resumed run reaches exactly the selections
and metrics of an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alframe.errors import ConfigError, StateError
from alframe.loop.learner import Learner
from alframe.loop.oracle import SimulatedOracle
from alframe.loop.pool_agreement import (
    POOL_PREDICTIONS_FILE,
    label_agreement,
    predict_label_maps,
    read_pool_predictions,
    write_pool_predictions,
)
from alframe.loop.schedule import BudgetSchedule
from alframe.loop.state import (
    RUN_FORMAT,
    RunState,
    atomic_write_json,
    derive_seed,
    jsonable,
    package_versions,
    read_json,
    sha256_file,
)

KNOWN_REQUIREMENTS = frozenset({"embeddings", "source_embeddings", "probabilities", "uncertainty"})
"""What the loop can compute for a strategy."""
MODEL_REQUIREMENTS = frozenset({"probabilities", "uncertainty"})
"""Requirements that need a trained model (so a cold-start round cannot provide them)."""
REFERENCE_STRATEGY = "full"
"""The strategy name recorded for the full-data reference."""

Retrain = Literal["scratch", "finetune"]
EmbeddingSource = Literal["recipe", "model"]


@dataclass(frozen=True)
class ArmSpec:
    """One active-learning run of an experiment.

    Attributes:
        label: the strategy's display name (``"xssr"``; ``"full"`` for the reference).
        strategy: registered strategy name, or None for the full-data reference (one round that
            labels the whole pool).
        params: the strategy's parameters.
        schedule: cumulative labelled-set sizes per round.
        seed: the experiment seed of this run.
        cold_start: strategy used while there is no model and ``strategy`` needs one.
        cold_start_params: its parameters.
        retrain: ``"scratch"`` (default) or ``"finetune"`` from the previous round's weights.
        embedding: ``"recipe"`` (the recipe's embedder) or ``"model"`` (once a round has
            trained a model, the encoder of that model embeds pool and source).
    """

    label: str
    strategy: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    schedule: BudgetSchedule = field(default_factory=lambda: BudgetSchedule((1,)))
    seed: int = 0
    cold_start: str = "random"
    cold_start_params: Mapping[str, Any] = field(default_factory=dict)
    retrain: Retrain = "scratch"
    embedding: EmbeddingSource = "recipe"

    @property
    def is_reference(self) -> bool:
        """Whether this is the full-data reference."""
        return self.strategy is None

    @property
    def folder_name(self) -> str:
        """``<label>__<schedule>__seed<k>``, the run's folder below the experiment."""
        return f"{self.label}__{self.schedule.name}__seed{self.seed}"

    @property
    def display(self) -> str:
        """``label`` (with the schedule when it is not the only one) and seed, for messages."""
        return f"{self.label} seed {self.seed}"

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (params of the MLflow parent run, run.json)."""
        return jsonable(
            {
                "label": self.label,
                "strategy": self.strategy if self.strategy is not None else REFERENCE_STRATEGY,
                "params": dict(self.params),
                "schedule": self.schedule.name,
                "cumulative": list(self.schedule.cumulative),
                "seed": self.seed,
                "cold_start": self.cold_start,
                "cold_start_params": dict(self.cold_start_params),
                "retrain": self.retrain,
                # Only when not the default, so runs made before the option keep their
                # fingerprints and resume.
                **({"embedding": self.embedding} if self.embedding != "recipe" else {}),
            }
        )


@dataclass
class PoolInputs:
    """What strategies may ask for, computed on first use and shared by every run.

    Attributes:
        ids: (N,) global pool ids in pool order.
        has_mask: (N,) whether each item has a ground-truth mask (simulated labelling).
        embeddings_fn: returns ((N, D) float32 pool embeddings, weights hash); the embeddings
            may be an :class:`alframe._rows.OnDiskRows` store (``embed.memory_map``), which a
            strategy without ``supports_on_disk`` gets read into RAM each round
            (:func:`alframe.strategies.embeddings_for`).
        source_embeddings_fn: returns ((S, D) source embeddings, weights hash), or None when
            there is no source set.
        model_embeddings_fn: given a segmentation checkpoint, returns the pool and source
            embeddings of its encoder (as the two functions above), for ``embedding: model``.
    """

    ids: list[str]
    has_mask: np.ndarray | None = None
    embeddings_fn: Callable[[], tuple[np.ndarray, str]] | None = None
    source_embeddings_fn: Callable[[], tuple[np.ndarray, str] | None] | None = None
    model_embeddings_fn: (
        Callable[[Path], tuple[tuple[np.ndarray, str], tuple[np.ndarray, str] | None]] | None
    ) = None
    _embeddings: tuple[np.ndarray, str] | None = field(default=None, init=False, repr=False)
    _source: tuple[np.ndarray, str] | None = field(default=None, init=False, repr=False)
    _source_done: bool = field(default=False, init=False, repr=False)

    def embeddings(self) -> tuple[np.ndarray, str]:
        """(N, D) pool embeddings and the hash of the weights that produced them."""
        if self._embeddings is None:
            if self.embeddings_fn is None:
                raise ConfigError(
                    "a strategy needs pool embeddings but none can be computed; set the embed "
                    "section of the recipe"
                )
            emb, digest = self.embeddings_fn()
            if emb.shape[0] != len(self.ids):
                raise StateError(
                    f"got {emb.shape[0]} embeddings for a pool of {len(self.ids)} items; "
                    "recompute the embeddings (alframe embed --recompute)"
                )
            self._embeddings = (emb, digest)
        return self._embeddings

    def source_embeddings(self) -> tuple[np.ndarray, str] | None:
        """(S, D) source embeddings and their weights hash, or None without a source set."""
        if not self._source_done:
            self._source = self.source_embeddings_fn() if self.source_embeddings_fn else None
            self._source_done = True
        return self._source

    def model_embeddings(
        self, checkpoint: Path
    ) -> tuple[tuple[np.ndarray, str], tuple[np.ndarray, str] | None]:
        """Pool and source embeddings from the encoder of a segmentation ``checkpoint``.

        Raises:
            ConfigError: no way to embed with a model was given.
            StateError: the pool embedding does not have one row per pool item.
        """
        if self.model_embeddings_fn is None:
            raise ConfigError(
                "embedding: model needs the experiment to embed with its round models; this "
                "run was started without that (use alframe.loop.run_experiment)"
            )
        pool, source = self.model_embeddings_fn(checkpoint)
        if pool[0].shape[0] != len(self.ids):
            raise StateError(
                f"the model embedded {pool[0].shape[0]} items for a pool of {len(self.ids)}"
            )
        return pool, source


class LoopHooks:
    """Called by the loop around each round; subclass and override what you need.

    Raising from a hook stops the run like any error: the rounds committed so far stay, and
    ``--resume`` continues after them.
    """

    def on_round_start(self, arm: ArmSpec, round_index: int) -> None:
        """Before round ``round_index`` selects."""

    def on_round_end(self, arm: ArmSpec, manifest: Mapping[str, Any]) -> None:
        """After the round's manifest is written and the round is logged."""


class RoundTracker:
    """Where finished rounds are reported (MLflow in experiments); the default does nothing."""

    def start_arm(self, arm: ArmSpec, run_dir: Path) -> None:
        """A run starts (or resumes)."""

    def log_round(self, arm: ArmSpec, manifest: Mapping[str, Any], round_dir: Path) -> None:
        """A round was committed (also called for committed rounds not yet logged on resume)."""

    def end_arm(self, arm: ArmSpec, status: str, manifests: Sequence[Mapping[str, Any]]) -> None:
        """The run ended with ``status`` (FINISHED, FAILED or KILLED)."""


def _create_strategy(name: str, params: Mapping[str, Any], key: str) -> Any:
    from alframe import strategies

    try:
        strategy = strategies.create(name, **dict(params))
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None
    unknown = set(getattr(strategy, "requires", frozenset())) - KNOWN_REQUIREMENTS
    if unknown:
        raise ConfigError(
            f"{key}: strategy {name!r} requires {sorted(unknown)}, which the loop cannot "
            f"compute (it provides {sorted(KNOWN_REQUIREMENTS)})"
        )
    return strategy


class ActiveLearningRun:
    """One strategy × schedule × seed, round by round, resumable.

    Args:
        arm: what to run.
        learner: trains, predicts and evaluates (e.g. :class:`LightningLearner`).
        inputs: pool ids and the embeddings strategies may need.
        run_dir: the run's folder (``rounds/NNN/`` below it).
        fingerprint: JSON-friendly description of everything that decides the results (the
            recipe of the fits, the arm without its schedule); a resumed run must match it.
        resume: continue from the last committed round; without it an existing run is refused.
        primary_set: evaluation set shown in progress lines (default: the first one).
        tracker: where rounds are reported.
        hooks: callbacks around rounds.
        progress: print one line per round.
        label_prefix: text in front of progress lines (default ``[<label> seed <k>]``).
        pool_agreement: after every round, predict the still-unlabelled pool and record its
            agreement with the previous round's model (``pool_agreement`` in the manifest; one
            inference pass per round). It decides no selection or metric, so it is not part of
            the run's fingerprint.
    """

    def __init__(
        self,
        arm: ArmSpec,
        learner: Learner,
        inputs: PoolInputs,
        run_dir: str | os.PathLike[str],
        fingerprint: Mapping[str, Any] | None = None,
        resume: bool = False,
        primary_set: str | None = None,
        tracker: RoundTracker | None = None,
        hooks: LoopHooks | None = None,
        progress: bool = True,
        label_prefix: str | None = None,
        pool_agreement: bool = True,
    ) -> None:
        self.arm = arm
        self.learner = learner
        self.inputs = inputs
        self.state = RunState(run_dir)
        self.fingerprint = jsonable(dict(fingerprint or {}))
        self.resume = resume
        self.primary_set = primary_set
        self.tracker = tracker or RoundTracker()
        self.hooks = hooks or LoopHooks()
        self.progress = progress
        self.prefix = label_prefix or f"[{arm.display}]"
        self.pool_agreement = pool_agreement
        self.pool_ids = list(inputs.ids)
        arm.schedule.check_pool(len(self.pool_ids))
        self.strategy: Any | None = None
        self.cold_strategy: Any | None = None
        if arm.strategy is not None:  # None: the full-data reference
            self.strategy = _create_strategy(arm.strategy, arm.params, f"strategy {arm.label}")
            if set(self.strategy.requires) & MODEL_REQUIREMENTS:
                self.cold_strategy = _create_strategy(
                    arm.cold_start, arm.cold_start_params, f"cold_start of {arm.label}"
                )
                if set(self.cold_strategy.requires) & MODEL_REQUIREMENTS:
                    raise ConfigError(
                        f"cold_start strategy {arm.cold_start!r} of {arm.label} needs a trained "
                        "model itself; choose one that works from embeddings or nothing, e.g. "
                        "random or typiclust"
                    )

    # -- state ----------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The run's folder."""
        return self.state.run_dir

    def _check_run_file(self) -> None:
        path = self.run_dir / "run.json"
        described = {
            "format": RUN_FORMAT,
            "arm": self.arm.describe(),
            "fingerprint": self.fingerprint,
        }
        if path.exists():
            if not self.resume:
                raise StateError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it, or "
                    "delete the folder (or choose another output_dir) to start over"
                )
            recorded = read_json(
                path, "run description", f"delete {self.run_dir} to redo this run from scratch"
            )
            if recorded.get("fingerprint") != self.fingerprint:
                changed = _changed_keys(recorded.get("fingerprint") or {}, self.fingerprint)
                raise StateError(
                    f"{self.run_dir} was run with other settings ({', '.join(changed[:6])} "
                    "differ), so its rounds cannot be continued; restore those settings, or "
                    f"delete {self.run_dir} to redo this run, or choose another output_dir"
                )
            return
        if self.state.rounds_dir.exists() and any(self.state.rounds_dir.iterdir()):
            raise StateError(
                f"{self.state.rounds_dir} holds rounds but no run.json; delete {self.run_dir} "
                "to start this run over"
            )
        atomic_write_json(path, described)

    def completed(self) -> list[dict[str, Any]]:
        """Manifests of the committed rounds that belong to the schedule (verified)."""
        done = self.state.completed_rounds()
        sizes = self.arm.schedule.cumulative
        for manifest in done[: len(sizes)]:
            index = int(manifest["round"])
            if manifest.get("n_labelled") != sizes[index]:
                raise StateError(
                    f"{self.state.manifest_path(index)}: round {index} labelled "
                    f"{manifest.get('n_labelled')} items but the schedule {self.arm.schedule.name!r} "
                    f"now says {sizes[index]}; restore the schedule, or delete "
                    f"{self.state.round_dir(index)} and later rounds to redo them"
                )
        return done[: len(sizes)]

    # -- running --------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every round of the schedule.

        Returns:
            The manifests of all rounds, in order.

        Raises:
            StateError: an existing run without ``resume``, other settings, or a damaged round.
        """
        self._check_run_file()
        done = self.completed()
        labelled = done[-1]["labelled_ids"] if done else []
        oracle = SimulatedOracle(self.pool_ids, self.inputs.has_mask, labelled)
        self.learner.reset()
        if done:
            self.learner.restore(self.state.checkpoint_path(done[-1]))
        self.tracker.start_arm(self.arm, self.run_dir)
        status = "FAILED"
        try:
            for manifest in done:
                self.tracker.log_round(self.arm, manifest, self.state.round_dir(manifest["round"]))
                self._print(manifest, resumed=True)
            for round_index in range(len(done), self.arm.schedule.n_rounds):
                done.append(self._run_round(round_index, oracle, done[-1] if done else None))
            status = "FINISHED"
            return done
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.tracker.end_arm(self.arm, status, done)

    def _choose(self, strategy: Any) -> tuple[Any, str, dict[str, Any], bool]:
        """(strategy object, name, params, is cold start) for this round."""
        needs_model = bool(set(strategy.requires) & MODEL_REQUIREMENTS)
        if needs_model and self.learner.checkpoint is None:
            return self.cold_strategy, self.arm.cold_start, dict(self.arm.cold_start_params), True
        return strategy, str(self.arm.strategy), dict(self.arm.params), False

    def _context(
        self, strategy: Any, oracle: SimulatedOracle, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        """The QueryContext for ``strategy`` (only what it requires) and provenance."""
        from alframe.types import QueryContext

        requires = set(strategy.requires)
        n_items = len(self.pool_ids)
        labelled = oracle.labelled_mask
        kwargs: dict[str, Any] = {"labelled": labelled, "seed": seed, "ids": self.pool_ids}
        provenance: dict[str, Any] = {"embedding_hash": None, "source_embedding_hash": None}
        embeds = bool(requires & {"embeddings", "source_embeddings"})
        model = self.learner.checkpoint if embeds and self.arm.embedding == "model" else None
        source: tuple[np.ndarray, str] | None = None
        if model is not None:
            # The previous round's model (selection runs before this round's training).
            pool, source = self.inputs.model_embeddings(Path(model))
            provenance["embedding_source"] = "model"
        elif embeds:
            pool = self.inputs.embeddings()
            if "source_embeddings" in requires:
                source = self.inputs.source_embeddings()
        if embeds:
            from alframe.strategies import embeddings_for

            kwargs["embeddings"] = embeddings_for(strategy, pool[0])
            provenance["embedding_hash"] = pool[1]
        else:
            kwargs["embeddings"] = np.zeros((n_items, 1), dtype=np.float32)
        if "source_embeddings" in requires and source is not None:
            kwargs["source_embeddings"], provenance["source_embedding_hash"] = source
        if requires & MODEL_REQUIREMENTS:
            probabilities = self._pool_probabilities(labelled)
            provenance["model_checkpoint"] = str(self.learner.checkpoint)
            if "probabilities" in requires:
                kwargs["probabilities"] = probabilities
            if "uncertainty" in requires:
                from alframe.scoring.uncertainty import item_uncertainty

                uncertainty = item_uncertainty(probabilities, "entropy", "mean")
                uncertainty[labelled] = np.nan
                kwargs["uncertainty"] = uncertainty
        return QueryContext(**kwargs), provenance

    def _pool_probabilities(self, labelled: np.ndarray) -> np.ndarray:
        """(N, K, H, W) probabilities over the pool; labelled items (never ranked) get 1/K."""
        unlabelled = np.flatnonzero(~labelled)
        predicted = self.learner.predict_proba([self.pool_ids[i] for i in unlabelled])
        shape = (len(self.pool_ids), *predicted.shape[1:])
        probabilities = np.full(shape, 1.0 / max(predicted.shape[1], 1), dtype=np.float32)
        probabilities[unlabelled] = predicted
        return probabilities

    def _select(
        self, budget: int, oracle: SimulatedOracle, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        """The round's selection and where it came from (strategy used, input hashes)."""
        from alframe.types import Selection

        if self.strategy is None:  # the full-data reference labels everything
            indices = np.flatnonzero(~oracle.labelled_mask)[:budget]
            selection = Selection(indices=indices, scores=np.full(len(self.pool_ids), np.nan))
            return selection, {
                "strategy_used": REFERENCE_STRATEGY,
                "strategy_params": {},
                "cold_start": False,
                "embedding_hash": None,
                "source_embedding_hash": None,
            }
        strategy, name, params, cold = self._choose(self.strategy)
        context, provenance = self._context(strategy, oracle, seed)
        selection = strategy.select(context, budget)
        return selection, {
            "strategy_used": name,
            "strategy_params": params,
            "cold_start": cold,
            **provenance,
        }

    def _previous_pool_labels(
        self, previous: Mapping[str, Any], unlabelled_ids: Sequence[str]
    ) -> np.ndarray | None:
        """(U, H, W) the previous round's model's label maps of ``unlabelled_ids``.

        Read from the previous round's folder when the file is there and matches the sha256 its
        manifest recorded. Otherwise (a round committed by an alframe without the stopping
        signal, with it switched off, or a file damaged since) the learner, which still holds
        the previous round's model at this point, predicts them again. None without a model.
        """
        recorded = previous.get("pool_predictions") or {}
        path = self.state.round_dir(int(previous["round"])) / POOL_PREDICTIONS_FILE
        if recorded.get("sha256") and path.is_file() and sha256_file(path) == recorded["sha256"]:
            stored = read_pool_predictions(path)
            labels = stored.subset(unlabelled_ids) if stored is not None else None
            if labels is not None:
                return labels
        if self.learner.checkpoint is None:
            return None
        labels, _ = predict_label_maps(self.learner.predict_proba, unlabelled_ids)
        return labels

    def _estimated_effort(
        self, ids: Sequence[str], previous: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """Estimated correction effort of the queried ``ids`` (:func:`alframe.loop.effort.
        round_effort`): the previous round's model is the pre-annotation, none in the first
        round. None when the learner cannot show the ground truth (it has no ``true_labels``).
        """
        true_labels = getattr(self.learner, "true_labels", None)
        if true_labels is None or not ids:
            return None
        from alframe.data.dataset import IGNORE_INDEX
        from alframe.loop.effort import round_effort

        truth, num_classes = true_labels(list(ids))
        pre = self._previous_pool_labels(previous, ids) if previous is not None else None
        return round_effort(
            pre,
            truth,
            num_classes,
            previous=(previous or {}).get("effort"),
            ignore_value=IGNORE_INDEX,
        )

    def _run_round(
        self,
        round_index: int,
        oracle: SimulatedOracle,
        previous: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        from alframe.workflows.selection import SelectionResult, picked_rows, write_selection_csv

        arm = self.arm
        self.hooks.on_round_start(arm, round_index)
        round_dir = self.state.clear_round(round_index)
        target = arm.schedule.cumulative[round_index]
        budget = target - len(oracle)
        select_seed = derive_seed(arm.seed, round_index, "select")
        train_seed = derive_seed(arm.seed, round_index, "train")

        clock = time.perf_counter()
        selection, provenance = self._select(budget, oracle, select_seed)
        select_seconds = time.perf_counter() - clock
        selected_ids = [self.pool_ids[int(i)] for i in selection.indices]
        if len(selected_ids) != budget:
            raise StateError(
                f"{self.prefix} round {round_index}: the strategy selected {len(selected_ids)} "
                f"items instead of {budget}; the pool has too few unlabelled items"
            )
        write_selection_csv(
            SelectionResult(
                ids=self.pool_ids,
                selection=selection,
                strategy=provenance["strategy_used"],
                embedding_hash=provenance["embedding_hash"],
            ),
            round_dir / "selection.csv",
        )
        # Before the oracle labels them and before the fit: the previous model pre-annotates.
        effort = self._estimated_effort(selected_ids, previous)
        oracle.label(selected_ids)

        # The training set is fixed now: what stays unlabelled is where the signal is measured.
        measure_agreement = self.pool_agreement and not arm.is_reference
        unlabelled_ids = (
            [self.pool_ids[int(i)] for i in np.flatnonzero(~oracle.labelled_mask)]
            if measure_agreement
            else []
        )
        clock = time.perf_counter()
        previous_labels = None
        if unlabelled_ids and previous is not None:
            # Before reset/fit: a fallback prediction needs the previous round's model.
            previous_labels = self._previous_pool_labels(previous, unlabelled_ids)
        agreement_seconds = time.perf_counter() - clock

        if arm.retrain == "scratch":
            self.learner.reset()
        fit = self.learner.fit(oracle.labelled_ids, round_dir / "model", seed=train_seed)
        clock = time.perf_counter()
        metrics = self.learner.evaluate(round_dir)
        evaluate_seconds = time.perf_counter() - clock
        # After evaluation, so pseudo-labels can never reach it; the reference arm has no pool
        # left to pseudo-label.
        pseudo = None
        if not arm.is_reference and len(oracle) < len(self.pool_ids):
            pseudo = self.learner.pseudo_label(oracle.labelled_ids, round_dir)

        clock = time.perf_counter()
        agreement: float | None = None
        pool_predictions: dict[str, Any] | None = None
        if unlabelled_ids:
            current_labels, num_classes = predict_label_maps(
                self.learner.predict_proba, unlabelled_ids
            )
            # Kept for the next round (written before the manifest, so it is committed with it).
            stored = write_pool_predictions(
                round_dir / POOL_PREDICTIONS_FILE, unlabelled_ids, current_labels, num_classes
            )
            pool_predictions = {
                "file": POOL_PREDICTIONS_FILE,
                "sha256": sha256_file(stored),
                "n_items": len(unlabelled_ids),
                "num_classes": num_classes,
            }
            if previous_labels is not None:
                agreement = float(
                    label_agreement(previous_labels, current_labels, num_classes).mean()
                )
        agreement_seconds += time.perf_counter() - clock

        checkpoint = Path(fit.checkpoint)
        try:
            relative = checkpoint.resolve().relative_to(self.run_dir.resolve())
        except ValueError:
            relative = checkpoint.resolve()
        # As in selection.csv: score = priority from the pick order, the strategy's own score
        # is the term score_at_pick (alframe.workflows.selection.picked_rows).
        selected = [
            {
                "id": self.pool_ids[row.index],
                "rank": row.rank,
                "score": row.score,
                "terms": row.terms,
            }
            for row in picked_rows(selection)
        ]
        content = {
            "round": round_index,
            "label": arm.label,
            "strategy": arm.strategy if arm.strategy is not None else REFERENCE_STRATEGY,
            **provenance,
            "schedule": arm.schedule.name,
            "seed": arm.seed,
            "select_seed": select_seed,
            "train_seed": train_seed,
            "retrain": arm.retrain,
            "budget": budget,
            "n_labelled": len(oracle),
            "n_pool": len(self.pool_ids),
            "selected": selected,
            "selection_info": selection.info,
            "labelled_ids": oracle.labelled_ids,
            "checkpoint": str(relative),
            "checkpoint_sha256": sha256_file(checkpoint),
            "fit": {
                "n_train": fit.n_train,
                "n_val": fit.n_val,
                "epochs": fit.epochs,
                "steps": fit.steps,
                "train_seconds": round(fit.train_seconds, 3),
                "best_val_dice": fit.best_val_dice,
                **fit.extra,
            },
            "timing": {
                "select_seconds": round(select_seconds, 3),
                "evaluate_seconds": round(evaluate_seconds, 3),
                "agreement_seconds": round(agreement_seconds, 3),
            },
            "metrics": metrics,
            "pool_agreement": agreement,
            "pool_agreement_items": len(unlabelled_ids) if agreement is not None else 0,
            "pool_predictions": pool_predictions,
            "pseudolabels": pseudo,
            "effort": effort,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        manifest = self.state.write_manifest(round_index, content)
        self.tracker.log_round(arm, manifest, round_dir)
        self._print(manifest)
        self.hooks.on_round_end(arm, manifest)
        return manifest

    def _print(self, manifest: Mapping[str, Any], resumed: bool = False) -> None:
        if not self.progress:
            return
        metrics: Mapping[str, Any] = manifest.get("metrics") or {}
        name = self.primary_set if self.primary_set in metrics else next(iter(metrics), None)
        dice = (metrics.get(name) or {}).get("dice_mean") if name else None
        shown = f"{dice:.3f}" if isinstance(dice, float) else "n/a"
        note = " (done earlier)" if resumed else ""
        cold = (
            f" [cold start: {manifest.get('strategy_used')}]" if manifest.get("cold_start") else ""
        )
        agreement = manifest.get("pool_agreement")
        agrees = (
            f" agreement={agreement:.3f} ({manifest.get('pool_agreement_items')} unlabelled)"
            if isinstance(agreement, float)
            else ""
        )
        print(
            f"{self.prefix} round {manifest['round']}: n_labelled={manifest['n_labelled']} "
            f"dice={shown} ({name}){agrees}{cold}{note}",
            flush=True,
        )


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two nested mappings (never empty)."""
    return _differences(old, new, "") or ["(unknown)"]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += _differences(a, b, name + ".")
        elif a != b:
            changed.append(name)
    return changed
