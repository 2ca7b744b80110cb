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
    """

    ids: list[str]
    selection: Any
    strategy: str
    embedding_hash: str | None
    contrast: Any = None


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

        pool = embed_pool(recipe, which="pool")
        if list(pool.ids) != ids:
            raise DataError(
                "embedding ids do not match the pool; rerun with `alframe embed --recompute`"
            )
        context["embeddings"] = pool.embeddings
        embedding_hash = pool.weights_hash
        if len(ids) >= 3:
            from alframe.scoring.structure import neighbour_contrast

            contrast = neighbour_contrast(pool.embeddings, seed=recipe.seed)
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
    )


def write_selection_csv(result: SelectionResult, path: str | os.PathLike[str]) -> Path:
    """Write ``id, rank, score`` and one column per term (atomic: temp file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    selection = result.selection
    terms: dict[str, np.ndarray] = dict(getattr(selection, "terms", {}) or {})
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "rank", "score", *terms])
        for rank, index in enumerate(selection.indices, start=1):
            row = [result.ids[index], rank, _fmt(selection.scores[index])]
            row += [_fmt(values[index]) for values in terms.values()]
            writer.writerow(row)
    os.replace(tmp, target)
    return target


def _fmt(value: Any) -> str:
    number = float(value)
    return "" if np.isnan(number) else f"{number:.6g}"
