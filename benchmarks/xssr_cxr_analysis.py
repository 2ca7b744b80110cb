"""Why does (or doesn't) XSSR win on Montgomery → Shenzhen? Label-free diagnostics of the run.

Reads the finished rounds of ``benchmarks/xssr_cxr.py`` (no training) and measures:

* **embedding quality** — does the MAE embedding put images with similar lung masks together?
  Mean Dice between each pool image's mask and the mask of its nearest embedding neighbour,
  against a random pair (chance) and against its best-matching mask in the pool (ceiling);
* **what each strategy picked** in its first round (22 labels): how well the picked masks cover
  the pool's mask shapes (mean over the pool of the best Dice to any picked mask), the coverage
  cost in embedding space (what XSSR's alpha minimises), and the picked images' lung fraction;
* **XSSR's calibration** — the chosen alpha per round;
* **training noise** — XSSR and CoreSet picks do not depend on the seed (one MAE per experiment),
  so the spread of their Dice over seeds is pure training noise, the yardstick for differences
  between strategies.

``python benchmarks/xssr_cxr_analysis.py`` prints JSON; :func:`analyse` is used by
``xssr_cxr.py --report-only`` for the page's diagnostics section.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _pool_masks(recipe: Any) -> tuple[list[str], np.ndarray]:
    """(ids, (N, H·W) bool lung masks) of the pool at the recipe's image size."""
    from alframe.data import DataCatalog, SegmentationDataset

    samples = DataCatalog(recipe).samples(recipe.data.train)
    dataset = SegmentationDataset(samples, recipe.data, recipe.augment.eval, train=False)
    masks = np.stack([dataset[i]["mask"].numpy() > 0 for i in range(len(dataset))])
    return [s.id for s in samples], masks.reshape(len(samples), -1)


def _pairwise_dice(masks: np.ndarray) -> np.ndarray:
    """(N, N) Dice between every pair of binary masks (N·H·W work, fine for a 440-image pool)."""
    m = masks.astype(np.float32)
    inter = m @ m.T
    area = m.sum(axis=1)
    return 2 * inter / np.maximum(area[:, None] + area[None, :], 1)


def _first_round(run_dir: Path, folder: str) -> list[str] | None:
    path = run_dir / "runs" / folder / "rounds" / "000" / "selection.csv"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("rank")]
    return [r["id"] for r in sorted(rows, key=lambda r: int(r["rank"]))]


def analyse(recipe: Any, run_dir: Path) -> dict[str, Any]:
    """The diagnostics as JSON-friendly data (see the module docstring)."""
    from alframe.embed import embed_pool

    ids, masks = _pool_masks(recipe)
    dice = _pairwise_dice(masks)
    n = len(ids)
    emb = embed_pool(recipe, which="pool", progress=False)
    if list(emb.ids) != ids:
        raise RuntimeError("embedding cache ids differ from the pool; rerun the experiment")
    z = np.asarray(emb.embeddings, dtype=np.float32)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    dist = np.sqrt(np.maximum(2 - 2 * z @ z.T, 0))
    np.fill_diagonal(dist, np.inf)
    off = dice.copy()
    np.fill_diagonal(off, -1)
    nearest = dist.argmin(axis=1)
    rng = np.random.default_rng(0)
    random_partner = (np.arange(n) + rng.integers(1, n, n)) % n
    # Rank correlation between embedding distance and mask dissimilarity over all pairs.
    from scipy.stats import spearmanr

    upper = np.triu_indices(n, 1)
    rho = float(spearmanr(dist[upper], 1 - dice[upper]).statistic)
    quality = {
        "nn_mask_dice": float(dice[np.arange(n), nearest].mean()),
        "random_pair_mask_dice": float(dice[np.arange(n), random_partner].mean()),
        "best_match_mask_dice": float(off.max(axis=1).mean()),
        "spearman_distance_vs_mask_dissimilarity": rho,
    }
    fraction = masks.mean(axis=1)
    np.fill_diagonal(dist, 0)
    index = {item: i for i, item in enumerate(ids)}
    picks: dict[str, Any] = {}
    for folder in sorted(p.name for p in (run_dir / "runs").iterdir() if p.is_dir()):
        chosen = _first_round(run_dir, folder)
        if not chosen or folder.startswith("full"):
            continue
        rows = [index[c] for c in chosen if c in index]
        picks[folder] = {
            "n": len(rows),
            "mask_coverage_dice": float(dice[:, rows].max(axis=1).mean()),
            "embedding_coverage_cost": float(dist[:, rows].min(axis=1).mean()),
            "lung_fraction_mean": float(fraction[rows].mean()),
        }
    pool_stats = {
        "n": n,
        "lung_fraction_mean": float(fraction.mean()),
        "lung_fraction_std": float(fraction.std()),
    }
    alphas: dict[str, list[Any]] = {}
    noise: dict[str, dict[str, float]] = {}
    primary = recipe.experiment.primary_set or next(iter(recipe.data.evaluate))
    per_round: dict[tuple[str, int], list[float]] = {}
    for folder in sorted(p.name for p in (run_dir / "runs").iterdir() if p.is_dir()):
        label = folder.split("__")[0]
        for manifest_path in sorted((run_dir / "runs" / folder / "rounds").glob("*/manifest.json")):
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            info = manifest.get("selection_info") or {}
            if label == "xssr" and folder.endswith("seed0"):
                alphas.setdefault("seed0", []).append(info.get("alpha"))
            metric = (manifest.get("metrics") or {}).get(primary, {}).get("dice_mean")
            if metric is not None:
                per_round.setdefault((label, int(manifest["n_labelled"])), []).append(metric)
    for (label, n_labelled), values in sorted(per_round.items()):
        if len(values) > 1:
            noise[f"{label}@{n_labelled}"] = {
                "seeds": len(values),
                "dice_std": float(np.std(values, ddof=1)),
                "dice_range": float(max(values) - min(values)),
            }
    return {
        "embedding_quality": quality,
        "pool": pool_stats,
        "first_round_picks": picks,
        "xssr_alpha_per_round": alphas,
        "dice_spread_over_seeds": noise,
    }


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import xssr_cxr

    from alframe.config import load_recipe

    os.chdir(xssr_cxr.REPO)
    recipe = load_recipe(xssr_cxr.RECIPE, xssr_cxr.CPU_PROTOCOL)
    print(json.dumps(analyse(recipe, Path(recipe.run_dir)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
