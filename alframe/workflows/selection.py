"""``alframe select``: embed the pool (and the source), run a query strategy, write the selection."""

from __future__ import annotations

import csv
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alframe.config import Recipe
from alframe.errors import DataError


@dataclass
class SelectionResult:
    """A selection with the pool ids it indexes into.

    Attributes:
        ids: (N,) global ids of the pool, in the order the selection's indices refer to.
        selection: the strategy's :class:`~alframe.types.Selection`.
        strategy: the strategy name.
        embedding_hash: hash of the encoder weights the embeddings came from (None if unused).
        contrast: the pool embedding's neighbour contrast
            (:func:`alframe.scoring.structure.neighbour_contrast`; None if unused).
        embeddings: (N, D) pool embeddings the strategy read (None if it read none), in RAM
            or an :class:`alframe._rows.OnDiskRows` store (``embed.memory_map``); for the pool
            picture (:mod:`alframe.workflows.pictures`).
        labelled: (N,) bool, the items labelled (or selected) before this selection.
    """

    ids: list[str]
    selection: Any
    strategy: str
    embedding_hash: str | None
    contrast: Any = None
    embeddings: np.ndarray | None = None
    labelled: np.ndarray | None = None


def read_id_list(path: str | os.PathLike[str], pool_ids: list[str]) -> np.ndarray:
    """Read labelled ids (one per line, or a CSV with an ``id`` column) into a pool mask.

    Raises:
        DataError: the file is missing, or names ids that are not in the pool.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file; give a text file with one labelled id per line")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and "," in lines[0]:
        rows = list(csv.DictReader(lines))
        if not rows or "id" not in rows[0]:
            raise DataError(f"{file}: a CSV of labelled ids needs an 'id' column")
        wanted = [row["id"] for row in rows]
    else:
        wanted = lines
    index = {item: i for i, item in enumerate(pool_ids)}
    # Accept both global ids ("shenzhen/CHNCXR_0001_0") and bare file stems.
    by_stem = {item.split("/", 1)[-1]: i for i, item in enumerate(pool_ids)}
    mask = np.zeros(len(pool_ids), dtype=bool)
    unknown = []
    for item in wanted:
        pos = index.get(item, by_stem.get(item))
        if pos is None:
            unknown.append(item)
        else:
            mask[pos] = True
    if unknown:
        raise DataError(
            f"{file}: {len(unknown)} ids are not in the pool (e.g. {unknown[:3]}); "
            "list ids of data.train items only"
        )
    return mask


def pool_probabilities(recipe: Recipe, checkpoint: str, samples: list[Any]) -> np.ndarray:
    """Per-pixel class probabilities (N, K, H, W) of a trained model over the pool samples."""
    import torch
    from torch.utils.data import DataLoader

    from alframe.data import SegmentationDataset
    from alframe.models import load_task

    task = load_task(checkpoint)
    dataset = SegmentationDataset(samples, recipe.data, recipe.augment.eval, train=False)
    loader = DataLoader(dataset, batch_size=recipe.train.batch_size, shuffle=False)
    chunks = []
    with torch.no_grad():
        for batch in loader:
            chunks.append(task.predict_proba(batch["image"]).cpu().numpy().astype(np.float32))
    return np.concatenate(chunks)


def select_from_recipe(
    recipe: Recipe,
    budget: int,
    strategy: str | None = None,
    params: dict[str, Any] | None = None,
    labelled: str | os.PathLike[str] | None = None,
    checkpoint: str | None = None,
    labelled_ids: Collection[str] | None = None,
) -> SelectionResult:
    """Choose ``budget`` pool items to annotate next.

    Args:
        recipe: the recipe (pool = ``data.train``, source = ``data.source``, encoder = ``embed``).
        budget: number of items to select.
        strategy: strategy name; default ``recipe.select.strategy``.
        params: strategy parameters; default ``recipe.select.params`` when ``strategy`` is the
            recipe's strategy, else the recommended ones
            (:func:`alframe.strategies.defaults.recommended_params`).
        labelled: optional file of already-labelled ids.
        checkpoint: segmentation checkpoint for uncertainty strategies.
        labelled_ids: ids already labelled (or already selected), instead of or in addition
            to the ``labelled`` file, e.g. from a labelling project's state store.

    The pool embedding is read as ``embed.memory_map`` says: a strategy that selects from an
    on-disk store (``supports_on_disk``: coreset, xssr) gets the cached entry memory-mapped,
    any other strategy its rows in RAM (with a note when a store was asked for). The source
    embedding is always read into RAM.

    Returns:
        The :class:`SelectionResult`.
    """
    from alframe import strategies
    from alframe.data import DataCatalog
    from alframe.types import QueryContext

    name = strategy or recipe.select.strategy
    if params is None:
        # The recipe's parameters belong to the recipe's strategy, not to one named on the CLI.
        params = (
            recipe.select.params
            if name == recipe.select.strategy
            else strategies.recommended_params(name)
        )
    chosen = strategies.create(name, **params)
    requires = set(getattr(chosen, "requires", {"embeddings"}))
    if "probabilities" in requires and checkpoint is None:
        raise DataError(
            f"strategy {name!r} ranks by model uncertainty; pass --checkpoint with a trained model"
        )
    pool_samples = DataCatalog(recipe).samples(recipe.data.train)
    ids = [s.id for s in pool_samples]
    mask = read_id_list(labelled, ids) if labelled else np.zeros(len(ids), dtype=bool)
    if labelled_ids is not None:
        known = set(ids)
        unknown = [i for i in labelled_ids if i not in known]
        if unknown:
            raise DataError(
                f"{len(unknown)} labelled ids are not in the pool (e.g. {unknown[:3]}); "
                "pass ids of data.train items only"
            )
        wanted = set(labelled_ids)
        mask |= np.fromiter((i in wanted for i in ids), dtype=bool, count=len(ids))

    context: dict[str, Any] = {"labelled": mask, "seed": recipe.seed, "ids": ids}
    embedding_hash = None
    contrast = None
    if "embeddings" in requires or "source_embeddings" in requires:
        # Imported here: embedding pulls in torch, which strategies without embeddings skip.
        from alframe.embed import embed_pool

        pool = embed_pool(recipe, which="pool", memory_map=recipe.embed.memory_map)
        if list(pool.ids) != ids:
            raise DataError(
                "embedding ids do not match the pool; rerun with `alframe embed --recompute`"
            )
        context["embeddings"] = strategies.embeddings_for(chosen, pool.embeddings)
        embedding_hash = pool.weights_hash
        if len(ids) >= 3:
            from alframe.scoring.structure import neighbour_contrast

            contrast = neighbour_contrast(context["embeddings"], seed=recipe.seed)
    else:
        context["embeddings"] = np.zeros((len(ids), 1), dtype=np.float32)
    if "source_embeddings" in requires and recipe.data.source is not None:
        from alframe.embed import embed_pool

        context["source_embeddings"] = embed_pool(recipe, which="source").embeddings
    if "probabilities" in requires and checkpoint is not None:
        context["probabilities"] = pool_probabilities(recipe, checkpoint, pool_samples)
    selection = chosen.select(QueryContext(**context), budget)
    return SelectionResult(
        ids=ids,
        selection=selection,
        strategy=name,
        embedding_hash=embedding_hash,
        contrast=contrast,
        embeddings=context["embeddings"] if embedding_hash is not None else None,
        labelled=mask,
    )


SCORE_AT_PICK = "score_at_pick"
"""Column / term name of the strategy's own score of a picked item, when it was picked."""


