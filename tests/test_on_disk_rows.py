"""Pools larger than RAM: the chunked .npy writer, the memory-mapped store, the cache's mmap
entries, and CoreSet / XSSR reading the store in chunks (same picks as in RAM)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from test_scoring import naive_k_center

from alframe import strategies
from alframe._rows import NpyRowWriter, OnDiskRows
from alframe.embed.cache import EmbeddingCache, EmbeddingKey
from alframe.errors import ConfigError, DataError, StateError
from alframe.scoring.greedy import k_center_greedy
from alframe.types import QueryContext

N_ITEMS, DIM = 2_000, 16
CHUNK = 333  # does not divide N
SMALL_RESIDENT = 64 * 1024  # forces many page releases on these tiny files


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((N_ITEMS, DIM)).astype(np.float32)


def write_rows(path: Path, points: np.ndarray, dtype: str, batch: int = 700) -> Path:
    with NpyRowWriter(path, *points.shape, dtype=dtype) as writer:
        for start in range(0, points.shape[0], batch):
            writer.write(points[start : start + batch])
    return path


@pytest.fixture(
    scope="module",
    params=[("float32", "map"), ("float16", "map"), ("float32", "pread"), ("float16", "pread")],
    ids=lambda param: "-".join(param),
)
def store(request, points, tmp_path_factory) -> tuple[OnDiskRows, np.ndarray]:
    """(store, the same values in RAM as float32); ``pread``: every read of two rows or more
    goes through pread (dense gathers too), ``map``: only the streaming passes do."""
    dtype, reads = request.param
    path = write_rows(tmp_path_factory.mktemp("rows") / "pool.npy", points, dtype)
    rows = OnDiskRows(
        path,
        chunk_rows=CHUNK,
        resident_limit_bytes=SMALL_RESIDENT,
        pread_min_bytes=2 * DIM * 4 if reads == "pread" else 1024**3,
    )
    return rows, np.load(path).astype(np.float32)


def test_writer_and_store_read_like_the_array(store) -> None:
    rows, ram = store
    assert rows.shape == ram.shape and rows.dtype == np.float32 and len(rows) == N_ITEMS
    np.testing.assert_array_equal(rows[:], ram)
    np.testing.assert_array_equal(rows[5], ram[5])
    np.testing.assert_array_equal(rows[-1], ram[-1])
    np.testing.assert_array_equal(rows[10:700], ram[10:700])
    np.testing.assert_array_equal(rows[10:700:7], ram[10:700:7])
    picked = np.array([1999, 3, 3, 1000, 0])
    np.testing.assert_array_equal(rows[picked], ram[picked])
    dense = np.concatenate([np.arange(1500, 100, -1), [-1, -2000]])  # unsorted, negative too
    np.testing.assert_array_equal(rows[dense], ram[dense])
    np.testing.assert_array_equal(rows[np.arange(N_ITEMS)], ram)
    mask = np.zeros(N_ITEMS, dtype=bool)
    mask[[4, 77]] = True
    np.testing.assert_array_equal(rows[mask], ram[mask])
    np.testing.assert_array_equal(rows[picked, 2:5], ram[picked, 2:5])
    vector = ram[9]
    np.testing.assert_allclose(rows @ vector, ram @ vector, rtol=1e-6, atol=1e-5)
    thin = ram[[1, 2, 3]].T
    np.testing.assert_allclose(rows @ thin, ram @ thin, rtol=1e-6, atol=1e-5)
    starts = [start for start, _ in rows.chunks()]
    assert starts == list(range(0, N_ITEMS, CHUNK))
    assert rows.non_finite_rows().size == 0
    with pytest.raises(IndexError):
        rows[N_ITEMS]


def test_writer_is_atomic_and_checks_rows(tmp_path: Path, points: np.ndarray) -> None:
    path = tmp_path / "pool.npy"
    with pytest.raises(RuntimeError), NpyRowWriter(path, N_ITEMS, DIM) as writer:
        writer.write(points[:100])
        raise RuntimeError("crash while embedding")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    writer = NpyRowWriter(path, 10, DIM)
    with pytest.raises(DataError, match="header says 10"):
        writer.write(points[:11])
    with pytest.raises(DataError, match="expected"):
        writer.write(points[:2, :3])
    writer.write(points[:4])
    with pytest.raises(DataError, match="only 4 of 10 rows"):
        writer.commit()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="storage dtype"):
        NpyRowWriter(path, 10, DIM, dtype="int8")


def test_store_refuses_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "ints.npy", np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(DataError, match="storage dtype"):
        OnDiskRows(tmp_path / "ints.npy")
    np.save(tmp_path / "flat.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(DataError, match="2-D"):
        OnDiskRows(tmp_path / "flat.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a readable"):
        OnDiskRows(tmp_path / "junk.npy")


@pytest.mark.parametrize("method", ["lazy", "eager"])
@pytest.mark.parametrize("warm", [False, True])
def test_k_center_from_the_store_matches_ram_and_naive(store, method: str, warm: bool) -> None:
    rows, ram = store
    labelled = np.zeros(N_ITEMS, dtype=bool)
    if warm:
        labelled[[3, 50, 1200]] = True
    budget = 60
    on_disk = k_center_greedy(rows, labelled, budget, method=method)
    in_ram = k_center_greedy(ram, labelled, budget, method=method)
    np.testing.assert_array_equal(on_disk.indices, in_ram.indices)
    np.testing.assert_allclose(on_disk.min_distances, in_ram.min_distances, rtol=1e-5, atol=1e-6)
    naive_picks, naive_distances = naive_k_center(
        ram, labelled, budget, None if warm else int(in_ram.indices[0])
    )
    assert on_disk.indices.tolist() == naive_picks
    np.testing.assert_allclose(on_disk.min_distances, naive_distances, rtol=1e-4, atol=1e-5)


def test_memory_stays_bounded_on_a_pass(tmp_path: Path) -> None:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc (Linux) to read the resident file pages")

    def rss_file_bytes() -> int:
        for line in status.read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
        pytest.skip("no RssFile in /proc/self/status")
        return 0

    generator = np.random.default_rng(0)
    path = tmp_path / "big.npy"
    with NpyRowWriter(path, 65_536, 256) as writer:  # 64 MiB
        for _ in range(8):
            writer.write(generator.standard_normal((8_192, 256), dtype=np.float32))
    rows = OnDiskRows(path, chunk_rows=4_096, resident_limit_bytes=8 * 1024**2)
    before = rss_file_bytes()
    peak = before
    for _, _block in rows.chunks():
        peak = max(peak, rss_file_bytes())
    rows[generator.choice(65_536, 20_000, replace=False)]
    peak = max(peak, rss_file_bytes())
    # Limit 8 MiB + one chunk + folio slack, far below the 64 MiB file.
    assert peak - before < 32 * 1024**2
    rows.close()


def test_strategies_read_the_store_with_the_same_picks(store) -> None:
    rows, ram = store
    source = np.random.default_rng(5).standard_normal((120, DIM)).astype(np.float32)
    labelled = np.zeros(N_ITEMS, dtype=bool)
    labelled[[8, 900]] = True
    cases = [
        ("coreset", {}),
        ("coreset", {"method": "eager", "first_pick": "random"}),
        ("xssr", {"alpha": 0.5}),
        ("xssr", {"alpha": "auto", "calibration_subsample": 700}),
        ("xssr", {"alpha": 0.3, "knn_method": "cells"}),
    ]
    for name, params in cases:
        results = []
        for embeddings in (ram, rows):
            ctx = QueryContext(
                embeddings=embeddings, labelled=labelled, source_embeddings=source, seed=4
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results.append(strategies.create(name, **params).select(ctx, 40))
        in_ram, on_disk = results
        np.testing.assert_array_equal(on_disk.indices, in_ram.indices, err_msg=f"{name} {params}")
        np.testing.assert_allclose(on_disk.scores, in_ram.scores, rtol=1e-5, atol=1e-6)


def test_strategies_without_chunked_reading_refuse_the_store(store) -> None:
    rows, _ = store
    ctx = QueryContext(embeddings=rows, labelled=np.zeros(N_ITEMS, dtype=bool))
    with pytest.raises(ConfigError, match=r"needs the embeddings in RAM.*coreset, xssr"):
        strategies.create("random").select(ctx, 5)


def test_query_context_checks_the_store_for_non_finite_rows(tmp_path: Path, points) -> None:
    bad = points[:50].copy()
    bad[17, 3] = np.nan
    rows = OnDiskRows(write_rows(tmp_path / "bad.npy", bad, "float32"), chunk_rows=7)
    with pytest.raises(DataError, match=r"NaN or infinite values in 1 row\(s\) \[17\]"):
        QueryContext(embeddings=rows, labelled=np.zeros(50, dtype=bool))


def test_cache_stores_batch_by_batch_and_opens_memory_mapped(tmp_path: Path, points) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    ids = [f"item{i}" for i in range(N_ITEMS)]
    key = EmbeddingKey.create("w" * 64, ids, "prep")
    with cache.writer(key, ids, DIM, dtype="float16", info={"encoder": "mae"}) as writer:
        for start in range(0, N_ITEMS, 512):
            writer.write(points[start : start + 512])
    expected = points.astype(np.float16).astype(np.float32)
    in_ram = cache.get(key)
    assert in_ram is not None and in_ram.dtype == np.float32
    np.testing.assert_array_equal(in_ram, expected)
    entry = cache.get_entry(key, mmap=True)
    assert entry is not None
    mapped, stored_ids = entry
    assert isinstance(mapped, OnDiskRows) and mapped.storage_dtype == np.float16
    assert stored_ids == ids
    np.testing.assert_array_equal(mapped[:], expected)
    mapped.close()

    # put() keeps working, float32 by default, and float16 on request.
    cache.put(key, ids, points)
    np.testing.assert_array_equal(cache.get(key), points)
    assert cache.get(key, mmap=True).storage_dtype == np.float32
    with pytest.raises(ValueError, match="storage dtype"):
        cache.put(key, ids, points, dtype="int8")


def test_cache_writer_leaves_no_entry_when_interrupted(tmp_path: Path, points) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    ids = [str(i) for i in range(N_ITEMS)]
    key = EmbeddingKey.create("w" * 64, ids, "prep")
    cache.put(key, ids, points)  # an older entry: invalidated by the new writer
    with pytest.raises(RuntimeError), cache.writer(key, ids, DIM) as writer:
        writer.write(points[:1000])
        raise RuntimeError("embedding crashed")
    assert cache.get(key) is None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        cache.array_path(key).name  # the old array, harmless without its sidecar
    ]
    with (
        pytest.raises(ValueError, match="only 1000 of 2000 rows"),
        cache.writer(key, ids, DIM) as writer,
    ):
        writer.write(points[:1000])
    assert cache.get(key) is None


def test_cache_refuses_a_tampered_memory_mapped_entry(tmp_path: Path, points) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    ids = [str(i) for i in range(N_ITEMS)]
    key = EmbeddingKey.create("w" * 64, ids, "prep")
    cache.put(key, ids, points, dtype="float16")
    tampered = points.astype(np.float16)
    tampered[4, 4] += 1
    np.save(cache.array_path(key), tampered)
    with pytest.raises(StateError, match="checksum"):
        cache.get_entry(key, mmap=True)
    assert cache.get_entry(key, mmap=True, verify=False) is not None
    np.save(cache.array_path(key), points)  # float32 where the sidecar says float16
    with pytest.raises(StateError, match="float16 rows"):
        cache.get_entry(key, mmap=True, verify=False)


def brute_force_reference_knn(points: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of every row to its k nearest reference rows (itself excluded), float64."""
    x = points.astype(np.float64)
    squared = ((x[:, None, :] - x[reference][None, :, :]) ** 2).sum(-1)
    squared[reference, np.arange(reference.size)] = np.inf  # a row is not its own neighbour
    return np.sqrt(np.sort(squared, axis=1)[:, :k]).mean(axis=1)


