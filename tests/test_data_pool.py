"""Sample discovery in image folders and the Pool id ↔ position index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alframe.config import DatasetConfig
from alframe.data import Pool, Sample, discover_samples
from alframe.errors import DataError


def _write(path: Path, value: int = 0, size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)


def test_folder_discovery_pairs_by_stem_across_extensions(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPEG", "c.tif"):
        _write(tmp_path / "ds" / "images" / name)
    for name in ("a.png", "b.png", "c.png"):
        _write(tmp_path / "ds" / "masks" / name)
    (tmp_path / "ds" / "images" / "notes.txt").write_text("ignored")
    (tmp_path / "ds" / "images" / ".hidden.png").write_bytes(b"")
    samples = discover_samples("site", DatasetConfig(path="ds"), tmp_path)
    assert [s.id for s in samples] == ["site/a", "site/b", "site/c"]
    assert [s.group for s in samples] == ["a", "b", "c"]
    assert samples[0].image_path.name == "a.JPEG"
    assert samples[0].mask_path == tmp_path / "ds" / "masks" / "a.png"
    assert samples[0].local_id == "a" and samples[0].labelled


def test_unlabelled_folder(tmp_path: Path) -> None:
    _write(tmp_path / "u" / "images" / "x.png")
    samples = discover_samples("u", DatasetConfig(path="u", masks=None), tmp_path)
    assert len(samples) == 1 and samples[0].mask_path is None and not samples[0].labelled


def _pool(n: int = 5) -> Pool:
    return Pool(
        Sample(f"d/s{i}", "d", f"g{i // 2}", Path(f"s{i}.png"), Path(f"m{i}.png")) for i in range(n)
    )


def test_pool_ids_indices_subset() -> None:
    pool = _pool()
    assert len(pool) == 5
    assert pool.ids == [f"d/s{i}" for i in range(5)]
    assert pool.index_of("d/s3") == 3
    np.testing.assert_array_equal(pool.indices(["d/s4", "d/s0"]), [4, 0])
    assert pool.indices([]).dtype == np.int64
    assert list(pool.groups) == ["g0", "g0", "g1", "g1", "g2"]
    assert pool.labelled.all()
    assert "d/s1" in pool and "d/x" not in pool
    assert [s.id for s in pool] == pool.ids
    assert pool[2].id == "d/s2"

    by_ids = pool.subset(["d/s3", "d/s1"])
    assert by_ids.ids == ["d/s3", "d/s1"]
    by_positions = pool.subset(np.array([4, 0]))
    assert by_positions.ids == ["d/s4", "d/s0"]
    by_mask = pool.subset(np.array([True, False, True, False, False]))
    assert by_mask.ids == ["d/s0", "d/s2"]
    assert len(pool.subset([])) == 0
    assert pool.subset(np.array(["d/s2"])).ids == ["d/s2"]


def test_pool_refuses_duplicates_and_unknown_ids() -> None:
    sample = Sample("d/a", "d", "a", Path("a.png"), None)
    with pytest.raises(DataError, match="more than once"):
        Pool([sample, sample])
    pool = _pool()
    with pytest.raises(DataError, match=r"'d/s9'.*not in the pool.*did you mean"):
        pool.index_of("d/s9")
    with pytest.raises(DataError, match="not in the pool"):
        pool.indices(["d/s1", "nope"])
    with pytest.raises(DataError, match="outside the pool"):
        pool.subset([7])
    with pytest.raises(DataError, match="one flag per item"):
        pool.subset(np.array([True, False]))