@dataclass(frozen=True)
class PickedRow:
    """One picked item as selection files list it.

    Attributes:
        index: the item's position in the pool.
        rank: pick order, 1 = picked first = annotate first.
        score: annotation priority, ``(n − rank + 1) / n`` for n picks: 1 for the first pick down
            to 1/n for the last, so it always follows the rank.
        terms: ``score_at_pick`` (the strategy's own score when the item was picked), then the
            strategy's per-term values (e.g. XSSR's ``density`` … ``diversity_raw``); NaN or
            infinite where not defined.
    """

    index: int
    rank: int
    score: float
    terms: dict[str, float]


def picked_rows(selection: Any) -> list[PickedRow]:
    """The picked items of a :class:`~alframe.types.Selection` in pick order, with their scores.

    Why ``score`` is derived from the rank: a greedy strategy (XSSR, CoreSet, uncertain-coreset)
    scores every candidate *given the items picked before it*, and XSSR rescales its diversity
    term after every pick, so the score an item had when it was picked can be higher than the
    score of an item picked earlier. That value is kept, unchanged, as ``score_at_pick``; the
    pick order itself is the strategy's ranking, and ``score`` expresses it as a priority that
    annotation tools can sort by (Label Studio's ``alframe_score``).
    """
    indices = [int(i) for i in selection.indices]
    terms: dict[str, np.ndarray] = dict(getattr(selection, "terms", {}) or {})
    n = len(indices)
    return [
        PickedRow(
            index=index,
            rank=rank,
            score=(n - rank + 1) / n,
            terms={
                SCORE_AT_PICK: float(selection.scores[index]),
                **{name: float(values[index]) for name, values in terms.items()},
            },
        )
        for rank, index in enumerate(indices, start=1)
    ]


