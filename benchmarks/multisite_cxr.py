"""Multi-site chest X-ray pool: do query strategies pay where the pool is heterogeneous? (issue 15)

Single-site lung pools leave no room for selection (10 random labels reach ~98.5 % of full
data), so this benchmark mixes the three chest X-ray sites of ``cxr_lungs`` into one unlabelled
pool with a realistic imbalance and asks, per strategy × budget × seed: what mean Dice on a test
set that holds out images of EVERY site, what Dice on the **worst site**, and how many of the
budget's labels went to each site.

Protocol (defaults; every one is a flag):

* **pool** — 440 images drawn from the ``train`` split of ``splits.csv``: 80 % Shenzhen (352),
  12 % JSRT (53), 8 % Montgomery (35); a seeded draw (``--pool-seed``), the same for every seed
  and strategy, so seeds measure selection and training noise on one pool;
* **test** — the ``test`` split of every site (Shenzhen 110, JSRT 50, Montgomery 28): mean Dice
  over all test images, Dice per site, and the worst site's Dice;
* **MAE source** (``--mae-source``) — XSSR's MAE is trained on unlabelled images that are NOT in
  the pool: by default an *archive* of the train-split images the pool draw left over, with the
  pool's proportions (88 Shenzhen + 13 JSRT + 9 Montgomery): the unlabelled backlog of the same
  hospitals that a team actually has. It is stored without masks. ``dominant`` uses only the
  dominant site's leftovers instead (88 Shenzhen), which hands XSSR's novelty term the knowledge
  of which site is over-represented; it is kept as a variant, not the default. The same MAE
  embedding serves CoreSet and TypiClust too. One MAE (seed 0), cached with its runs;
* **budgets** — 2.5 %, 5 %, 10 % of the pool (11, 22, 44 labels), run as the cumulative rounds
  of one active-learning run per strategy × seed (``alframe.loop.run_experiment``, as in
  ``recipes/xssr_cxr_budget.yaml``): every round retrains from scratch for the same number of
  optimisation steps; entropy and margin need a model, so their first round (2.5 %) is the
  experiment's cold start (random; same picks and training seed as the random arm) and they rank
  from round 2 on;
* **strategies** — random, coreset, xssr (alpha auto), typiclust, entropy, margin, plus
  :data:`EXTRA_STRATEGIES` / ``--add-strategy`` (the hook for improved strategies); seeds 0, 1, 2;
  the full-data reference (all 440 pool images, supervised recipe) once per seed;
* 64² U-Net (resnet18), 200 steps at batch 8 per round, so a round takes about a minute and a
  half of one CPU core (the estimate is printed at start and refined from finished cells).

Everything is cached under ``benchmarks/_work/multisite_cxr/full/`` (``…/smoke/`` with
``--smoke``; git-ignored): the composed data folder (symlinks into ``$ALFRAME_DATA/cxr_lungs``),
the MAE, the embeddings, and every (strategy, budget, seed) cell as the committed round manifest
of its run. A rerun continues where the last one stopped; ``--report-only`` renders the page from
the cache (add ``--smoke`` for the smoke cache); a page rendered before every cell is done says
**PARTIAL** and lists what is missing.

Usage::

    export ALFRAME_DATA=../shared/data
    # the whole benchmark, in the background (resumable: rerun the same command after a stop)
    OMP_NUM_THREADS=1 nohup python benchmarks/multisite_cxr.py \\
        > benchmarks/_work/multisite_cxr.log 2>&1 &
    # the page from the cells finished so far (no training) → docs/benchmarks/multisite_cxr.{md,json}
    python benchmarks/multisite_cxr.py --report-only
    # a few-minute smoke run: random + coreset, 5 %, seed 0, 20 steps, a 2-epoch MAE
    python benchmarks/multisite_cxr.py --smoke --docs /tmp/multisite_smoke
    # an improved strategy next to the others (item 2 of issue 15)
    python benchmarks/multisite_cxr.py \\
        --add-strategy 'xssr_add=xssr:{"alpha": "auto", "combine": "add"}'

``--strategies random coreset`` runs a subset, ``--set KEY=VALUE`` overrides the recipe (e.g.
``--set train.lr=0.002``). A changed protocol (pool, MAE, training) is refused in an existing
work folder: pass ``--work`` with a new folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"
WORK = REPO / "benchmarks" / "_work" / "multisite_cxr"
NAME = "multisite_cxr"

SITES: tuple[str, ...] = ("shenzhen", "jsrt", "montgomery")
SITE_TITLES = {"shenzhen": "Shenzhen", "jsrt": "JSRT", "montgomery": "Montgomery"}
DEFAULT_PROPORTIONS = {"shenzhen": 0.80, "jsrt": 0.12, "montgomery": 0.08}
DEFAULT_BUDGETS = (0.025, 0.05, 0.10)
DEFAULT_SEEDS = (0, 1, 2)
SITE_SEPARATOR = "__"
"""Composed file names are ``<site>__<original stem>``, so an id names its site."""

DEFAULT_STRATEGIES: tuple[dict[str, Any], ...] = (
    {"name": "random"},
    {"name": "coreset"},
    {"name": "xssr", "params": {"alpha": "auto"}},
    {"name": "typiclust"},
    {"name": "entropy"},
    {"name": "margin"},
)
"""The issue's strategies as ``experiment.strategies`` entries (label = name)."""

EXTRA_STRATEGIES: list[dict[str, Any]] = [
    {"name": "uncertain-coreset", "params": {"weight_power": 1.0}},
    {"name": "xssr", "label": "xssr_add", "params": {"alpha": "auto", "combine": "add"}},
    # The same, embedding with the previous round's segmentation encoder from round 2 on.
    {
        "name": "xssr",
        "label": "xssr_add_model",
        "params": {"alpha": "auto", "combine": "add"},
        "embedding": "model",
    },
]
"""Hook for improved strategies (issue 15, item 2): append entries here, e.g.
``{"name": "xssr", "label": "xssr_add", "params": {"alpha": "auto", "combine": "add"}}``, or
pass ``--add-strategy``. A strategy must be registered in ``alframe.strategies``; one that needs a
model gets the experiment's cold start for its first round."""

# Priors of the time estimate before any cell has finished, measured on this project's 2-core
# machine (64², resnet18 U-Net, one torch thread, two other benchmark jobs running): a 200-step
# round at batch 8 took 83 s (0.39 s per step including the fit's start-up; selection and the
# evaluation of the 188 test images add a few seconds); the 110-image MAE ~3 s per epoch.
PRIOR_SECONDS_PER_STEP = 0.40
PRIOR_ROUND_OVERHEAD_S = 6.0
PRIOR_MAE_SECONDS_PER_EPOCH = 3.0


@dataclass(frozen=True)
class Protocol:
    """Everything that decides the pool, the MAE and the training (stored as ``protocol.json``).

    Strategies, budgets and seeds are not part of it: they add or drop runs, and each run keeps
    its own fingerprint (``alframe.loop``), so they can change between invocations (budgets only
    by appending larger ones: a run's committed rounds must keep their sizes).
    """

    pool_size: int = 440
    proportions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PROPORTIONS))
    pool_seed: int = 0
    mae_source: str = "archive"
    source_size: int = 110
    image_size: int = 64
    steps_per_round: int = 200
    round_batch_size: int = 8
    mae_epochs: int = 100
    mae_patch_size: int = 8
    reference_epochs: int = 20
    reference_patience: int = 5
    reference_batch_size: int = 16
    overrides: tuple[str, ...] = ()


@dataclass
class Composition:
    """Original file stems per site in each role (pool / MAE source / test)."""

    pool: dict[str, list[str]]
    source: dict[str, list[str]]
    test: dict[str, list[str]]

    def counts(self) -> dict[str, dict[str, int]]:
        """Role → site → number of images."""
        return {
            role: {site: len(getattr(self, role).get(site, [])) for site in SITES}
            for role in ("pool", "source", "test")
        }


# ----------------------------------------------------------------------------------------------
# Arguments


def parse_proportions(text: str) -> dict[str, float]:
    """``shenzhen=0.8,jsrt=0.12,montgomery=0.08`` → site → share (normalised to sum 1).

    Raises:
        SystemExit: an unknown site, a negative share or no positive share.
    """
    shares: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        site, _, value = item.partition("=")
        site = site.strip().lower()
        if site not in SITES:
            raise SystemExit(f"--proportions: unknown site {site!r}; use {', '.join(SITES)}")
        try:
            shares[site] = float(value)
        except ValueError:
            raise SystemExit(f"--proportions: {item!r} is not site=number") from None
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise SystemExit(f"--proportions must be non-negative with a positive sum, got {text!r}")
    total = sum(shares.values())
    return {site: shares.get(site, 0.0) / total for site in SITES}


def parse_strategy(text: str) -> dict[str, Any]:
    """``LABEL=NAME`` or ``LABEL=NAME:{json params}`` → an ``experiment.strategies`` entry.

    Raises:
        SystemExit: malformed text or parameters that are not a JSON object.
    """
    label, sep, rest = text.partition("=")
    if not sep or not label.strip() or not rest.strip():
        raise SystemExit(f"--add-strategy {text!r}: expected LABEL=NAME or LABEL=NAME:{{json}}")
    name, _, params_text = rest.partition(":")
    params: Any = {}
    if params_text.strip():
        try:
            params = json.loads(params_text)
        except json.JSONDecodeError as err:
            raise SystemExit(f"--add-strategy {text!r}: parameters are not JSON ({err})") from None
        if not isinstance(params, dict):
            raise SystemExit(f"--add-strategy {text!r}: parameters must be a JSON object")
    return {"name": name.strip(), "label": label.strip(), "params": params}


