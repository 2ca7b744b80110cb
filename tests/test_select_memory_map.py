"""``embed.memory_map``: `alframe select` and the active-learning loop select from the
memory-mapped embedding cache (an OnDiskRows store) with the same picks as from RAM."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_loop_units import POOL, FakeLearner, _arm

from alframe import strategies
from alframe._rows import NpyRowWriter, OnDiskRows
from alframe.cli.main import main
from alframe.config import load_recipe
from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset
from alframe.embed import cache as embed_cache
from alframe.loop.active import ActiveLearningRun, PoolInputs
from alframe.report.pictures import pca_2d
from alframe.scoring.structure import neighbour_contrast
from alframe.strategies.coreset import CoresetStrategy
from alframe.strategies.typiclust import TypiClustStrategy
from alframe.strategies.xssr import XSSRStrategy


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-item synthetic pool embedded by a random timm encoder (no MAE to train)."""
    root = tmp_path_factory.mktemp("mmap")
    write_synthetic_dataset(root / "data", n_images=40, image_size=32, seed=7)
    raw: dict[str, Any] = synthetic_recipe_dict(root / "data", image_size=32)
    raw["output_dir"] = str(root / "run")
    raw["train"] = {**raw.get("train", {}), "progress": False}
    raw["embed"] = {"backbone": "timm", "encoder": "resnet10t", "devices": "cpu"}
    raw["select"] = {"strategy": "coreset"}
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def select(recipe_file: Path, out: Path, strategy: str, *settings: str) -> int:
    argv = ["select", "--recipe", str(recipe_file), "-s", strategy, "-b", "5", "-o", str(out)]
    for setting in settings:
        argv += ["--set", setting]
    return main(argv)


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The type of the embeddings every CoreSet / XSSR / TypiClust selection received."""
    seen: list[type] = []
    for cls in (CoresetStrategy, XSSRStrategy, TypiClustStrategy):
        original = cls._select

        def spy(self: Any, ctx: Any, budget: int, _original: Any = original) -> Any:
            seen.append(type(ctx.embeddings))
            return _original(self, ctx, budget)

        monkeypatch.setattr(cls, "_select", spy)
    return seen


@pytest.mark.parametrize("strategy", ["coreset", "xssr"])
def test_select_from_the_store_writes_the_same_selection(
    recipe_file: Path, tmp_path: Path, strategy: str, received: list[type]
) -> None:
    in_ram, on_disk = tmp_path / "ram.csv", tmp_path / "store.csv"
    cache = recipe_file.parent / "run" / "embeddings"
    assert select(recipe_file, in_ram, strategy, "embed.memory_map=false") == 0
    entries = sorted(cache.glob("*.npy"))
    assert select(recipe_file, on_disk, strategy, "embed.memory_map=true") == 0
    assert read_rows(on_disk) == read_rows(in_ram)
    assert len(read_rows(on_disk)) == 5
    assert received == [np.ndarray, OnDiskRows]
    # The pool picture is drawn from the store too (PCA read in chunks).
    assert (tmp_path / "store_pool.png").is_file()
    # A reading option: the store is the entry the RAM run wrote, under the same key.
    assert sorted(cache.glob("*.npy")) == entries


def test_auto_uses_the_store_when_the_entry_is_large_for_the_memory(
    recipe_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    received: list[type],
) -> None:
    assert load_recipe(recipe_file).embed.memory_map == "auto"  # the default
    assert select(recipe_file, tmp_path / "first.csv", "coreset") == 0  # fills the cache
    monkeypatch.setattr(embed_cache, "available_memory_bytes", lambda: 10**15)
    assert select(recipe_file, tmp_path / "ram.csv", "coreset") == 0
    # Any entry is larger than a quarter of 64 bytes.
    monkeypatch.setattr(embed_cache, "available_memory_bytes", lambda: 64)
    assert select(recipe_file, tmp_path / "store.csv", "coreset") == 0
    assert received[1:] == [np.ndarray, OnDiskRows]
    assert read_rows(tmp_path / "store.csv") == read_rows(tmp_path / "ram.csv")
    # Unknown available memory: the matrix goes to RAM as before the key existed.
    monkeypatch.setattr(embed_cache, "available_memory_bytes", lambda: None)
    assert select(recipe_file, tmp_path / "unknown.csv", "coreset") == 0
    assert received[-1] is np.ndarray


def test_wants_memory_map_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = tmp_path / "e.npy"
    entry.write_bytes(b"x" * 1000)
    fraction = embed_cache.MEMORY_MAP_FRACTION
    monkeypatch.setattr(embed_cache, "available_memory_bytes", lambda: int(1000 / fraction))
    assert not embed_cache.wants_memory_map("auto", entry)  # exactly the threshold: RAM
    monkeypatch.setattr(embed_cache, "available_memory_bytes", lambda: int(999 / fraction))
    assert embed_cache.wants_memory_map("auto", entry)
    assert not embed_cache.wants_memory_map("auto", tmp_path / "missing.npy")
    assert embed_cache.wants_memory_map(True, tmp_path / "missing.npy")
    assert not embed_cache.wants_memory_map(False, entry)
    with pytest.raises(ValueError, match="auto, true or false"):
        embed_cache.wants_memory_map("sometimes", entry)  # type: ignore[arg-type]


def test_available_memory_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    available = embed_cache.available_memory_bytes()
    assert available is None or available > 0


def test_a_strategy_that_needs_ram_falls_back_with_a_note(
    recipe_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    received: list[type],
) -> None:
    in_ram, fallback = tmp_path / "ram.csv", tmp_path / "fallback.csv"
    assert select(recipe_file, in_ram, "typiclust", "embed.memory_map=false") == 0
    capsys.readouterr()
    assert select(recipe_file, fallback, "typiclust", "embed.memory_map=true") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert "strategy 'typiclust' needs the pool embeddings in RAM" in notes[0]
    assert "coreset, xssr select from the store" in notes[0]
    assert received == [np.ndarray, np.ndarray]
    assert read_rows(fallback) == read_rows(in_ram)


@pytest.mark.parametrize("value", ["sometimes", "1", "null"])
def test_a_bad_memory_map_value_is_a_one_line_error(
    recipe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    out = tmp_path / "never.csv"
    capsys.readouterr()
    assert select(recipe_file, out, "coreset", f"embed.memory_map={value}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alframe: error: ")
    assert "embed.memory_map" in err and "expected auto, true or false" in err
    assert not out.exists()


def test_the_key_does_not_change_the_cache_key(recipe_file: Path) -> None:
    from alframe.embed.pipeline import recipe_preprocessing

    signatures = {
        recipe_preprocessing(load_recipe(recipe_file, [f"embed.memory_map={v}"]), "timm")
        for v in ("true", "false", "auto")
    }
    assert len(signatures) == 1


# -- the pieces downstream of a selection, on a store ------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[OnDiskRows, np.ndarray]:
    rows = np.random.default_rng(4).standard_normal((2_500, 8)).astype(np.float32)
    path = tmp_path_factory.mktemp("store") / "pool.npy"
    with NpyRowWriter(path, *rows.shape) as writer:
        writer.write(rows)
    return OnDiskRows(path, chunk_rows=700), rows


def test_pool_projection_and_contrast_read_the_store(
    stored: tuple[OnDiskRows, np.ndarray],
) -> None:
    store, rows = stored
    for max_fit_rows in (1_000, 5_000):  # fitted on a subsample / on every row
        on_disk, explained_on_disk = pca_2d(store, max_fit_rows=max_fit_rows)
        in_ram, explained_in_ram = pca_2d(rows, max_fit_rows=max_fit_rows)
        np.testing.assert_allclose(on_disk, in_ram, atol=1e-9)
        np.testing.assert_allclose(explained_on_disk, explained_in_ram, atol=1e-12)
    # The same seeded subsample of rows: the same contrast, exactly.
    assert neighbour_contrast(store, max_items=500, seed=3) == neighbour_contrast(
        rows, max_items=500, seed=3
    )


def test_embeddings_for_hands_the_store_only_to_strategies_that_read_it(
    stored: tuple[OnDiskRows, np.ndarray],
) -> None:
    store, rows = stored
    assert "coreset" in strategies.on_disk_strategy_names()
    assert strategies.embeddings_for(strategies.create("coreset"), store) is store
    assert strategies.embeddings_for(strategies.create("typiclust"), rows) is rows
    with pytest.warns(strategies.InMemoryFallbackNote, match="'typiclust' needs"):
        in_ram = strategies.embeddings_for(strategies.create("typiclust"), store)
    assert isinstance(in_ram, np.ndarray)
    np.testing.assert_array_equal(in_ram, rows)


def test_the_loop_selects_from_the_store(tmp_path: Path, received: list[type]) -> None:
    """A run whose embeddings_fn gives a store (as run_experiment's does with memory_map):
    CoreSet reads it as it is, TypiClust gets the rows in RAM with a note; same rounds as RAM."""
    rows = np.random.default_rng(0).normal(size=(len(POOL), 4)).astype(np.float32)
    path = tmp_path / "pool.npy"
    with NpyRowWriter(path, *rows.shape) as writer:
        writer.write(rows)
    store = OnDiskRows(path)

    def run(strategy: str, embeddings: Any, folder: str) -> list[dict[str, Any]]:
        inputs = PoolInputs(POOL, None, lambda: (embeddings, "hash-pool"), lambda: None)
        return ActiveLearningRun(
            _arm(strategy), FakeLearner(), inputs, tmp_path / folder, progress=False
        ).run()

    for strategy in ("coreset", "typiclust"):
        received.clear()
        from_ram = run(strategy, rows, f"{strategy}-ram")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from_store = run(strategy, store, f"{strategy}-store")
        expected = OnDiskRows if strategy == "coreset" else np.ndarray
        assert received == [np.ndarray] * 3 + [expected] * 3
        notes = [w for w in caught if issubclass(w.category, strategies.InMemoryFallbackNote)]
        assert len(notes) == (0 if strategy == "coreset" else 3)  # one per round
        assert [m["selected"] for m in from_store] == [m["selected"] for m in from_ram]
        assert {m["embedding_hash"] for m in from_store} == {"hash-pool"}


class _Learner(FakeLearner):
    """The loop's fake learner, reporting on the recipe's evaluation set."""

    def evaluate(self, out_dir: Path | None = None) -> dict[str, dict[str, float]]:
        return {"target_test": super().evaluate(out_dir)["test"]}


def test_an_experiment_selects_from_the_store(
    recipe_file: Path, tmp_path: Path, received: list[type]
) -> None:
    from alframe.loop.experiment import run_experiment

    raw = yaml.safe_load(recipe_file.read_text())
    raw["experiment"] = {
        "strategies": [{"name": "coreset"}, {"name": "typiclust"}],
        "schedules": [{"name": "s", "cumulative": [3, 6]}],
        "full_reference": False,
        "pool_agreement": False,  # the fake learner predicts only its own pool's ids
    }
    raw["embed"]["memory_map"] = True
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(raw))
    recipe = load_recipe(tmp_path / "e.yaml", [f"output_dir={tmp_path / 'experiment'}"])
    with pytest.warns(strategies.InMemoryFallbackNote, match="'typiclust' needs"):
        result = run_experiment(
            recipe, track=False, progress=False, learner_factory=lambda *_: _Learner()
        )
    assert received == [OnDiskRows, OnDiskRows, np.ndarray, np.ndarray]  # two rounds each
    assert all(len(m) == 2 for m in result.manifests.values())