def test_self_knn_from_a_reference_subsample(points: np.ndarray, store) -> None:
    from alframe.index.self_knn import reference_rows, self_knn

    subset = points[:600]
    reference = reference_rows(600, 150, seed=2)
    assert reference.size == 150 and np.all(np.diff(reference) > 0)
    expected = brute_force_reference_knn(subset, reference, 5)
    distances, indices = self_knn(subset, 5, method="exact", reference_size=150, seed=2)
    np.testing.assert_allclose(distances.mean(axis=1), expected, rtol=1e-4)
    assert np.isin(indices, reference).all()
    assert not (indices == np.arange(600)[:, None]).any()
    # The cells search over the reference is approximate: it can only overestimate.
    cells, cell_indices = self_knn(
        subset, 5, method="cells", reference_size=150, seed=2, n_cells=8, n_probe=8
    )
    assert np.isin(cell_indices, reference).all()
    np.testing.assert_allclose(cells.mean(axis=1), expected, rtol=1e-4)  # all 8 cells probed
    few, _ = self_knn(subset, 5, method="cells", reference_size=150, seed=2, n_cells=8, n_probe=1)
    assert np.all(few.mean(axis=1) >= expected * (1 - 1e-5))
    # Same from the on-disk store.
    rows, ram = store
    on_disk, _ = self_knn(rows, 5, method="cells", reference_size=300, seed=1)
    in_ram, _ = self_knn(ram, 5, method="cells", reference_size=300, seed=1)
    np.testing.assert_array_equal(on_disk, in_ram)
    with pytest.raises(ConfigError, match="reference_size"):
        self_knn(subset, 5, reference_size=3)