def strategy_label(spec: Mapping[str, Any]) -> str:
    """The display label of an ``experiment.strategies`` entry."""
    return str(spec.get("label") or spec["name"])


def choose_strategies(
    wanted: Sequence[str] | None, added: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Default + :data:`EXTRA_STRATEGIES` + ``--add-strategy`` entries, restricted to ``wanted``.

    Raises:
        SystemExit: a wanted label that no entry has, or a duplicated label.
    """
    available = [*DEFAULT_STRATEGIES, *EXTRA_STRATEGIES, *added]
    labels = [strategy_label(s) for s in available]
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise SystemExit(f"strategy labels repeat: {duplicated}; give each --add-strategy a label")
    if not wanted:
        return [dict(s) for s in available]
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise SystemExit(f"--strategies: unknown {unknown}; available: {', '.join(labels)}")
    return [dict(s) for s in available if strategy_label(s) in wanted]


# ----------------------------------------------------------------------------------------------
# The pool, the MAE source and the test set


def read_splits(cxr_root: Path) -> dict[str, dict[str, list[str]]]:
    """Site → split (``train`` / ``test``) → sorted file stems, from ``splits.csv``.

    Raises:
        SystemExit: the file is missing or lacks a site.
    """
    path = cxr_root / "splits.csv"
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist; point ALFRAME_DATA (or --data-root) at the folder that "
            "holds cxr_lungs/"
        )
    splits: dict[str, dict[str, list[str]]] = {site: {} for site in SITES}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["source"] in splits:
                splits[row["source"]].setdefault(row["source_split"], []).append(row["id"])
    for site, parts in splits.items():
        if not parts.get("train") or not parts.get("test"):
            raise SystemExit(f"{path}: site {site!r} lacks a train or test split")
        for ids in parts.values():
            ids.sort()
    return splits


def compose(splits: Mapping[str, Mapping[str, Sequence[str]]], protocol: Protocol) -> Composition:
    """Draw the pool and the MAE source from the train splits; the test splits stay whole.

    Per site, the sorted train stems are shuffled with ``pool_seed``; the pool takes the first
    ones (its site sizes follow ``proportions`` by largest remainder), the source the next ones.
    The pool does not depend on ``mae_source``.

    Raises:
        SystemExit: a site has fewer train images than the pool or the source asks for.
    """
    import numpy as np

    from alframe.data.splits import part_sizes

    positive = [s for s in SITES if protocol.proportions.get(s, 0.0) > 0]
    weights = [protocol.proportions[s] for s in positive]
    pool_sizes = dict(zip(positive, part_sizes(protocol.pool_size, weights)))
    if protocol.mae_source == "archive":
        source_sizes = dict(zip(positive, part_sizes(protocol.source_size, weights)))
    elif protocol.mae_source == "dominant":
        dominant = max(positive, key=lambda s: protocol.proportions[s])
        left = len(splits[dominant]["train"]) - pool_sizes[dominant]
        source_sizes = {dominant: min(protocol.source_size, left)}
    else:
        raise SystemExit(f"--mae-source must be archive or dominant, got {protocol.mae_source!r}")
    pool: dict[str, list[str]] = {}
    source: dict[str, list[str]] = {}
    for index, site in enumerate(SITES):
        train = list(splits[site]["train"])
        n_pool, n_source = pool_sizes.get(site, 0), source_sizes.get(site, 0)
        if n_pool + n_source > len(train):
            raise SystemExit(
                f"site {site}: the pool needs {n_pool} and the MAE source {n_source} of its "
                f"{len(train)} train images; lower --pool-size / --source-size or change "
                "--proportions"
            )
        order = np.random.default_rng([protocol.pool_seed, index, 0x5173]).permutation(len(train))
        pool[site] = sorted(train[i] for i in order[:n_pool])
        source[site] = sorted(train[i] for i in order[n_pool : n_pool + n_source])
    test = {site: list(splits[site]["test"]) for site in SITES}
    return Composition(pool=pool, source=source, test=test)


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def build_data_folder(data_dir: Path, cxr_root: Path, composition: Composition) -> None:
    """The composed data root: ``pool/`` and ``test/`` (images + masks), ``source/`` (images
    only: the MAE's source is unlabelled), ``test/sites.csv`` (test id → site); symlinks into
    ``cxr_root``, named ``<site>__<stem>.png``.

    Raises:
        SystemExit: an original image or mask is missing.
    """
    roles = {"pool": True, "source": False, "test": True}
    for role, with_masks in roles.items():
        wanted: set[str] = set()
        folders = ["images", "masks"] if with_masks else ["images"]
        for folder in folders:
            (data_dir / role / folder).mkdir(parents=True, exist_ok=True)
        for site, stems in getattr(composition, role).items():
            for stem in stems:
                name = f"{site}{SITE_SEPARATOR}{stem}.png"
                wanted.add(name)
                for folder in folders:
                    target = (cxr_root / site / folder / f"{stem}.png").resolve()
                    if not target.is_file():
                        raise SystemExit(f"{target} is missing; check the cxr_lungs data folder")
                    _link(target, data_dir / role / folder / name)
        for folder in folders:  # nothing from an earlier composition may linger
            for path in (data_dir / role / folder).iterdir():
                if path.name not in wanted:
                    path.unlink()
    rows = [
        f"{site}{SITE_SEPARATOR}{stem},{site}"
        for site, stems in composition.test.items()
        for stem in stems
    ]
    text = "id,site\n" + "\n".join(rows) + "\n"
    sites_csv = data_dir / "test" / "sites.csv"
    if not sites_csv.is_file() or sites_csv.read_text(encoding="utf-8") != text:
        sites_csv.write_text(text, encoding="utf-8")


def site_of(item_id: str) -> str:
    """The site of a composed id (``pool/jsrt__JPCLN001`` → ``jsrt``)."""
    local = item_id.split("/", 1)[-1]
    return local.split(SITE_SEPARATOR, 1)[0]


# ----------------------------------------------------------------------------------------------
# The recipe


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (run fingerprints stay portable)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def recipe_dict(
    protocol: Protocol,
    data_dir: Path,
    run_dir: Path,
    strategies: Sequence[Mapping[str, Any]],
    budgets: Sequence[float],
    seeds: Sequence[int],
    reference: bool,
    tracking_uri: str | None,
    name: str,
) -> dict[str, Any]:
    """The benchmark as an alframe recipe (``alframe.loop.run_experiment`` runs it).

    Args:
        protocol: pool, MAE and training settings.
        data_dir: the composed data root (:func:`build_data_folder`).
        run_dir: the experiment folder (MAE, embeddings, runs).
        strategies: ``experiment.strategies`` entries.
        budgets: cumulative fractions of the pool, one round each.
        seeds: experiment seeds.
        reference: train the full-data reference once per seed.
        tracking_uri: MLflow store, or None for no tracking.
        name: recipe name (MLflow experiment).

    Returns:
        The recipe as a plain dict (validated by ``alframe.config.recipe_from_dict``).
    """
    size = [protocol.image_size, protocol.image_size]
    return {
        "name": name,
        "seed": 0,
        "data": {
            "root": _relative(data_dir),
            "classes": {"background": 0, "lung": 255},
            "image_size": size,
            "in_channels": 1,
            "normalization": {"method": "percentile", "low": 0.5, "high": 99.5},
            "datasets": {
                "pool": {"path": "pool", "mask_format": "binary"},
                "source": {"path": "source", "masks": None},
                "test": {
                    "path": "test",
                    "mask_format": "binary",
                    "split": {
                        "kind": "csv",
                        "csv": "test/sites.csv",
                        "id_column": "id",
                        "split_column": "site",
                    },
                },
            },
            "train": {"dataset": "pool"},
            "val_fraction": 0.1,
            "source": {"dataset": "source"},
            "evaluate": {f"test_{s}": {"dataset": "test", "split": s} for s in SITES},
        },
        "model": {"arch": "Unet", "encoder": "resnet18"},
        # The full-data reference: the supervised recipe (epochs, early stopping on 10 %).
        "train": {
            "max_epochs": protocol.reference_epochs,
            "batch_size": protocol.reference_batch_size,
            "lr": 0.001,
            "early_stopping_patience": protocol.reference_patience,
            "progress": False,
        },
        "embed": {
            "backbone": "mae",
            "mae": {
                "encoder": "resnet18",
                "max_epochs": protocol.mae_epochs,
                "batch_size": 16,
                "patch_size": protocol.mae_patch_size,
            },
        },
        "experiment": {
            "strategies": [dict(s) for s in strategies],
            "schedules": [{"name": "budget", "fractions": list(budgets)}],
            "seeds": list(seeds),
            "full_reference": reference,
            "retrain": "scratch",
            "cold_start": "random",
            "steps_per_round": protocol.steps_per_round,
            "train": {"batch_size": protocol.round_batch_size},
            "val_fraction": 0.0,
            "primary_set": "test_montgomery",
        },
        "tracking": {"enabled": tracking_uri is not None, "uri": tracking_uri, "experiment": name},
        "output_dir": _relative(run_dir),
    }


def check_protocol(work: Path, protocol: Protocol, composition: Composition) -> None:
    """Record the protocol in ``<work>/protocol.json``, or refuse a different one there.

    Raises:
        SystemExit: the folder was made with other settings (the cached MAE and runs would not
            match them).
    """
    from alframe.loop.state import atomic_write_json

    path = work / "protocol.json"
    current = {"protocol": asdict(protocol), "composition": asdict(composition)}
    current = json.loads(json.dumps(current))  # tuples → lists, as read back
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != current:
            old, new = recorded.get("protocol", {}), current["protocol"]
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise SystemExit(
                f"{work} was made with another protocol ({', '.join(changed) or 'composition'} "
                "differ); pass --work with a new folder, restore the settings, or delete "
                f"{work} to start over"
            )
        return
    atomic_write_json(path, current)


# ----------------------------------------------------------------------------------------------
# Cells: one (strategy, budget, seed) = one committed round


def cell_summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Mean Dice over every test image, Dice per site, the worst site and picks per site of one
    committed round (or of a full-data reference)."""
    metrics = manifest.get("metrics") or {}
    site_dice: dict[str, float] = {}
    site_n: dict[str, int] = {}
    for site in SITES:
        stats = metrics.get(f"test_{site}")
        if stats and stats.get("dice_mean") is not None:
            site_dice[site] = float(stats["dice_mean"])
            site_n[site] = int(stats["n"])
    total = sum(site_n.values())
    mean = sum(site_dice[s] * site_n[s] for s in site_dice) / total if total else math.nan
    worst = min(site_dice, key=lambda s: site_dice[s]) if site_dice else None
    picks = dict.fromkeys(SITES, 0)
    for item_id in manifest.get("labelled_ids") or []:
        picks[site_of(item_id)] = picks.get(site_of(item_id), 0) + 1
    fit = manifest.get("fit") or {}
    timing = manifest.get("timing") or {}
    seconds = float(fit.get("train_seconds") or 0.0) + sum(
        float(timing.get(k) or 0.0) for k in ("select_seconds", "evaluate_seconds")
    )
    return {
        "seed": int(manifest["seed"]),
        "n_labelled": int(manifest["n_labelled"]),
        "dice_mean": mean,
        "site_dice": site_dice,
        "site_macro_dice": statistics.fmean(site_dice.values()) if site_dice else math.nan,
        "worst_site": worst,
        "worst_site_dice": site_dice[worst] if worst else math.nan,
        "picks": picks,
        "strategy_used": manifest.get("strategy_used"),
        "cold_start": bool(manifest.get("cold_start")),
        "alpha": (manifest.get("selection_info") or {}).get("alpha"),
        "steps": fit.get("steps"),
        "train_seconds": fit.get("train_seconds"),
        "seconds": seconds,
        "pool_agreement": _finite(manifest.get("pool_agreement")),
        "pool_agreement_items": manifest.get("pool_agreement_items"),
    }


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not finite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    # One seed has no spread to report (None, not a misleading 0).
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return statistics.fmean(finite), std


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def aggregate(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of one strategy × budget (or of the reference)."""
    dice = _mean_std([c["dice_mean"] for c in cells])
    worst = _mean_std([c["worst_site_dice"] for c in cells])
    macro = _mean_std([c["site_macro_dice"] for c in cells])
    per_site = {}
    for site in SITES:
        values = [c["site_dice"][site] for c in cells if site in c["site_dice"]]
        mean, std = _mean_std(values)
        per_site[site] = {"mean": _r(mean), "std": _r(std)}
    worst_counts: dict[str, int] = {}
    for c in cells:
        if c["worst_site"]:
            worst_counts[c["worst_site"]] = worst_counts.get(c["worst_site"], 0) + 1
    return {
        "n_seeds": len(cells),
        "seeds": sorted(int(c["seed"]) for c in cells),
        "dice_mean": _r(dice[0]),
        "dice_std": _r(dice[1]),
        "worst_site_dice_mean": _r(worst[0]),
        "worst_site_dice_std": _r(worst[1]),
        "worst_site_counts": worst_counts,
        "site_macro_dice_mean": _r(macro[0]),
        "site_dice": per_site,
        "picks_mean": {s: _r(statistics.fmean(c["picks"][s] for c in cells), 2) for s in SITES},
        "picks_by_seed": {str(c["seed"]): c["picks"] for c in cells},
        "cold_start": sorted({str(c["strategy_used"]) for c in cells if c["cold_start"]}),
        "alpha_by_seed": {str(c["seed"]): c["alpha"] for c in cells if c["alpha"] is not None},
        "seconds_mean": _r(statistics.fmean(c["seconds"] for c in cells), 1),
    }


@dataclass
class Plan:
    """What the invocation asks for: strategies × budgets × seeds (+ references)."""

    strategies: list[dict[str, Any]]
    budgets: list[float]
    seeds: list[int]
    reference: bool
    pool_size: int

    @property
    def sizes(self) -> list[int]:
        """Labelled-set size of each budget (as ``alframe.loop.BudgetSchedule`` rounds them)."""
        from alframe.loop.schedule import BudgetSchedule

        return list(BudgetSchedule.from_fractions(self.budgets, self.pool_size).cumulative)

    @property
    def n_cells(self) -> int:
        """Strategy × budget × seed cells."""
        return len(self.strategies) * len(self.budgets) * len(self.seeds)


def collect(run_dir: Path, plan: Plan) -> dict[str, Any]:
    """Cells and references found in the run folder, and the planned ones that are missing."""
    from alframe.loop import load_manifests
    from alframe.loop.summary import REFERENCE_LABEL

    manifests = load_manifests(run_dir) if run_dir.is_dir() else {}
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    references: dict[int, dict[str, Any]] = {}
    for rounds in manifests.values():
        for manifest in rounds:
            cell = cell_summary(manifest)
            if manifest.get("label") == REFERENCE_LABEL:
                references[cell["seed"]] = cell
            else:
                found[(str(manifest["label"]), cell["n_labelled"], cell["seed"])] = cell
    missing = [
        f"{strategy_label(spec)} @ {size} labels seed {seed}"
        for spec in plan.strategies
        for size in plan.sizes
        for seed in plan.seeds
        if (strategy_label(spec), size, seed) not in found
    ]
    if plan.reference:
        missing += [f"full reference seed {s}" for s in plan.seeds if s not in references]
    return {"cells": found, "references": references, "missing": missing}


# ----------------------------------------------------------------------------------------------
# Time estimate and progress


def measured_rates(
    state: Mapping[str, Any], mae_timing: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Seconds per training step, per-round overhead, reference and MAE times: measured from
    finished cells where there are any, else the priors."""
    cells = list(state["cells"].values())
    per_step = [
        c["train_seconds"] / c["steps"] for c in cells if c.get("steps") and c["train_seconds"]
    ]
    overhead = [c["seconds"] - c["train_seconds"] for c in cells if c["train_seconds"]]
    references = list(state["references"].values())
    reference_per_step = [
        c["train_seconds"] / c["steps"] for c in references if c.get("steps") and c["train_seconds"]
    ]
    mae_epoch = None
    if mae_timing and mae_timing.get("epochs"):
        mae_epoch = mae_timing["seconds"] / mae_timing["epochs"]
    return {
        "seconds_per_step": statistics.median(per_step) if per_step else PRIOR_SECONDS_PER_STEP,
        "step_source": f"measured over {len(per_step)} cells" if per_step else "prior",
        "round_overhead_s": statistics.median(overhead) if overhead else PRIOR_ROUND_OVERHEAD_S,
        "reference_seconds_per_step": statistics.median(reference_per_step)
        if reference_per_step
        else None,
        "mae_seconds_per_epoch": mae_epoch or PRIOR_MAE_SECONDS_PER_EPOCH,
    }


def estimate(
    protocol: Protocol,
    plan: Plan,
    state: Mapping[str, Any],
    rates: Mapping[str, Any],
    mae_done: bool,
) -> dict[str, Any]:
    """CPU seconds of one cell, one reference, the MAE, and of what is left of the plan.

    The reference is estimated at its epoch cap (early stopping usually ends it sooner); a step at
    the reference's batch size is taken to cost batch-ratio × a round step unless measured.
    """
    cell_s = rates["seconds_per_step"] * protocol.steps_per_round + rates["round_overhead_s"]
    train_items = math.ceil(0.9 * protocol.pool_size)
    steps = math.ceil(train_items / protocol.reference_batch_size) * protocol.reference_epochs
    per_step = rates["reference_seconds_per_step"] or rates["seconds_per_step"] * (
        protocol.reference_batch_size / protocol.round_batch_size
    )
    reference_s = per_step * steps + rates["round_overhead_s"]
    mae_s = rates["mae_seconds_per_epoch"] * protocol.mae_epochs
    cells_left = len([m for m in state["missing"] if not m.startswith("full reference")])
    refs_left = len(state["missing"]) - cells_left
    left = cells_left * cell_s + refs_left * reference_s + (0.0 if mae_done else mae_s)
    total = plan.n_cells * cell_s + (len(plan.seeds) * reference_s if plan.reference else 0) + mae_s
    return {
        "cell_seconds": cell_s,
        "reference_seconds_max": reference_s,
        "mae_seconds": mae_s,
        "cells_left": cells_left,
        "references_left": refs_left,
        "seconds_left": left,
        "seconds_total": total,
        "seconds_per_step": rates["seconds_per_step"],
        "step_source": rates["step_source"],
    }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _print_estimate(protocol: Protocol, plan: Plan, guess: Mapping[str, Any]) -> None:
    print(
        f"plan: {len(plan.strategies)} strategies × {len(plan.budgets)} budgets "
        f"{plan.sizes} × {len(plan.seeds)} seeds = {plan.n_cells} cells"
        + (f" + {len(plan.seeds)} full-data references" if plan.reference else ""),
        flush=True,
    )
    print(
        f"estimate (one core, {guess['seconds_per_step']:.2f} s/step, {guess['step_source']}): "
        f"a cell ≈ {guess['cell_seconds']:.0f} s ({protocol.steps_per_round} steps), a reference "
        f"≤ {guess['reference_seconds_max']:.0f} s, the MAE ≈ {guess['mae_seconds']:.0f} s; "
        f"whole plan ≈ {_hours(guess['seconds_total'])}; left: {guess['cells_left']} cells + "
        f"{guess['references_left']} references ≈ {_hours(guess['seconds_left'])}",
        flush=True,
    )


def _progress_hooks(total_left: int, cell_seconds: float) -> Any:
    """A :class:`~alframe.loop.LoopHooks` that prints each cell's headline and the time left."""
    from alframe.loop import LoopHooks

    class _Progress(LoopHooks):
        def __init__(self) -> None:
            self.done = 0
            self.spent: list[float] = []
            self.started = time.perf_counter()

        def on_round_start(self, arm: Any, round_index: int) -> None:
            self.started = time.perf_counter()

        def on_round_end(self, arm: Any, manifest: Mapping[str, Any]) -> None:
            cell = cell_summary(manifest)
            self.done += 1
            if not arm.is_reference:
                self.spent.append(time.perf_counter() - self.started)
            per_cell = statistics.fmean(self.spent) if self.spent else cell_seconds
            left = max(total_left - self.done, 0) * per_cell
            picks = "/".join(str(cell["picks"][s]) for s in SITES)
            print(
                f"  cell {self.done}/{total_left}: {arm.label} n={cell['n_labelled']} seed "
                f"{cell['seed']}: mean Dice {cell['dice_mean']:.4f}, worst site "
                f"{cell['worst_site']} {cell['worst_site_dice']:.4f}, picks S/J/M {picks}; "
                f"{time.perf_counter() - self.started:.0f} s; ≈ {_hours(left)} left",
                flush=True,
            )

    return _Progress()


# ----------------------------------------------------------------------------------------------
# Label-free stopping signal (issue 15, item 5)

STOP_THRESHOLDS: tuple[float, ...] = (0.95, 0.97, 0.98, 0.99)
"""Thresholds τ of the stop rule "stop after the first round whose pool agreement ≥ τ"."""

STOP_MAX_MEAN_LOSS = 0.005
"""The suggested τ is the one with the lowest mean label use whose mean Dice loss (versus going
on to the last budget) is at most this: 0.005 Dice = 0.5 Dice points."""

MIN_CORRELATION_POINTS = 5
"""Fewer (strategy, seed, round) points than this: no correlation is reported."""

MIN_STOP_RUNS = 3
"""Fewer complete runs with the signal than this: the stop rule is tabulated but no τ suggested."""

RunCells = dict[tuple[str, int], list[dict[str, Any] | None]]


def run_cells(state: Mapping[str, Any], plan: Plan) -> RunCells:
    """(strategy, seed) → its cells in budget order (None where the round is not finished)."""
    runs: RunCells = {}
    for spec in plan.strategies:
        label = strategy_label(spec)
        for seed in plan.seeds:
            runs[(label, seed)] = [state["cells"].get((label, n, seed)) for n in plan.sizes]
    return runs


def _dice(cell: Mapping[str, Any] | None) -> float | None:
    return None if cell is None else _finite(cell["dice_mean"])


def signal_points(runs: RunCells, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """One point per (strategy, seed, round r ≥ 1) whose rounds r−1 and r are finished.

    ``agreement`` is round r's ``pool_agreement`` (None where the manifest predates it),
    ``gain`` is Dice_r − Dice_{r−1}, ``remaining_gain`` Dice_last − Dice_r (None until the run's
    last round is finished).
    """
    points: list[dict[str, Any]] = []
    for (label, seed), cells in runs.items():
        last = _dice(cells[-1])
        for r in range(1, len(cells)):
            now, before = _dice(cells[r]), _dice(cells[r - 1])
            if now is None or before is None:
                continue
            current = cells[r] or {}
            points.append(
                {
                    "strategy": label,
                    "seed": seed,
                    "round": r,
                    "n_labelled": sizes[r],
                    "agreement": current.get("pool_agreement"),
                    "agreement_items": current.get("pool_agreement_items"),
                    "gain": now - before,
                    "remaining_gain": None if last is None else last - now,
                }
            )
    return points


def _stat(values: Sequence[float | None], digits: int = 5) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of the finite values (std None below two values)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean, std = _mean_std(finite)
    return {"mean": _r(mean, digits), "std": _r(std, digits), "n": len(finite)}


def signal_by_round(points: Sequence[Mapping[str, Any]], runs: RunCells) -> list[dict[str, Any]]:
    """Per strategy × round (r ≥ 1): agreement, gain and remaining gain over the seeds that have
    an agreement (so the three columns describe the same runs)."""
    rows = []
    for label in dict.fromkeys(key[0] for key in runs):
        for r in sorted({p["round"] for p in points}):
            group = [
                p
                for p in points
                if p["strategy"] == label and p["round"] == r and p["agreement"] is not None
            ]
            if not group:
                continue
            rows.append(
                {
                    "strategy": label,
                    "round": r,
                    "n_labelled": group[0]["n_labelled"],
                    "seeds": sorted(p["seed"] for p in group),
                    "agreement": _stat([p["agreement"] for p in group]),
                    "gain": _stat([p["gain"] for p in group]),
                    "remaining_gain": _stat([p["remaining_gain"] for p in group]),
                }
            )
    return rows


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's ρ and its two-sided p-value (scipy), or None values with the reason."""
    import warnings

    from scipy.stats import spearmanr

    result: dict[str, Any] = {"n_points": len(x), "rho": None, "p_value": None, "note": None}
    if len(x) < MIN_CORRELATION_POINTS:
        result["note"] = f"fewer than {MIN_CORRELATION_POINTS} points"
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
        rho, p_value = spearmanr(x, y)
    if not math.isfinite(float(rho)):
        result["note"] = "undefined (a constant variable)"
        return result
    result.update(rho=_r(float(rho), 3), p_value=_r(float(p_value), 4))
    return result


def signal_correlations(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Spearman between agreement and the round's gain, and the remaining gain, over points."""
    paired = [p for p in points if p["agreement"] is not None]
    remaining = [p for p in paired if p["remaining_gain"] is not None]
    return {
        "gain": spearman([p["agreement"] for p in paired], [p["gain"] for p in paired]),
        "remaining_gain": spearman(
            [p["agreement"] for p in remaining], [p["remaining_gain"] for p in remaining]
        ),
    }


def stop_runs(runs: RunCells) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], int, int]:
    """Runs the stop rule can be evaluated on (every round finished with a Dice, every round
    r ≥ 1 with an agreement), and the counts of unfinished runs and finished runs without one."""
    usable: dict[tuple[str, int], list[dict[str, Any]]] = {}
    unfinished = without_signal = 0
    for key, cells in runs.items():
        if any(_dice(c) is None for c in cells):
            unfinished += 1
        elif any(c is not None and c.get("pool_agreement") is None for c in cells[1:]):
            without_signal += 1
        else:
            usable[key] = [c for c in cells if c is not None]
    return usable, unfinished, without_signal


def stop_round(cells: Sequence[Mapping[str, Any]], threshold: float) -> int:
    """Index of the first round r ≥ 1 whose agreement ≥ τ; the last round when none is."""
    for r in range(1, len(cells)):
        if float(cells[r]["pool_agreement"]) >= threshold:
            return r
    return len(cells) - 1


def stop_outcomes(
    usable: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]],
    sizes: Sequence[int],
    choose: Callable[[Sequence[Mapping[str, Any]]], int],
) -> dict[str, Any]:
    """Labels used (% of the last budget) and Dice lost versus the last budget when each run stops
    at round ``choose(cells)``; the loss is signed (stopping early can score higher by noise)."""
    used: list[float] = []
    lost: list[float] = []
    early = 0
    for cells in usable.values():
        r = choose(cells)
        early += r < len(cells) - 1
        used.append(100 * sizes[r] / sizes[-1])
        lost.append(float(cells[-1]["dice_mean"]) - float(cells[r]["dice_mean"]))
    return {
        "n_runs": len(used),
        "n_stopped_early": early,
        "labels_pct_mean": _r(statistics.fmean(used), 1) if used else None,
        "loss_mean": _r(statistics.fmean(lost), 5) if lost else None,
        "loss_worst": _r(max(lost), 5) if lost else None,
    }


def suggest_threshold(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The τ row with the lowest mean label use among those with mean loss ≤
    :data:`STOP_MAX_MEAN_LOSS` (ties: the smaller worst loss, then the larger τ)."""
    ok = [r for r in rows if r["loss_mean"] is not None and r["loss_mean"] <= STOP_MAX_MEAN_LOSS]
    if not ok:
        return None
    return dict(min(ok, key=lambda r: (r["labels_pct_mean"], r["loss_worst"], -r["threshold"])))


def stop_rule(runs: RunCells, sizes: Sequence[int]) -> dict[str, Any]:
    """The τ grid and the fixed-budget baselines on the same runs, and the suggested τ."""
    usable, unfinished, without_signal = stop_runs(runs)
    thresholds = [
        {"threshold": t, **stop_outcomes(usable, sizes, lambda c, t=t: stop_round(c, t))}
        for t in STOP_THRESHOLDS
    ]
    fixed = [
        {"n_labelled": n, **stop_outcomes(usable, sizes, lambda c, r=r: r)}
        for r, n in enumerate(sizes)
    ]
    enough = len(usable) >= MIN_STOP_RUNS
    cheapest_fixed = suggest_threshold([{**row, "threshold": 0.0} for row in fixed])
    return {
        "runs_used": len(usable),
        "runs_unfinished": unfinished,
        "runs_without_agreement": without_signal,
        "runs": sorted(f"{label} seed {seed}" for label, seed in usable),
        "thresholds": thresholds,
        "fixed_budgets": fixed,
        "selection_rule": (
            f"lowest mean label use with mean Dice loss ≤ {STOP_MAX_MEAN_LOSS} "
            f"({100 * STOP_MAX_MEAN_LOSS:g} Dice points); ties: smaller worst loss, larger τ"
        ),
        "suggested": suggest_threshold(thresholds) if enough else None,
        "cheapest_fixed_budget": cheapest_fixed if enough else None,
        "enough_runs": enough,
    }


def stopping_signal(state: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """The label-free stopping signal against the true learning curve, from the cells alone."""
    runs = run_cells(state, plan)
    points = signal_points(runs, plan.sizes)
    with_signal = [p for p in points if p["agreement"] is not None]
    return {
        "definition": (
            "pool_agreement of round r: mean Dice between the argmax predictions of the round "
            "r−1 and round r models on the items still unlabelled after round r "
            "(alframe.loop.pool_agreement); gain: Dice_r − Dice_{r−1}; remaining gain: "
            "Dice_last − Dice_r (mean Dice over all test images, 0–1 scale)"
        ),
        "n_points": len(with_signal),
        "n_points_without_agreement": len(points) - len(with_signal),
        "by_round": signal_by_round(points, runs),
        "correlation": signal_correlations(points),
        "stop_rule": stop_rule(runs, plan.sizes) if len(plan.sizes) > 1 else None,
        "points": [
            {k: (_r(v, 5) if isinstance(v, float) else v) for k, v in p.items()} for p in points
        ],
    }


# ----------------------------------------------------------------------------------------------
# Report


def build_report(
    protocol: Protocol,
    composition: Composition,
    plan: Plan,
    state: Mapping[str, Any],
    guess: Mapping[str, Any],
    seconds: float | None,
    run_dir: Path,
    smoke: bool,
) -> dict[str, Any]:
    """The JSON document: protocol, per strategy × budget results, reference, the label-free
    stopping signal, timing."""
    import torch

    from alframe.loop.state import package_versions

    reference_cells = [state["references"][s] for s in plan.seeds if s in state["references"]]
    reference = aggregate(reference_cells) if reference_cells else None
    counts = composition.counts()
    results: dict[str, Any] = {}
    for spec in plan.strategies:
        label = strategy_label(spec)
        rows = []
        for fraction, size in zip(plan.budgets, plan.sizes):
            cells = [
                state["cells"][(label, size, seed)]
                for seed in plan.seeds
                if (label, size, seed) in state["cells"]
            ]
            row: dict[str, Any] = {
                "budget_fraction": fraction,
                "n_labelled": size,
                "n_seeds": 0,
            }
            if cells:
                row.update(aggregate(cells))
                if reference and reference["dice_mean"] and row["dice_mean"] is not None:
                    row["pct_of_full"] = _r(100 * row["dice_mean"] / reference["dice_mean"], 2)
                    row["worst_site_pct_of_full"] = _r(
                        100 * row["worst_site_dice_mean"] / reference["worst_site_dice_mean"], 2
                    )
            rows.append(row)
        results[label] = {"spec": spec, "budgets": rows}
    pool_total = sum(counts["pool"].values())
    done = plan.n_cells - len([m for m in state["missing"] if not m.startswith("full reference")])
    return {
        "benchmark": NAME,
        "status": "complete" if not state["missing"] else "partial",
        "smoke": smoke,
        "cells_done": done,
        "cells_planned": plan.n_cells,
        "references_done": len(reference_cells),
        "missing": state["missing"],
        "protocol": {
            **asdict(protocol),
            "composition": counts,
            "pool_share": {s: _r(counts["pool"][s] / pool_total, 4) for s in SITES},
            "budgets": plan.budgets,
            "budget_sizes": plan.sizes,
            "seeds": plan.seeds,
            "strategies": plan.strategies,
            "full_reference": plan.reference,
            "model": "Unet/resnet18",
            "retrain": "scratch",
            "cold_start": "random",
            "mean_dice": "mean over every test image (all sites pooled)",
            "worst_site_dice": "per seed the lowest per-site mean Dice, then mean ± std",
        },
        "results": results,
        "full_reference": reference,
        "stopping_signal": stopping_signal(state, plan),
        "goal_check": goal_check(results),
        "mae_seed_check": None if smoke else mae_seed_check(run_dir.parent, plan),
        "mae_ensemble_check": None if smoke else mae_ensemble_check(run_dir.parent, plan),
        "timing": {
            "wall_seconds_this_invocation": _r(seconds, 1),
            "estimate": {k: (_r(v, 2) if isinstance(v, float) else v) for k, v in guess.items()},
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "versions": package_versions(),
        },
        "run_dir": _relative(run_dir),
    }


GOAL_BUDGET = 0.05
GOAL_WORST_SITE_GAIN = 0.01
"""Issue 15's goal: at 5 % labels, ≥ 1 Dice point over random on the worst site."""


def seed_noise(*stds: float | None) -> float:
    """The larger of the stds over seeds (a missing std counts as 0): a mean difference below
    minus this is "below the baseline beyond seed noise" on every page that uses it."""
    return max((s for s in stds if s is not None), default=0.0)


def goal_check(results: Mapping[str, Any], baseline: str = "random") -> list[dict[str, Any]]:
    """Each strategy against ``baseline``: the worst-site gain at :data:`GOAL_BUDGET` and, at
    every budget, whether its mean Dice falls below the baseline's beyond seed noise.

    "Beyond seed noise" = the mean difference is below minus the larger of the two stds over
    seeds (a single-seed cell has no std and is never judged as noise-free evidence).

    Args:
        results: ``report["results"]`` (label → ``{"budgets": rows}``).
        baseline: the label compared against.

    Returns:
        One row per strategy other than the baseline, in ``results`` order.
    """
    if baseline not in results:
        return []
    base_rows = {row["n_labelled"]: row for row in results[baseline]["budgets"]}
    checks = []
    for label, entry in results.items():
        if label == baseline:
            continue
        budgets = []
        for row in entry["budgets"]:
            base = base_rows.get(row["n_labelled"])
            if not row["n_seeds"] or not base or not base["n_seeds"]:
                continue
            noise = seed_noise(row["dice_std"], base["dice_std"])
            mean_gain = row["dice_mean"] - base["dice_mean"]
            budgets.append(
                {
                    "n_labelled": row["n_labelled"],
                    "budget_fraction": row["budget_fraction"],
                    "n_seeds": min(row["n_seeds"], base["n_seeds"]),
                    "mean_gain": _r(mean_gain, 5),
                    "worst_site_gain": _r(
                        row["worst_site_dice_mean"] - base["worst_site_dice_mean"], 5
                    ),
                    "seed_noise": _r(noise, 5),
                    "below_baseline": bool(mean_gain < -noise),
                }
            )
        at_goal = next(
            (b for b in budgets if math.isclose(b["budget_fraction"], GOAL_BUDGET)), None
        )
        checks.append(
            {
                "label": label,
                "budgets": budgets,
                "worst_site_gain_at_goal": None if at_goal is None else at_goal["worst_site_gain"],
                "never_below": all(not b["below_baseline"] for b in budgets),
                "goal_met": bool(
                    at_goal is not None
                    and at_goal["worst_site_gain"] is not None
                    and at_goal["worst_site_gain"] >= GOAL_WORST_SITE_GAIN - 5e-5
                    and all(not b["below_baseline"] for b in budgets)
                ),
            }
        )
    return checks


def _goal_lines(checks: Sequence[Mapping[str, Any]], sizes: Sequence[int]) -> list[str]:
    if not checks:
        return []
    lines = [
        "## Goal check (issue 15): against random",
        "",
        f"Goal: at {100 * GOAL_BUDGET:g} % labels, ≥ {100 * GOAL_WORST_SITE_GAIN:g} Dice point "
        "over random on the worst site, and mean Dice never below random beyond seed noise "
        "(a mean difference below minus the larger std over seeds) at any budget. Cells: mean "
        "gain / worst-site gain in Dice points; ✗ marks a mean below random beyond noise.",
        "",
        "| strategy | " + " | ".join(f"{n} labels" for n in sizes) + " | goal |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    for check in checks:
        by_size = {b["n_labelled"]: b for b in check["budgets"]}
        cells = []
        for n in sizes:
            b = by_size.get(n)
            if b is None:
                cells.append("–")
                continue
            mark = " ✗" if b["below_baseline"] else ""
            cells.append(f"{_pts(b['mean_gain'])} / {_pts(b['worst_site_gain'])}{mark}")
        verdict = "**met**" if check["goal_met"] else "not met"
        lines.append(f"| {check['label']} | " + " | ".join(cells) + f" | {verdict} |")
    lines.append("")
    return lines


MAE_SEED_FOLDER = "mae_seed{seed}"
"""Work folders (beside the main one) of the MAE-seed check: the same protocol with the recipe
seed (hence the MAE's seed) set to ``seed``, running ``xssr_add`` with training seed ``seed``."""


def _label_cells(
    run_dirs: Mapping[int, Path], label: str, sizes: Sequence[int]
) -> dict[str, Any] | None:
    """``label``'s cells of seed s from ``run_dirs[s]``, aggregated per size (None: < 2 seeds)."""
    from alframe.loop import load_manifests

    cells: dict[int, list[dict[str, Any]]] = {}
    seeds = []
    for seed, run_dir in run_dirs.items():
        if not run_dir.is_dir():
            continue
        found = False
        for rounds in load_manifests(run_dir).values():
            for manifest in rounds:
                if manifest.get("label") == label and int(manifest["seed"]) == seed:
                    cell = cell_summary(manifest)
                    cells.setdefault(cell["n_labelled"], []).append(cell)
                    found = True
        if found:
            seeds.append(seed)
    if len(seeds) < 2:
        return None
    return {
        "label": label,
        "seeds": seeds,
        "budgets": [
            {"n_labelled": size, **aggregate(cells[size])} for size in sizes if size in cells
        ],
    }


def mae_seed_check(work: Path, plan: Plan, label: str = "xssr_add") -> dict[str, Any] | None:
    """``label`` with one MAE per seed (from the :data:`MAE_SEED_FOLDER` folders, seed 0 from
    the main run) next to the same strategy on the one seed-0 MAE.

    Returns:
        ``{"seeds": [...], "budgets": [aggregate row per size]}`` or None when no folder exists.
    """
    run_dirs = {
        # The main run's MAE is the seed-0 MAE.
        seed: work / "run" if seed == 0 else work.parent / MAE_SEED_FOLDER.format(seed=seed) / "run"
        for seed in plan.seeds
    }
    return _label_cells(run_dirs, label, plan.sizes)


MAE_ENSEMBLE_FOLDER = "mae_ensemble3"
"""Work folder (beside the main one) of the MAE-ensemble check: ``xssr_add`` on the three MAEs
(seeds 0, 1, 2) combined with ``embed.ensemble``, training seeds 0, 1, 2."""


def mae_ensemble_check(work: Path, plan: Plan, label: str = "xssr_add") -> dict[str, Any] | None:
    """``label`` on the ensemble of the three MAEs (see :data:`MAE_ENSEMBLE_FOLDER`)."""
    run_dir = work.parent / MAE_ENSEMBLE_FOLDER / "run"
    return _label_cells({seed: run_dir for seed in plan.seeds}, label, plan.sizes)


def _mae_seed_lines(check: Mapping[str, Any] | None, results: Mapping[str, Any]) -> list[str]:
    if not check:
        return []
    label = check["label"]
    intro = [
        f"## Does {label}'s result depend on its MAE?",
        "",
        f"XSSR's picks depend only on the embedding, so the main table's {label} seeds share one "
        "MAE (seed 0) and differ by training noise alone. Here each seed s trains its own MAE "
        f"(recipe seed s, same archive and epochs) and then runs {label} with training seed s "
        f"(seeds {check['seeds']}; work folders `{MAE_SEED_FOLDER.format(seed='<s>')}` beside "
        "the main one, made by `--work …/mae_seed<s> --strategies xssr_add --seeds <s> "
        "--no-reference --set seed=<s>`). If the per-seed column falls back toward random, the "
        "one-MAE result owed part of its gain to that MAE.",
    ]
    return _variant_lines(check, results, intro, "MAE per seed", "an MAE per seed")


def _mae_ensemble_lines(check: Mapping[str, Any] | None, results: Mapping[str, Any]) -> list[str]:
    if not check:
        return []
    label = check["label"]
    intro = [
        "## Does an ensemble of MAEs make the picks robust?",
        "",
        f"{label} on the three MAEs above (seeds 0, 1, 2) at once: `embed.ensemble` unit-"
        "normalises each MAE's embedding and concatenates them, so neighbour distances average "
        f"over the three. Training seeds {check['seeds']}; work folder `{MAE_ENSEMBLE_FOLDER}` "
        f"beside the main one, made by `--work …/{MAE_ENSEMBLE_FOLDER} --strategies xssr_add "
        "--seeds 0 1 2 --no-reference --set embed.weights=<seed-0 mae.ckpt> --set "
        "embed.ensemble=[<seed-1 mae.ckpt>,<seed-2 mae.ckpt>]`.",
    ]
    return _variant_lines(check, results, intro, "MAE ensemble", "the MAE ensemble")


def _variant_lines(
    check: Mapping[str, Any],
    results: Mapping[str, Any],
    intro: Sequence[str],
    column: str,
    phrase: str,
) -> list[str]:
    """A table of one variant of ``check['label']`` against the one-MAE run and random."""
    label = check["label"]
    one_mae = {row["n_labelled"]: row for row in results.get(label, {}).get("budgets", [])}
    random_rows = {row["n_labelled"]: row for row in results.get("random", {}).get("budgets", [])}
    lines = [
        *intro,
        "",
        f"| labels | one MAE: mean / worst site | {column}: mean / worst site | picks S / J / M "
        f"({column}) | random: mean / worst site |",
        "|---|---|---|---|---|",
    ]

    def pair(row: Mapping[str, Any] | None) -> str:
        if not row or not row.get("n_seeds"):
            return "–"
        return (
            f"{_pm(row['dice_mean'], row['dice_std'])} / "
            f"{_pm(row['worst_site_dice_mean'], row['worst_site_dice_std'])}"
        )

    for row in check["budgets"]:
        n = row["n_labelled"]
        picks = " / ".join(f"{row['picks_mean'][s]:g}" for s in SITES)
        lines.append(
            f"| {n} | {pair(one_mae.get(n))} | {pair(row)} | {picks} | {pair(random_rows.get(n))} |"
        )
    gains = []
    for row in check["budgets"]:
        base = random_rows.get(row["n_labelled"])
        if base and base.get("n_seeds"):
            gains.append(
                f"{row['n_labelled']} labels "
                f"{_pts(row['dice_mean'] - base['dice_mean'])} / "
                f"{_pts(row['worst_site_dice_mean'] - base['worst_site_dice_mean'])}"
            )
    if gains:
        lines += [
            "",
            f"Gain of {label} with {phrase} over random (mean / worst site, Dice "
            "points): "
            + "; ".join(gains)
            + f". The goal above needs ≥ {100 * GOAL_WORST_SITE_GAIN:g} worst-site point at "
            f"{100 * GOAL_BUDGET:g} %.",
        ]
    lines.append("")
    return lines


def worst_site_cell(row: Mapping[str, Any]) -> str:
    """Which site was the worst, over the seeds: ``"JSRT 1, Montgomery 2"``."""
    return ", ".join(
        f"{SITE_TITLES.get(s, s)} {n}" for s, n in sorted(row["worst_site_counts"].items())
    )


def pct_of_full_cell(row: Mapping[str, Any]) -> str:
    """``"mean % / worst-site %"`` of the full-data reference, or a dash without one."""
    if row.get("pct_of_full") is None:
        return "–"
    return f"{row['pct_of_full']:.1f} / {row['worst_site_pct_of_full']:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _missing_summary(missing: Sequence[str], limit: int = 12) -> str:
    shown = "; ".join(missing[:limit])
    return shown + (f"; … and {len(missing) - limit} more" if len(missing) > limit else "")


def _pts(mean: float | None, std: float | None = None) -> str:
    """A Dice difference in Dice points (×100), signed, with its std when there is one."""
    if mean is None:
        return "–"
    text = f"{100 * mean:+.2f}"
    return text + (f" ± {100 * std:.2f}" if std is not None else "")


def _rho(corr: Mapping[str, Any]) -> str:
    if corr["rho"] is None:
        return f"not reported ({corr['note']}; {corr['n_points']} points)"
    return f"ρ = {corr['rho']:+.3f} (p = {corr['p_value']:.3g}, {corr['n_points']} points)"


def _signal_round_lines(signal: Mapping[str, Any], last: int) -> list[str]:
    """The per strategy × round table and the correlations."""
    lines = [
        f"| strategy | labels | seeds | pool agreement | gain of the round (pts) "
        f"| remaining gain to {last} (pts) |",
        "|---|---|---|---|---|---|",
    ]
    for row in signal["by_round"]:
        agreement = _pm(row["agreement"]["mean"], row["agreement"]["std"])
        gain, left = row["gain"], row["remaining_gain"]
        remaining = "0 (last)" if row["n_labelled"] == last else _pts(left["mean"], left["std"])
        lines.append(
            f"| {row['strategy']} | {row['n_labelled']} | {len(row['seeds'])} | {agreement} | "
            f"{_pts(gain['mean'], gain['std'])} | {remaining} |"
        )
    corr = signal["correlation"]
    text = (
        "Spearman over all (strategy, seed, round) points, every round pooled (a useful signal "
        "is negative: high agreement, little gain): agreement vs the round's gain "
        f"{_rho(corr['gain'])}; agreement vs the remaining gain {_rho(corr['remaining_gain'])}."
    )
    if corr["gain"]["rho"] is not None or corr["remaining_gain"]["rho"] is not None:
        text += (
            " Points of one run, and strategies that share a cold start, are not independent, "
            "so the p-values are optimistic."
        )
    return [*lines, "", text]


def _stop_table_lines(stop: Mapping[str, Any], sizes: Sequence[int]) -> list[str]:
    """The τ grid next to the fixed-budget baselines."""
    lines = [
        f"| rule | runs | stopped early | labels (% of {sizes[-1]}) | mean loss (pts) "
        "| worst loss (pts) |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"agreement ≥ {r['threshold']:g}", r) for r in stop["thresholds"]]
    rows += [(f"always stop at {r['n_labelled']} labels", r) for r in stop["fixed_budgets"]]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['n_runs']} | {r['n_stopped_early']} | {r['labels_pct_mean']:.1f} | "
            f"{_pts(r['loss_mean'])} | {_pts(r['loss_worst'])} |"
        )
    return lines


def _stop_verdict(stop: Mapping[str, Any]) -> str:
    """The suggested τ (by the stated rule) and how it compares with a fixed budget."""
    if not stop["enough_runs"]:
        return f"Too few runs ({stop['runs_used']} < {MIN_STOP_RUNS}) to suggest a threshold."
    best, fixed = stop["suggested"], stop["cheapest_fixed_budget"]
    if best is None:
        return f"No τ of the grid meets the rule ({stop['selection_rule']})."
    text = (
        f"Suggested: **τ = {best['threshold']:g}** ({stop['selection_rule']}): "
        f"{best['labels_pct_mean']:.1f} % of the labels for a mean loss of "
        f"{_pts(best['loss_mean'])} Dice points (worst run {_pts(best['loss_worst'])})."
    )
    if fixed is not None:
        beats = best["labels_pct_mean"] < fixed["labels_pct_mean"]
        text += (
            f" The cheapest fixed budget under the same rule is {fixed['n_labelled']} labels "
            f"({fixed['labels_pct_mean']:.1f} %, mean loss {_pts(fixed['loss_mean'])}), so on "
            "these runs the signal "
            + ("saves labels over a fixed budget." if beats else "does not beat a fixed budget.")
        )
    return text


def _stop_rule_lines(stop: Mapping[str, Any] | None, sizes: Sequence[int]) -> list[str]:
    """The stop-rule subsection."""
    if stop is None:
        return ["The stop rule needs at least two budgets (rounds)."]
    if not stop["runs_used"]:
        return [
            "Stop rule: no run has every round finished with an agreement yet "
            f"({stop['runs_unfinished']} unfinished, {stop['runs_without_agreement']} without "
            "an agreement)."
        ]
    early = ", ".join(str(n) for n in sizes[1:-1]) or "none"
    return [
        f"**Stop rule** “stop after the first round whose agreement ≥ τ”, on the "
        f"{stop['runs_used']} runs whose every round is finished and carries an agreement "
        f"({stop['runs_unfinished']} unfinished and {stop['runs_without_agreement']} without an "
        "agreement left out). Labels: at the stop, as % of the last budget, mean over runs. Loss: "
        "Dice(last) − Dice at the stop in Dice points, mean and worst over runs (a run that never "
        "stops uses every label and loses 0; a negative loss means stopping early scored higher, "
        "by noise). The fixed budgets are the baselines on the same runs.",
        "",
        *_stop_table_lines(stop, sizes),
        "",
        _stop_verdict(stop),
        "",
        f"A coarse test: with {len(sizes)} rounds per run the rule can stop early only at "
        f"{early} labels or run on to {sizes[-1]}, and τ is picked on the same runs it is "
        "scored on (in-sample), so its loss is optimistic.",
    ]


def _signal_lines(signal: Mapping[str, Any] | None, sizes: Sequence[int]) -> list[str]:
    """The "Label-free stopping signal" section of the page."""
    if signal is None:
        return []
    if len(sizes) < 2:
        return [
            "## Label-free stopping signal",
            "",
            "The pool agreement compares consecutive rounds: it needs at least two budgets.",
            "",
        ]
    lines = [
        "## Label-free stopping signal",
        "",
        "**Pool agreement** of round r: mean Dice between the round r−1 and round r models' "
        "argmax predictions on the images still unlabelled after round r (needs no labels; "
        "`alframe.loop.pool_agreement`). Next to it, from the test labels it never sees: the "
        "round's **gain** (mean Dice(r) − Dice(r−1)) and the **remaining gain** to the last "
        "budget (Dice(last) − Dice(r)), in Dice points (×100); mean ± std over the seeds that have "
        f"an agreement. From the cached round manifests: {signal['n_points']} (strategy, seed, "
        f"round ≥ 1) point(s) with an agreement; {signal['n_points_without_agreement']} "
        "finished point(s) without one (manifests written before the signal existed) left out.",
        "",
    ]
    if signal["n_points"]:
        lines += _signal_round_lines(signal, sizes[-1])
    else:
        lines.append("No finished round carries a pool agreement yet.")
    return [*lines, "", *_stop_rule_lines(signal["stop_rule"], sizes), ""]


def build_markdown(report: Mapping[str, Any]) -> str:
    """The page: status, protocol, the strategy × budget tables, the label-free stopping
    signal, notes and timing."""
    p = report["protocol"]
    counts = p["composition"]
    lines = [
        "# Multi-site chest X-ray pool: strategies × budgets (issue 15)",
        "",
    ]
    if report["smoke"]:
        lines += ["**SMOKE RUN** — shrunk training; the numbers test the pipeline only.", ""]
    if report["status"] != "complete":
        lines += [
            f"> **PARTIAL** — {report['cells_done']} of {report['cells_planned']} cells and "
            f"{report['references_done']} of {len(p['seeds']) if p['full_reference'] else 0} "
            f"full-data references finished. Missing: {_missing_summary(report['missing'])}.",
            "",
        ]
    pool_total = sum(counts["pool"].values())
    lines += [
        "| site | pool (share) | MAE source (unlabelled) | test |",
        "|---|---|---|---|",
    ]
    for site in SITES:
        lines.append(
            f"| {SITE_TITLES[site]} | {counts['pool'][site]} ({100 * p['pool_share'][site]:.1f} %)"
            f" | {counts['source'][site]} | {counts['test'][site]} |"
        )
    lines += [
        f"| all | {pool_total} | {sum(counts['source'].values())} | "
        f"{sum(counts['test'].values())} |",
        "",
        f"Pool: a seeded draw (pool seed {p['pool_seed']}) from the `train` split of "
        "`cxr_lungs/splits.csv`, the same for every strategy and seed. Test: the `test` split of "
        f"every site. MAE source (`{p['mae_source']}`): train-split images outside the pool, "
        "stored without masks; the one MAE (seed 0, "
        f"{p['mae_epochs']} epochs, patch {p['mae_patch_size']} px) gives the embeddings of "
        "XSSR, CoreSet and TypiClust."
        + (
            f" Its neighbour contrast on the pool (`alframe.scoring.structure`; ≈ 0 = no "
            f"neighbour structure, `alframe select` hints below "
            f"{report['embedding_contrast']['threshold']}): "
            f"**{report['embedding_contrast']['contrast']:.2f}** (nearest-neighbour / random-pair "
            f"distance {report['embedding_contrast']['ratio']:.3f}, shuffled "
            f"{report['embedding_contrast']['shuffled_ratio']:.3f})."
            if report.get("embedding_contrast")
            else ""
        ),
        "",
        f"Training: {p['image_size']}×{p['image_size']} (a 2-CPU-core budget), {p['model']} "
        f"from scratch every round, {p['steps_per_round']} steps at batch "
        f"{p['round_batch_size']}; budgets {', '.join(f'{100 * b:g} %' for b in p['budgets'])} "
        f"of the pool = {p['budget_sizes']} labels, run as the cumulative rounds of one "
        "active-learning run per strategy × seed. Entropy and margin need a model: their first "
        f"round is the cold start ({p['cold_start']}). Seeds {p['seeds']}. Full-data reference: "
        f"all {pool_total} pool images, at most {p['reference_epochs']} epoch(s) at batch "
        f"{p['reference_batch_size']}, early stopping (patience {p['reference_patience']}) on "
        "10 % of them.",
        "",
        "Cells: mean ± std over seeds. **Mean Dice**: over every test image (sites pooled). "
        "**Worst site**: per seed the lowest per-site Dice, then mean ± std (in brackets: which "
        "site it was, over the seeds). **% of full**: mean Dice / the reference's mean Dice, "
        "worst-site Dice / the reference's worst-site Dice. **Picks**: labels per site (Shenzhen / JSRT / Montgomery), "
        "mean over seeds; a proportional draw would give "
        + ", ".join(
            f"{size}: " + " / ".join(f"{size * counts['pool'][s] / pool_total:.1f}" for s in SITES)
            for size in p["budget_sizes"]
        )
        + ".",
        "",
        "| strategy | labels | seeds | mean Dice | worst-site Dice | % of full (mean / worst) "
        "| picks S / J / M |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, entry in report["results"].items():
        for row in entry["budgets"]:
            size = f"{row['n_labelled']} ({100 * row['budget_fraction']:g} %)"
            if not row["n_seeds"]:
                lines.append(f"| {label} | {size} | 0 | – | – | – | – |")
                continue
            which = worst_site_cell(row)
            pct = pct_of_full_cell(row)
            picks = " / ".join(f"{row['picks_mean'][s]:g}" for s in SITES)
            cold = " (cold start)" if row["cold_start"] else ""
            lines.append(
                f"| {label}{cold} | {size} | {row['n_seeds']} | "
                f"{_pm(row['dice_mean'], row['dice_std'])} | "
                f"{_pm(row['worst_site_dice_mean'], row['worst_site_dice_std'])} ({which}) | "
                f"{pct} | {picks} |"
            )
    reference = report["full_reference"]
    if reference:
        which = ", ".join(
            f"{SITE_TITLES.get(s, s)} {n}"
            for s, n in sorted(reference["worst_site_counts"].items())
        )
        lines.append(
            f"| full reference | {pool_total} | {reference['n_seeds']} | "
            f"{_pm(reference['dice_mean'], reference['dice_std'])} | "
            f"{_pm(reference['worst_site_dice_mean'], reference['worst_site_dice_std'])} "
            f"({which}) | 100 | – |"
        )
    lines += [
        "",
        "Dice per test site (mean ± std over seeds):",
        "",
        "| strategy | labels | " + " | ".join(SITE_TITLES[s] for s in SITES) + " |",
        "|---|---|" + "---|" * len(SITES),
    ]
    for label, entry in report["results"].items():
        for row in entry["budgets"]:
            if not row["n_seeds"]:
                continue
            cells = " | ".join(
                _pm(row["site_dice"][s]["mean"], row["site_dice"][s]["std"]) for s in SITES
            )
            lines.append(f"| {label} | {row['n_labelled']} | {cells} |")
    if reference:
        cells = " | ".join(
            _pm(reference["site_dice"][s]["mean"], reference["site_dice"][s]["std"]) for s in SITES
        )
        lines.append(f"| full reference | {pool_total} | {cells} |")
    timing = report["timing"]
    guess = timing["estimate"]
    env = report["environment"]
    lines += ["", *_goal_lines(report.get("goal_check") or [], p["budget_sizes"])]
    lines += _mae_seed_lines(report.get("mae_seed_check"), report["results"])
    lines += _mae_ensemble_lines(report.get("mae_ensemble_check"), report["results"])
    lines += ["", *_signal_lines(report.get("stopping_signal"), p["budget_sizes"])]
    lines += [
        "Notes: the cold-start rounds of entropy and margin pick with the same seed as the random "
        "arm and train with the same seed, so they repeat random's first cell. XSSR and CoreSet "
        "picks depend on the embedding only (one MAE), so their spread over seeds is training "
        "noise alone.",
        "",
        f"Timing: {guess['seconds_per_step']} s per training step ({guess['step_source']}), so a "
        f"cell ≈ {guess['cell_seconds']:.0f} s of one core, a full-data reference ≤ "
        f"{guess['reference_seconds_max']:.0f} s, the MAE ≈ {guess['mae_seconds']:.0f} s; the "
        f"whole plan ≈ {_hours(guess['seconds_total'])}. Environment: Python {env['python']}, "
        f"{env['cpu_count']} CPUs, torch threads {env['torch_threads']}.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], docs: Path, name: str) -> None:
    """``<docs>/<name>.json`` and ``<docs>/<name>.md``, each written atomically."""
    from alframe.loop.state import atomic_write_json, atomic_write_text

    docs.mkdir(parents=True, exist_ok=True)
    atomic_write_json(docs / f"{name}.json", report)
    atomic_write_text(docs / f"{name}.md", build_markdown(report))
    print(f"wrote {docs / (name + '.json')} and {docs / (name + '.md')} ({report['status']})")


# ----------------------------------------------------------------------------------------------
# Main


def _train_mae(recipe: Any, work: Path) -> None:
    """Train the source MAE unless cached (what run_experiment would do), timing it."""
    from alframe.embed import train_mae
    from alframe.embed.pipeline import mae_checkpoint_path
    from alframe.loop.state import atomic_write_json

    if mae_checkpoint_path(recipe).exists():
        return
    print(f"training the MAE on {recipe.data.source.dataset!r} images …", flush=True)
    result = train_mae(recipe)
    print(
        f"MAE: {result.n_images} source images, {result.epochs} epochs in "
        f"{result.wall_time_s:.0f} s (final loss {result.final_loss:.4f})",
        flush=True,
    )
    atomic_write_json(
        work / "mae_timing.json",
        {"seconds": result.wall_time_s, "epochs": result.epochs, "n_images": result.n_images},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=os.environ.get("ALFRAME_DATA"))
    parser.add_argument("--work", type=Path, default=None, help="cache folder (see above)")
    parser.add_argument("--docs", type=Path, default=None, help="where the page goes")
    parser.add_argument("--report-only", action="store_true", help="no training: the page only")
    parser.add_argument("--smoke", action="store_true", help="a few-minute pipeline check")
    parser.add_argument("--strategies", nargs="+", default=None, metavar="LABEL")
    parser.add_argument("--add-strategy", action="append", default=[], metavar="LABEL=NAME[:JSON]")
    parser.add_argument("--budgets", nargs="+", type=float, default=None, metavar="FRACTION")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip the full-data reference")
    parser.add_argument("--proportions", default=None, help="e.g. shenzhen=0.8,jsrt=0.12,...")
    parser.add_argument("--pool-size", type=int, default=Protocol.pool_size)
    parser.add_argument("--pool-seed", type=int, default=Protocol.pool_seed)
    parser.add_argument("--mae-source", choices=("archive", "dominant"), default="archive")
    parser.add_argument("--source-size", type=int, default=Protocol.source_size)
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps per round")
    parser.add_argument("--mae-epochs", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)

    if not args.data_root:
        raise SystemExit(
            "set ALFRAME_DATA (e.g. export ALFRAME_DATA=../shared/data) or --data-root"
        )
    cxr_root = Path(args.data_root).expanduser().resolve() / "cxr_lungs"
    work = (args.work or WORK / ("smoke" if args.smoke else "full")).resolve()
    docs = (args.docs or (work if args.smoke else DOCS)).resolve()
    protocol = Protocol(
        pool_size=args.pool_size,
        proportions=parse_proportions(args.proportions)
        if args.proportions
        else dict(DEFAULT_PROPORTIONS),
        pool_seed=args.pool_seed,
        mae_source=args.mae_source,
        source_size=args.source_size,
        steps_per_round=args.steps or (20 if args.smoke else Protocol.steps_per_round),
        mae_epochs=args.mae_epochs or (2 if args.smoke else Protocol.mae_epochs),
        # One epoch rather than a max_steps cap: a cap below one epoch never validates, and
        # alframe's early stopping then fails on the missing val/dice.
        reference_epochs=1 if args.smoke else Protocol.reference_epochs,
        overrides=tuple(args.overrides),
    )
    added = [parse_strategy(text) for text in args.add_strategy]
    wanted = args.strategies or (["random", "coreset"] if args.smoke else None)
    plan = Plan(
        strategies=choose_strategies(wanted, added),
        budgets=list(args.budgets or ([0.05] if args.smoke else DEFAULT_BUDGETS)),
        seeds=list(args.seeds or ([0] if args.smoke else DEFAULT_SEEDS)),
        reference=not args.no_reference,
        pool_size=protocol.pool_size,
    )

    composition = compose(read_splits(cxr_root), protocol)
    work.mkdir(parents=True, exist_ok=True)
    check_protocol(work, protocol, composition)
    data_dir, run_dir = work / "data", work / "run"
    build_data_folder(data_dir, cxr_root, composition)

    from alframe.config import apply_overrides, recipe_from_dict

    os.chdir(REPO)  # relative data.root / output_dir are relative to the repository
    name = f"{NAME}_smoke" if args.smoke else NAME
    tracking_uri = None if args.no_track else f"sqlite:///{work / 'mlflow.db'}"
    raw = recipe_dict(
        protocol,
        data_dir,
        run_dir,
        plan.strategies,
        plan.budgets,
        plan.seeds,
        plan.reference,
        tracking_uri,
        name,
    )
    recipe = recipe_from_dict(apply_overrides(raw, protocol.overrides), f"{NAME} benchmark")

    def mae_timing() -> dict[str, Any] | None:
        path = work / "mae_timing.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    from alframe.embed.pipeline import mae_checkpoint_path

    def refresh() -> tuple[dict[str, Any], dict[str, Any]]:
        """The finished cells and the time estimate, printed (before and after training)."""
        cells = collect(run_dir, plan)
        rates = measured_rates(cells, mae_timing())
        estimated = estimate(protocol, plan, cells, rates, mae_checkpoint_path(recipe).exists())
        _print_estimate(protocol, plan, estimated)
        return cells, estimated

    state, guess = refresh()

    seconds = None
    if not args.report_only and state["missing"]:
        import logging
        import warnings

        from alframe.loop import run_experiment

        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal noise
        for logger in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        started = time.perf_counter()
        interrupted = False
        try:
            _train_mae(recipe, work)
            hooks = _progress_hooks(len(state["missing"]), guess["cell_seconds"])
            # progress=False: the hook prints one richer line per cell instead.
            run_experiment(
                recipe, resume=True, track=tracking_uri is not None, hooks=hooks, progress=False
            )
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: finished cells are kept; rerun the same command to continue")
        seconds = time.perf_counter() - started
        state, guess = refresh()
        if interrupted:
            write_report(
                build_report(
                    protocol, composition, plan, state, guess, seconds, run_dir, args.smoke
                ),
                docs,
                NAME,
            )
            return 130
    report = build_report(protocol, composition, plan, state, guess, seconds, run_dir, args.smoke)
    report["embedding_contrast"] = embedding_contrast(recipe)
    write_report(report, docs, NAME)
    return 0


def embedding_contrast(recipe: Any) -> dict[str, Any] | None:
    """The label-free neighbour contrast of the MAE's pool embedding (None before the MAE)."""
    from alframe.embed import embed_pool
    from alframe.embed.pipeline import mae_checkpoint_path
    from alframe.scoring.structure import LOW_CONTRAST, neighbour_contrast

    if not mae_checkpoint_path(recipe).exists():
        return None
    pool = embed_pool(recipe, which="pool", progress=False)
    result = neighbour_contrast(pool.embeddings, seed=recipe.seed)
    return {
        "contrast": result.contrast,
        "ratio": result.ratio,
        "shuffled_ratio": result.shuffled_ratio,
        "n_items": result.n_items,
        "threshold": LOW_CONTRAST,
    }


if __name__ == "__main__":
    sys.exit(main())
