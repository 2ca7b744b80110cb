"""Random, grouped and CSV splits, and the DataCatalog that serves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alframe.config import SplitConfig, SubsetRef, recipe_from_dict
from alframe.data import DataCatalog, Sample, part_sizes, split_samples
from alframe.errors import ConfigError, DataError


def _samples(n_groups: int, per_group: int, dataset: str = "d") -> list[Sample]:
    return [
        Sample(f"{dataset}/v{g:02d}:{k:04d}", dataset, f"v{g:02d}", Path("x"), None, k)
        for g in range(n_groups)
        for k in range(per_group)
    ]


def test_part_sizes_sum_and_non_empty() -> None:
    assert part_sizes(10, [0.8, 0.2]) == [8, 2]
    assert part_sizes(3, [0.9, 0.05, 0.05]) == [1, 1, 1]
    assert part_sizes(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # largest remainders
    assert part_sizes(1, [0.5, 0.5]) in ([1, 0], [0, 1])
    for n in range(0, 30):
        assert sum(part_sizes(n, [0.7, 0.2, 0.1])) == n


def test_random_split_is_seeded_and_partitions() -> None:
    samples = _samples(20, 1)
    cfg = SplitConfig(kind="random", fractions={"train": 0.75, "test": 0.25})
    first = split_samples(samples, cfg, Path("."), seed=1)
    again = split_samples(samples, cfg, Path("."), seed=1)
    other = split_samples(samples, cfg, Path("."), seed=2)
    assert first == again
    assert first != other
    assert list(first) == ["train", "test"]
    assert len(first["train"]) == 15 and len(first["test"]) == 5
    assert sorted(first["train"] + first["test"]) == sorted(s.id for s in samples)
    # The split's own seed wins over the recipe seed.
    pinned = SplitConfig(kind="random", fractions={"train": 0.75, "test": 0.25}, seed=1)
    assert split_samples(samples, pinned, Path("."), seed=99) == first


def test_grouped_split_keeps_groups_together() -> None:
    samples = _samples(10, 3)
    cfg = SplitConfig(kind="grouped", fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    parts = split_samples(samples, cfg, Path("."), seed=0)
    assert parts == split_samples(samples, cfg, Path("."), seed=0)
    groups = {name: {i.split("/")[1].split(":")[0] for i in ids} for name, ids in parts.items()}
    assert [len(g) for g in groups.values()] == [6, 2, 2]
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert sum(len(ids) for ids in parts.values()) == 30


def test_grouped_split_with_pattern() -> None:
    samples = [
        Sample(f"d/patient{p}_img{k}", "d", f"patient{p}_img{k}", Path("x"), None)
        for p in range(6)
        for k in range(4)
    ]
    cfg = SplitConfig(kind="grouped", fractions={"a": 0.5, "b": 0.5}, group_pattern=r"^(.+)_img")
    parts = split_samples(samples, cfg, Path("."), seed=3)
    patients = {name: {i.split("_")[0] for i in ids} for name, ids in parts.items()}
    assert len(patients["a"]) == 3 and not (patients["a"] & patients["b"])
    bad = SplitConfig(kind="grouped", fractions={"a": 0.5, "b": 0.5}, group_pattern="zzz")
    with pytest.raises(DataError, match=r"does not match split\.group_pattern"):
        split_samples(samples, bad, Path("."), seed=0)


def test_csv_split_with_filter(tmp_path: Path) -> None:
    (tmp_path / "splits.csv").write_text(
        "source,id,source_split\nsite,a,train\nsite,b.png,train\nsite,c,test\nother,zzz,train\n",
        encoding="utf-8",
    )
    samples = [Sample(f"site/{s}", "site", s, Path("x"), None) for s in ("a", "b", "c")]
    cfg = SplitConfig(kind="csv", csv="splits.csv", filter={"source": "site"})
    parts = split_samples(samples, cfg, tmp_path, seed=0)
    assert parts == {"train": ["site/a", "site/b"], "test": ["site/c"]}


def test_csv_volume_ids_select_all_slices(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("case,part\nv00,train\nv01,test\n", encoding="utf-8")
    cfg = SplitConfig(kind="csv", csv="s.csv", id_column="case", split_column="part")
    parts = split_samples(_samples(2, 3), cfg, tmp_path, seed=0)
    assert len(parts["train"]) == 3 and all(":" in i for i in parts["train"])


def _write_folder(root: Path, name: str, n: int) -> None:
    for sub in ("images", "masks"):
        (root / name / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(
                root / name / sub / f"{name}_{i}.png"
            )


def _recipe(root: Path) -> dict:
    return {
        "name": "t",
        "data": {
            "root": str(root),
            "datasets": {
                "a": {
                    "path": "a",
                    "split": {"kind": "random", "fractions": {"tr": 0.5, "te": 0.5}},
                },
                "b": {"path": "b"},
            },
            "train": {"dataset": "a", "split": "tr"},
        },
    }


def test_catalog_resolves_refs_and_caches(tmp_path: Path) -> None:
    _write_folder(tmp_path, "a", 6)
    _write_folder(tmp_path, "b", 2)
    catalog = DataCatalog(recipe_from_dict(_recipe(tmp_path)))
    train = catalog.samples(SubsetRef(dataset="a", split="tr"))
    test = catalog.samples(SubsetRef(dataset="a", split="te"))
    assert len(train) == 3 and len(test) == 3 and not {s.id for s in train} & {s.id for s in test}
    assert len(catalog.samples(SubsetRef(dataset="b"))) == 2
    assert catalog.samples(SubsetRef(dataset="a", split="tr")) == train
    assert len(catalog.pool(SubsetRef(dataset="a"))) == 6
    with pytest.raises(ConfigError, match=r"split 'train' .*available parts: tr, te"):
        catalog.samples(SubsetRef(dataset="a", split="train"))
    with pytest.raises(ConfigError, match="has no split"):
        catalog.samples(SubsetRef(dataset="b", split="tr"))
    with pytest.raises(ConfigError, match="did you mean a"):
        catalog.dataset("aa")


def test_catalog_expands_alframe_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_folder(tmp_path, "a", 2)
    _write_folder(tmp_path, "b", 1)
    raw = _recipe(tmp_path)
    raw["data"]["root"] = "${ALFRAME_DATA}"
    monkeypatch.setenv("ALFRAME_DATA", str(tmp_path))
    catalog = DataCatalog(recipe_from_dict(raw))
    assert catalog.root == tmp_path
    assert len(catalog.dataset("a")) == 2


@pytest.mark.realdata
def test_cxr_lungs_csv_split(cxr_root: Path) -> None:
    raw = {
        "name": "cxr",
        "data": {
            "root": str(cxr_root),
            "datasets": {
                "shenzhen": {
                    "path": "shenzhen",
                    "split": {"kind": "csv", "csv": "splits.csv", "filter": {"source": "shenzhen"}},
                }
            },
            "classes": {"background": 0, "lung": 255},
            "train": {"dataset": "shenzhen", "split": "train"},
        },
    }
    catalog = DataCatalog(recipe_from_dict(raw))
    parts = catalog.splits("shenzhen")
    assert len(parts["train"]) == 440 and len(parts["test"]) == 110
    assert not set(parts["train"]) & set(parts["test"])
    train = catalog.samples(SubsetRef(dataset="shenzhen", split="train"))
    assert len(train) == 440 and all(s.id.startswith("shenzhen/CHNCXR_") for s in train)
