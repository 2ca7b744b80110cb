"""What selection files and `alframe select` tell a reader: scores that follow the ranks, the
strategy's own pick-time score kept beside them, alpha and empty cells explained (issue 18)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_annotate_support import synthetic_recipe

from alframe import strategies
from alframe.annotate import init_project, next_round, open_project
from alframe.cli.main import main
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset
from alframe.strategies.xssr import MissingSourceWarning
from alframe.types import QueryContext, Selection
from alframe.workflows import selection as selection_module
from alframe.workflows.selection import (
    SelectionResult,
    explain_selection,
    picked_rows,
    write_selection_csv,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _xssr_selection(source: bool = True, budget: int = 8) -> tuple[list[str], Selection]:
    """A cold-start XSSR selection whose pick-time scores are not monotone in the rank."""
    rng = np.random.default_rng(0)
    pool = _unit(rng.normal(size=(60, 8)))
    ids = [f"pool/item_{i:03d}" for i in range(60)]
    ctx = QueryContext(
        ids=ids,
        embeddings=pool,
        labelled=np.zeros(60, dtype=bool),
        source_embeddings=_unit(rng.normal(size=(20, 8))) if source else None,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingSourceWarning)
        return ids, strategies.create("xssr", alpha="auto", combine="mul").select(ctx, budget)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_selection_csv_score_follows_the_rank_and_keeps_the_pick_time_score(
    tmp_path: Path,
) -> None:
    ids, selection = _xssr_selection()
    at_pick = selection.scores[selection.indices]
    assert np.any(np.diff(at_pick) > 0), "the fixture must pick a later item with a higher score"

    path = write_selection_csv(SelectionResult(ids, selection, "xssr", None), tmp_path / "s.csv")
    rows = _read(path)
    assert list(rows[0])[:4] == ["id", "rank", "score", "score_at_pick"]
    assert [int(r["rank"]) for r in rows] == list(range(1, 9))
    scores = [float(r["score"]) for r in rows]
    assert scores[0] == 1.0 and bool(np.all(np.diff(scores) < 0))
    np.testing.assert_allclose([float(r["score_at_pick"]) for r in rows], at_pick, rtol=1e-5)
    # The terms are unchanged and say why each item was picked.
    np.testing.assert_allclose(
        [float(r["density"]) for r in rows], selection.terms["density"][selection.indices], 1e-5
    )


def test_an_undefined_value_is_an_empty_cell_and_select_says_why(tmp_path: Path) -> None:
    ids, selection = _xssr_selection()
    assert np.isinf(selection.terms["diversity_raw"][selection.indices[0]])
    path = write_selection_csv(SelectionResult(ids, selection, "xssr", None), tmp_path / "s.csv")
    assert "inf" not in path.read_text()
    first = _read(path)[0]
    assert first["diversity_raw"] == "" and float(first["diversity"]) == 1.0

    lines = explain_selection(selection)
    assert float(selection.info["alpha"]) == 0.0
    (alpha_line,) = [line for line in lines if line.startswith("alpha = ")]
    assert "novelty unused" in alpha_line and "chosen automatically" in alpha_line
    assert any("diversity_raw is empty for the first pick" in line for line in lines)
    assert any(line.startswith("score = priority from the pick order") for line in lines)


def test_alpha_forced_without_a_source_is_explained() -> None:
    _, selection = _xssr_selection(source=False)
    (alpha_line,) = [line for line in explain_selection(selection) if "alpha =" in line]
    assert alpha_line.startswith("alpha = 0:") and "no source images" in alpha_line


def test_picked_rows_of_a_strategy_without_terms() -> None:
    selection = Selection(indices=np.array([2, 0]), scores=np.array([0.1, np.nan, 0.9]))
    rows = picked_rows(selection)
    assert [(r.index, r.rank, r.score) for r in rows] == [(2, 1, 1.0), (0, 2, 0.5)]
    assert rows[1].terms == {"score_at_pick": 0.1}
    assert explain_selection(selection) == [
        line for line in explain_selection(selection) if line.startswith("score =")
    ]


def _fake_select(ids: list[str], selection: Selection) -> Any:
    def select(recipe: Any, budget: int, **_: Any) -> SelectionResult:
        return SelectionResult(ids, selection, "xssr", None)

    return select


def test_round_export_manifest_scores_follow_the_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = synthetic_recipe(tmp_path, n_images=12)
    project = tmp_path / "project"
    init_project(project, recipe, annotators=("alice",), overlap=0.0)
    with open_project(project) as opened:
        pool_ids = opened.item_ids()
    n = len(pool_ids)
    picks = np.array([3, 0, 5, 1])
    scores = np.full(n, 0.2)
    scores[picks] = [0.9, 0.4, 0.7, 0.3]  # greedy pick-time scores: not monotone
    diversity_raw = np.full(n, 0.5)
    diversity_raw[picks[0]] = np.inf
    selection = Selection(indices=picks, scores=scores, terms={"diversity_raw": diversity_raw})
    monkeypatch.setattr(
        selection_module, "select_from_recipe", _fake_select(list(pool_ids), selection)
    )
    with open_project(project) as opened:
        next_round(opened, 4)

    export = project / "rounds" / "001" / "export"
    for path in (export / "manifest.csv", project / "rounds" / "001" / "selection.csv"):
        rows = _read(path)
        assert [r["id"] for r in rows] == [pool_ids[i] for i in picks]
        assert [float(r["score"]) for r in rows] == [1.0, 0.75, 0.5, 0.25], path.name
        assert [float(r["score_at_pick"]) for r in rows] == [0.9, 0.4, 0.7, 0.3]
        assert rows[0]["diversity_raw"] == "" and "inf" not in path.read_text()
    items = json.loads((export / "manifest.json").read_text())["items"]
    assert [it["score"] for it in items] == [1.0, 0.75, 0.5, 0.25]
    with open_project(project, write=False) as opened:
        stored = opened.store.query("SELECT rank, score FROM selections ORDER BY rank")
    assert [r["score"] for r in stored] == [1.0, 0.75, 0.5, 0.25]  # Label Studio's priority


def test_select_command_prints_the_explanations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_synthetic_dataset(tmp_path / "data", n_images=8, image_size=32, seed=1)
    raw = synthetic_recipe_dict(tmp_path / "data", image_size=32)
    raw["output_dir"] = str(tmp_path / "run")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    ids, selection = _xssr_selection(budget=4)
    monkeypatch.setattr(selection_module, "select_from_recipe", _fake_select(ids, selection))
    out = tmp_path / "sel.csv"
    assert main(["select", "--recipe", str(tmp_path / "r.yaml"), "-b", "4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "xssr: selected 4 of 60" in printed
    assert "alpha = 0: the weight of novelty" in printed
    assert "diversity_raw is empty for the first pick" in printed
    assert "inf" not in out.read_text()