def write_selection_csv(result: SelectionResult, path: str | os.PathLike[str]) -> Path:
    """Write ``id, rank, score, score_at_pick`` and one column per term (atomic: temp + rename).

    ``score`` follows the rank and ``score_at_pick`` is the strategy's own score
    (:func:`picked_rows` says why they differ). A value that is not defined is an empty cell:
    NaN, and the ``+inf`` ``diversity_raw`` of a cold-start first pick, which had no labelled or
    picked item to measure a distance to.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = picked_rows(result.selection)
    term_names = [SCORE_AT_PICK, *(getattr(result.selection, "terms", {}) or {})]
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "rank", "score", *term_names])
        for row in rows:
            cells = [result.ids[row.index], row.rank, _fmt(row.score)]
            writer.writerow(cells + [_fmt(row.terms[name]) for name in term_names])
    os.replace(tmp, target)
    return target


def explain_selection(selection: Any) -> list[str]:
    """Plain-language lines for ``alframe select``: what XSSR's alpha means, why a cell is empty.

    Args:
        selection: the strategy's :class:`~alframe.types.Selection`.

    Returns:
        Lines to print (none for a strategy that reports neither).
    """
    info = getattr(selection, "info", None) or {}
    lines: list[str] = []
    if "alpha" in info:
        alpha = float(info["alpha"])
        mode = str(info.get("alpha_mode", ""))
        if alpha == 0.0:
            meaning = "0 = novelty unused: the picks balance density and diversity only"
        elif alpha == 1.0:
            meaning = "1 = diversity unused: the picks balance density and novelty only"
        else:
            meaning = f"the mix is {alpha:g} novelty, {1.0 - alpha:g} diversity"
        if mode == "auto":
            grid = info.get("alpha_grid") or []
            span = f" from {min(grid):g}–{max(grid):g}" if grid else ""
            how = (
                f"chosen automatically{span} as the value whose picks leave the pool best "
                "covered (smallest mean distance to the nearest labelled or picked image)"
            )
        elif mode == "fixed":
            how = "set by the recipe"
        elif mode.startswith("forced"):
            how = "forced to 0 because no source images were given, so novelty is undefined"
        else:
            how = mode or "fixed"
        lines.append(
            f"alpha = {alpha:g}: the weight of novelty (distance to the source images) against "
            f"diversity (distance to the nearest labelled or already picked image); {meaning}; "
            f"{how}"
        )
    terms = getattr(selection, "terms", None) or {}
    raw = terms.get("diversity_raw")
    if raw is not None and np.isinf(np.asarray(raw)[np.asarray(selection.indices)]).any():
        lines.append(
            "diversity_raw is empty for the first pick: nothing was labelled or picked before "
            "it, so it had no distance to measure (its normalised diversity counts as 1)"
        )
    if len(selection.indices):
        lines.append(
            "score = priority from the pick order (1 = annotate first); score_at_pick = the "
            "strategy's own score when the item was picked (greedy strategies score each pick "
            "given the earlier ones, so it need not fall with the rank)"
        )
    return lines


def _fmt(value: Any) -> str:
    number = float(value)
    return f"{number:.6g}" if np.isfinite(number) else ""