def test_xssr_density_reference_option(points: np.ndarray) -> None:
    from alframe.strategies.xssr import DENSITY_REFERENCE_MIN_ITEMS, XSSRStrategy

    auto = XSSRStrategy()
    assert auto.density_reference_size(DENSITY_REFERENCE_MIN_ITEMS) is None
    large = auto.density_reference_size(10 * DENSITY_REFERENCE_MIN_ITEMS)
    assert large is not None and large < 10 * DENSITY_REFERENCE_MIN_ITEMS
    assert XSSRStrategy(density_reference=None).density_reference_size(10**8) is None
    assert XSSRStrategy(density_reference=500).density_reference_size(2_000) == 500
    assert XSSRStrategy(density_reference=5_000).density_reference_size(2_000) is None
    for bad in (1, "half", 0.5, True):
        with pytest.raises(ConfigError, match="density_reference"):
            XSSRStrategy(density_reference=bad)
    ctx = QueryContext(embeddings=points, labelled=np.zeros(N_ITEMS, dtype=bool), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = XSSRStrategy(alpha=0.0, density_reference=500).select(ctx, 20)
    assert sampled.info["density_reference"] == 500
    assert len(set(sampled.indices.tolist())) == 20


def test_pruned_updates_skip_the_test_on_unstructured_pools_and_stay_exact() -> None:
    from alframe.scoring.greedy import PRUNE_SKIP_AFTER, CoverageState

    pool = np.random.default_rng(9).standard_normal((3_000, 64)).astype(np.float32)
    labelled = np.zeros(3_000, dtype=bool)
    labelled[0] = True
    state = CoverageState(pool, labelled)
    longest_streak = 0
    for row in range(1, 80):
        state.add_centres(np.array([row * 7]))
        longest_streak = max(longest_streak, state._full_pass_streak)
    assert longest_streak > PRUNE_SKIP_AFTER  # the skip path ran
    centres = pool[[0, *range(7, 80 * 7, 7)]].astype(np.float64)
    expected = ((pool.astype(np.float64)[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(state.min_squared[0], expected, rtol=1e-4, atol=1e-4)
    picks = k_center_greedy(pool, np.zeros(3_000, dtype=bool), 50, method="eager").indices
    naive, _ = naive_k_center(pool, np.zeros(3_000, dtype=bool), 50, int(picks[0]))
    assert picks.tolist() == naive
