"""Selection scaling benchmark: wall time and peak memory of CoreSet and XSSR on large pools.

Every configuration (pool size × data kind × method) runs in its own subprocess so that its peak
resident memory can be measured on its own (``os.wait4`` rusage of that child; the child also
reports its /proc VmHWM). Results go to ``docs/benchmarks/selection_scaling.json`` and ``.md``.

Methods:
    pass_baseline      one ``((X - x) ** 2).sum(1)`` pass and one ``X @ x`` pass, timed
                       (median of repeats) and multiplied by the budget;
    coreset            ``alframe.strategies.create("coreset")`` (k-center greedy);
    xssr_fixed         XSSR with alpha = 0.5 (density kNN + novelty + greedy);
    xssr_auto          XSSR with alpha = "auto" (grid of 11, seeded calibration subsample);
    skactiveml_coreset scikit-activeml's ``CoreSet`` from the same first pick as ours (only
                       when ``skactiveml`` is importable; never a project dependency);
    disk_gemv          one ``X @ x`` pass over the pool's float32 ``.npy`` opened with
                       ``np.load(mmap_mode="r")`` (pages resident), the bound of the disk rows;
    disk_coreset_float32 / disk_coreset_float16
                       CoreSet reading the pool from its ``.npy`` file through
                       ``alframe._rows.OnDiskRows`` (pools larger than RAM); the files are made
                       once, chunk by chunk, under benchmarks/_work/selection_scaling/;
    density_check      XSSR's whole-pool and reference-subsample densities against the exact
                       kNN density of a sample, and the XSSR picks with each.

Usage:
    python benchmarks/selection_scaling.py                 # full run (~20 min on 2 cores)
    python benchmarks/selection_scaling.py --quick         # tiny smoke run → benchmarks/_work/
    python benchmarks/selection_scaling.py --sizes 10000 100000 --budget 500
    # the larger-than-RAM rows of the page (10M × 256: 10 GB float32 + 5 GB float16 files),
    # merged into the existing report; --skip-done resumes after an interruption
    python benchmarks/selection_scaling.py --sizes 10000000 --data uniform \
        --methods disk_gemv disk_coreset_float32 disk_coreset_float16 \
        --merge-into docs/benchmarks/selection_scaling.json --skip-done
    # XSSR at 1M with the density check, in one session with its GEMV bound
    python benchmarks/selection_scaling.py --sizes 1000000 \
        --methods pass_baseline coreset xssr_fixed xssr_auto density_check \
        --merge-into docs/benchmarks/selection_scaling.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "docs" / "benchmarks"
QUICK_OUT_DIR = REPO_ROOT / "benchmarks" / "_work"
METHODS = (
    "pass_baseline",
    "coreset",
    "xssr_fixed",
    "xssr_auto",
    "skactiveml_coreset",
    "disk_gemv",
    "disk_coreset_float32",
    "disk_coreset_float16",
    "density_check",
)
DISK_METHODS = tuple(m for m in METHODS if m.startswith("disk_"))
DISK_DIR = REPO_ROOT / "benchmarks" / "_work" / "selection_scaling"
DATA_KINDS = ("uniform", "clustered")
N_CLUSTERS = 100
GIB = 1024**3


# ----------------------------------------------------------------------------- data


def pool_blocks(kind: str, n_items: int, dim: int, seed: int) -> Iterator[np.ndarray]:
    """The rows of :func:`make_pool`, generated chunk by chunk: (≤ 65,536, D) float32 blocks."""
    rng = np.random.default_rng(seed)
    chunk = 65_536
    if kind == "clustered":
        centres = rng.standard_normal((N_CLUSTERS, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        weights = rng.dirichlet(np.full(N_CLUSTERS, 2.0))
        noise_scale = np.float32(0.5 / np.sqrt(dim))
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if kind == "clustered":
            labels = rng.choice(N_CLUSTERS, size=stop - start, p=weights)
            block *= noise_scale
            block += centres[labels]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def make_pool(kind: str, n_items: int, dim: int, seed: int) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings, generated chunk by chunk (no float64 copy).

    ``uniform``: uniform on the unit sphere. ``clustered``: 100 clusters of unequal size around
    random unit centres (noise norm ≈ 0.5 before normalisation).
    """
    pool = np.empty((n_items, dim), dtype=np.float32)
    start = 0
    for block in pool_blocks(kind, n_items, dim, seed):
        pool[start : start + len(block)] = block
        start += len(block)
    return pool


def make_source(pool_kind: str, n_source: int, dim: int, seed: int) -> np.ndarray:
    """A source set that overlaps part of the target distribution and is shifted elsewhere."""
    source = make_pool(pool_kind, n_source, dim, seed + 1)
    shift = np.random.default_rng(seed + 2).standard_normal(dim).astype(np.float32)
    source[: n_source // 2] += 0.5 * shift / np.linalg.norm(shift)
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    return source


def pool_file(kind: str, n_items: int, dim: int, seed: int, dtype: str) -> Path:
    """The pool of :func:`make_pool` as a ``.npy`` file under benchmarks/_work (made once).

    Generated and written chunk by chunk with the same seeded stream as :func:`make_pool` (the
    whole matrix is never in memory); the float16 file is converted from the float32 one. The
    writer renames the file into place only when complete, so an interrupted run leaves no
    partial file to reuse.
    """
    from alframe._rows import NpyRowWriter, OnDiskRows

    path = DISK_DIR / f"pool_{kind}_{n_items}x{dim}_seed{seed}_{dtype}.npy"
    if path.exists():
        return path
    if dtype == "float16":
        source = pool_file(kind, n_items, dim, seed, "float32")
        with OnDiskRows(source) as rows, NpyRowWriter(path, n_items, dim, "float16") as writer:
            for _, block in rows.chunks(65_536):
                writer.write(block)
        return path
    with NpyRowWriter(path, n_items, dim, "float32") as writer:
        for block in pool_blocks(kind, n_items, dim, seed):
            writer.write(block)
    return path


def run_disk_worker(config: dict[str, Any]) -> dict[str, Any]:
    """A ``disk_*`` configuration: the pool is read from its ``.npy`` file, never generated here."""
    from alframe._rows import OnDiskRows

    method, n_items, budget = config["method"], config["size"], config["budget"]
    result: dict[str, Any] = {"storage_dtype": config["storage_dtype"]}
    if method == "disk_gemv":
        # The GEMV bound: one `X @ x` over the float32 memmap with its pages resident (the
        # first pass maps them in and is reported separately).
        pool = np.load(config["path"], mmap_mode="r")
        x = np.array(pool[n_items // 2], dtype=np.float32)
        start = time.perf_counter()
        pool @ x
        result["first_gemv_pass_seconds"] = time.perf_counter() - start
        from alframe.scoring.distances import blas_thread_limit

        by_threads = {}
        for threads in (None, 1):
            times = []
            with blas_thread_limit(threads):
                for _ in range(3):
                    start = time.perf_counter()
                    pool @ x
                    times.append(time.perf_counter() - start)
            by_threads["default" if threads is None else str(threads)] = float(np.median(times))
        result["gemv_pass_seconds_by_threads"] = by_threads
        result["gemv_pass_seconds"] = min(by_threads.values())
        result["seconds"] = result["gemv_pass_seconds"] * budget
        return result

    from alframe import strategies
    from alframe.types import QueryContext

    rows = OnDiskRows(config["path"])
    x = rows[n_items // 2]
    times = []
    for _ in range(3):  # one chunked pass, as the selection reads the store (same process)
        start = time.perf_counter()
        rows @ x
        times.append(time.perf_counter() - start)
    result["chunked_pass_seconds"] = float(np.median(times))
    start = time.perf_counter()
    ctx = QueryContext(embeddings=rows, labelled=np.zeros(n_items, dtype=bool), seed=config["seed"])
    result["context_seconds"] = time.perf_counter() - start
    strategy = strategies.create("coreset")
    start, cpu_start = time.perf_counter(), time.process_time()
    selection = strategy.select(ctx, budget)
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start
    result["coverage_cost"] = selection.info["coverage_cost"]
    result["covering_radius"] = selection.info["covering_radius"]
    result["first_picks"] = selection.indices[:10].tolist()
    if config.get("save_picks"):
        np.save(config["save_picks"], selection.indices)
    if config.get("reference_picks") and Path(config["reference_picks"]).exists():
        reference = np.load(config["reference_picks"])
        result["same_picks_as_float32"] = bool(np.array_equal(reference, selection.indices))
        result["matching_prefix_float32"] = int(
            np.argmin(np.append(reference == selection.indices, False))
        )
    return result


# ----------------------------------------------------------------------------- worker


def proc_status_bytes(field: str) -> int | None:
    """A ``VmHWM``/``VmRSS``-style field of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Runs one configuration in this (fresh) process and returns its measurements."""
    warnings.simplefilter("ignore")
    if config["method"].startswith("disk_"):
        disk_result = run_disk_worker(config)
        disk_result["vmhwm_bytes"] = proc_status_bytes("VmHWM")
        disk_result["load_average_1min"] = os.getloadavg()[0]
        return disk_result
    method, n_items, dim, budget, seed = (
        config["method"],
        config["size"],
        config["dim"],
        config["budget"],
        config["seed"],
    )
    started = time.perf_counter()
    pool = make_pool(config["data"], n_items, dim, seed)
    result: dict[str, Any] = {
        "data_seconds": time.perf_counter() - started,
        "rss_after_data_bytes": proc_status_bytes("VmRSS"),
    }

    if method == "pass_baseline":
        x = pool[n_items // 2].copy()
        naive = []
        for _ in range(config.get("baseline_repeats", 3)):
            start = time.perf_counter()
            ((pool - x) ** 2).sum(1)
            naive.append(time.perf_counter() - start)
        from alframe.scoring.distances import blas_thread_limit

        gemv_by_threads = {}
        for threads in (None, 1):  # default BLAS threads, and one thread as in the greedy loops
            gemv = []
            with blas_thread_limit(threads):
                for _ in range(5):
                    start = time.perf_counter()
                    pool @ x
                    gemv.append(time.perf_counter() - start)
            gemv_by_threads["default" if threads is None else str(threads)] = float(np.median(gemv))
        result["naive_pass_seconds"] = float(np.median(naive))
        result["gemv_pass_seconds_by_threads"] = gemv_by_threads
        result["gemv_pass_seconds"] = min(gemv_by_threads.values())
        result["seconds"] = result["naive_pass_seconds"] * budget
        result["gemv_seconds_times_budget"] = result["gemv_pass_seconds"] * budget

    elif method == "density_check":
        result.update(density_check(pool, config))

    elif method == "skactiveml_coreset":
        from skactiveml.pool import CoreSet

        reference = np.load(config["reference_picks"])
        y = np.full(n_items, np.nan)
        y[int(reference[0])] = 0.0  # same first pick: make it the one labelled item
        start, cpu_start = time.perf_counter(), time.process_time()
        picks = CoreSet(random_state=seed).query(pool, y, batch_size=budget - 1)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu_start
        ours = reference[1:]
        theirs = np.asarray(picks)
        result["same_picks"] = bool(np.array_equal(theirs, ours))
        prefix = int(np.argmin(np.append(theirs == ours, False)))
        result["matching_prefix"] = prefix
        if prefix < ours.size:
            # How different were the two choices? Exact float64 distances to the common centres.
            centres = pool[reference[: prefix + 1]].astype(np.float64)
            gaps = [
                np.sqrt(((centres - pool[row].astype(np.float64)) ** 2).sum(1).min())
                for row in (ours[prefix], theirs[prefix])
            ]
            result["first_mismatch_relative_gap"] = float(abs(gaps[0] - gaps[1]) / max(gaps))
            result["first_mismatch_ours_exactly_farther"] = bool(gaps[0] >= gaps[1])

    else:
        from alframe import strategies
        from alframe.types import QueryContext

        source = None
        if method.startswith("xssr"):
            source = make_source(config["data"], config["source_size"], dim, seed)
        start = time.perf_counter()
        ctx = QueryContext(
            embeddings=pool,
            labelled=np.zeros(n_items, dtype=bool),
            source_embeddings=source,
            seed=seed,
        )
        result["context_seconds"] = time.perf_counter() - start
        params: dict[str, Any] = {}
        if method == "xssr_fixed":
            params = {"alpha": 0.5}
        elif method == "xssr_auto":
            params = {"alpha": "auto", "calibration_subsample": config["calibration_subsample"]}
        strategy = strategies.create(method.split("_")[0], **params)
        start, cpu_start = time.perf_counter(), time.process_time()
        selection = strategy.select(ctx, budget)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu_start
        if method == "coreset" and config.get("save_picks"):
            np.save(config["save_picks"], selection.indices)
        info = selection.info
        for key in (
            "alpha",
            "coverage_cost",
            "covering_radius",
            "calibration",
            "first_pick",
            "seconds",
        ):
            if key in info:
                result["phase_seconds" if key == "seconds" else key] = info[key]
    result["vmhwm_bytes"] = proc_status_bytes("VmHWM")
    result["load_average_1min"] = os.getloadavg()[0]
    return result


def density_check(pool: np.ndarray, config: dict[str, Any]) -> dict[str, Any]:
    """XSSR's density from the whole pool (cells search) and from the ``"auto"`` reference
    subsample, each against the exact kNN density of a seeded sample of items, and whether the
    XSSR selection (fixed alpha) changes between the two."""
    from scipy.stats import spearmanr

    from alframe.index import exact_knn
    from alframe.scoring.greedy import xssr_greedy
    from alframe.scoring.knn_terms import density, novelty
    from alframe.scoring.normalize import min_max_normalize
    from alframe.strategies.xssr import XSSRStrategy

    n_items, k, sample_size = pool.shape[0], 10, config.get("density_sample", 2_000)
    reference_size = config.get("density_reference") or XSSRStrategy().density_reference_size(
        n_items
    )
    result: dict[str, Any] = {"density_reference": reference_size, "density_sample": sample_size}
    sample = np.sort(np.random.default_rng(config["seed"] + 7).choice(n_items, sample_size, False))
    start = time.perf_counter()
    distances, indices = exact_knn(pool[sample], pool, k + 1)
    own = indices == sample[:, None]
    keep = np.where(own.any(axis=1)[:, None], ~own, np.arange(k + 1)[None, :] < k)
    exact_mean = distances[keep].reshape(sample_size, k).mean(axis=1, dtype=np.float64)
    result["exact_sample_seconds"] = time.perf_counter() - start
    exact_density = 1.0 / (1e-6 + exact_mean)
    densities = {}
    for name, size in (("cells", None), ("reference", reference_size)):
        if name == "reference" and size is None:
            continue
        start = time.perf_counter()
        densities[name] = density(pool, k, seed=config["seed"], reference_size=size)
        seconds = time.perf_counter() - start
        normalised = min_max_normalize(densities[name])
        # The same affine map, fitted on the sample, makes the normalised values comparable.
        exact_normalised = (exact_density - exact_density.min()) / np.ptp(exact_density)
        approx_normalised = (normalised[sample] - normalised[sample].min()) / np.ptp(
            normalised[sample]
        )
        result[name] = {
            "seconds": seconds,
            "spearman_vs_exact": float(spearmanr(densities[name][sample], exact_density)[0]),
            "median_relative_error_of_mean_distance": float(
                np.median(np.abs(1.0 / densities[name][sample] - 1e-6 - exact_mean) / exact_mean)
            ),
            "mean_abs_error_of_normalised_density": float(
                np.mean(np.abs(approx_normalised - exact_normalised))
            ),
        }
    if "reference" in densities:
        result["spearman_reference_vs_cells"] = float(
            spearmanr(densities["reference"], densities["cells"])[0]
        )
        source = make_source(config["data"], config["source_size"], pool.shape[1], config["seed"])
        novelty_hat = min_max_normalize(novelty(pool, source))
        labelled = np.zeros(n_items, dtype=bool)
        picks = {}
        for name, values in densities.items():
            start = time.perf_counter()
            greedy = xssr_greedy(
                pool, labelled, config["budget"], min_max_normalize(values), novelty_hat, [0.5]
            )
            picks[name] = greedy.indices[0]
            result[name]["greedy_seconds"] = time.perf_counter() - start
            result[name]["coverage_cost"] = float(greedy.coverage_cost[0])
            # The selection's quality under the exact-as-possible density: mean ρ̂ (cells) of
            # the picks, i.e. how typical the picked items are.
            result[name]["mean_density_hat_of_picks"] = float(
                min_max_normalize(densities["cells"])[picks[name]].mean()
            )
        result["same_picks"] = bool(np.array_equal(picks["cells"], picks["reference"]))
        result["picks_in_common"] = int(np.intersect1d(picks["cells"], picks["reference"]).size)
        result["matching_prefix"] = int(
            np.argmin(np.append(picks["cells"] == picks["reference"], False))
        )
    result["seconds"] = result.get("reference", result["cells"])["seconds"]
    return result


# ----------------------------------------------------------------------------- parent


def run_in_subprocess(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Runs one configuration in a child process; returns its result plus the child's peak RSS."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)],
            stdout=stdout,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                process.returncode = -9
                return {**config, "error": f"timed out after {timeout:.0f} s"}
            time.sleep(0.1)
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        output = stdout.read().decode()
        if process.returncode != 0:
            tail = stderr.read().decode()[-2000:]
            return {**config, "error": f"exit code {process.returncode}: {tail}"}
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return {**config, **result}


def machine_info() -> dict[str, Any]:
    import faiss

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    if importlib.util.find_spec("skactiveml") is not None:
        import skactiveml

        info["skactiveml"] = skactiveml.__version__
    return info


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    params, results = report["params"], report["results"]
    budget = params["budget"]
    index = {(r["size"], r["data"], r["method"]): r for r in results}
    lines = [
        "# Selection scaling: CoreSet and XSSR",
        "",
        f"Generated by `benchmarks/selection_scaling.py` on {report['date']}.",
        f"Machine: {report['machine'].get('cpu', '?')}, {report['machine']['cpu_count']} cores, "
        f"{report['machine'].get('memory_gib', '?')} GiB; numpy {report['machine']['numpy']}, "
        f"faiss {report['machine']['faiss']}"
        + (
            f", scikit-activeml {report['machine']['skactiveml']}."
            if "skactiveml" in report["machine"]
            else ". scikit-activeml: not installed, comparison skipped."
        ),
        f"Pool: N × {params['dim']} float32, L2-normalised; budget B = {budget}; cold start (no "
        f"labelled item); XSSR source set: {params['source_size']} items; XSSR auto-alpha "
        f"calibration subsample: {params['calibration_subsample']} items (seeded, budget scaled "
        "by the same fraction). Each configuration runs in its own process; *peak RSS* is that "
        "process's maximum resident set (data generation, imports and selection included); "
        "*matrix* is N·D·4 bytes.",
        "",
        "## Results",
        "",
        "| N | data | method | select time (s) | CPU time (s) | load | peak RSS (GiB) "
        "| peak RSS / matrix | notes |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        matrix = r["size"] * params["dim"] * 4
        if "error" in r:
            lines.append(
                f"| {r['size']:,} | {r['data']} | {r['method']} | — | — | — | "
                f"{r['error'].splitlines()[0][:80]} |"
            )
            continue
        notes = []
        if r["method"] == "pass_baseline":
            notes.append(
                f"one `((X-x)**2).sum(1)` pass {fmt_seconds(r['naive_pass_seconds'])} s, "
                f"one `X @ x` pass {fmt_seconds(r['gemv_pass_seconds'])} s; time shown = "
                f"naive pass × B"
            )
        if r["method"] == "disk_gemv":
            notes.append(
                f"one `X @ x` pass over the float32 memmap {fmt_seconds(r['gemv_pass_seconds'])} "
                f"s (first, mapping the pages in: {fmt_seconds(r['first_gemv_pass_seconds'])} s); "
                "time shown = pass × B; RSS includes the mapped file"
            )
        if r["method"] == "density_check":
            notes.append("time = reference density; see the density section below")
        if r["method"].startswith("disk_coreset"):
            notes.append(
                f"{r['storage_dtype']} store, B = {r['budget']} measured; one chunked pass "
                f"{fmt_seconds(r['chunked_pass_seconds'])} s"
            )
        if "alpha" in r:
            notes.append(f"α = {r['alpha']}")
        if r.get("phase_seconds"):
            notes.append(
                "phases: "
                + ", ".join(f"{k} {fmt_seconds(v)} s" for k, v in r["phase_seconds"].items())
            )
        if r.get("calibration"):
            cal = r["calibration"]
            notes.append(
                f"calibrated on {cal['items']:,} items, B' = {cal['budget']}"
                + (" (subsample)" if cal["subsampled"] else "")
            )
        if r["method"] == "skactiveml_coreset":
            notes.append(
                "same picks as ours"
                if r["same_picks"]
                else f"first {r['matching_prefix']} picks identical, then a near-tie "
                f"(relative gap {r.get('first_mismatch_relative_gap', float('nan')):.1e}; "
                + (
                    "our pick is the farther one in exact float64)"
                    if r.get("first_mismatch_ours_exactly_farther")
                    else "scikit-activeml's pick is the farther one in exact float64)"
                )
            )
        rss = r.get("peak_rss_bytes")
        lines.append(
            f"| {r['size']:,} | {r['data']} | {r['method']} | {fmt_seconds(r.get('seconds'))} | "
            f"{fmt_seconds(r.get('cpu_seconds'))} | {r.get('load_average_1min', 0):.1f} | "
            f"{rss / GIB:.2f} | {rss / matrix:.2f} | {'; '.join(notes)} |"
        )

    lines += [
        "",
        "## Ratios",
        "",
        "| N | data | coreset (s) | naive pass × B (s) | coreset / naive passes | `X @ x` pass × B (s) "
        "| coreset / GEMV passes | scikit-activeml (s) | speed-up | same picks |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in params["sizes"]:
        for data in params["data"]:
            coreset = index.get((size, data, "coreset"))
            baseline = index.get((size, data, "pass_baseline"))
            sk = index.get((size, data, "skactiveml_coreset"))
            if not coreset or "error" in coreset:
                continue
            row = [f"{size:,}", data, fmt_seconds(coreset["seconds"])]
            if baseline and "error" not in baseline:
                naive_total = baseline["naive_pass_seconds"] * budget
                gemv_total = baseline["gemv_pass_seconds"] * budget
                row += [
                    fmt_seconds(naive_total),
                    f"{coreset['seconds'] / naive_total:.2f}",
                    fmt_seconds(gemv_total),
                    f"{coreset['seconds'] / gemv_total:.2f}",
                ]
            else:
                row += ["—"] * 4
            if sk and "error" not in sk:
                row += [
                    fmt_seconds(sk["seconds"]),
                    f"{sk['seconds'] / coreset['seconds']:.1f}×",
                    "yes" if sk["same_picks"] else f"first {sk['matching_prefix']}",
                ]
            else:
                row += ["—", "—", "—"]
            lines.append("| " + " | ".join(row) + " |")
    summaries = disk_rows(report)
    if summaries:
        lines += [
            "",
            "## Larger than RAM: CoreSet from a memory-mapped store",
            "",
            "The pool is a `.npy` file (written chunk by chunk, never whole in memory) read through "
            "`alframe._rows.OnDiskRows`; *GEMV pass* is one `X @ x` over the float32 file opened "
            "with `np.load(mmap_mode='r')` with its pages resident, measured in the same run "
            "(`disk_gemv`); *chunked pass* is one `X @ x` through the store in the selection's "
            "process. *Peak RSS* is the selection process's maximum resident set (imports, the "
            "O(N) vectors of the greedy and the mapped pages, which the store releases every "
            "256 MiB). The float16 store holds the float32 pool rounded to float16, i.e. other "
            "data: its picks are compared with the float32 ones for information only (identical "
            "picks on the same data, in RAM and from the store, are checked by "
            "tests/test_on_disk_rows.py).",
            "",
            "| N | data | storage | picks measured | select time (s) | per pick (s) "
            f"| time for B = {budget} (s) | GEMV pass (s) | per pick / GEMV pass "
            "| chunked pass (s) | peak RSS (GiB) | RSS / float32 matrix | RSS / file "
            "| picks vs the float32 pool |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for d in summaries:
            same = d["same_picks"]
            lines.append(
                f"| {d['size']:,} | {d['data']} | {d['storage']} | {d['measured_budget']} | "
                f"{fmt_seconds(d['seconds'])} | {d['per_pick']:.3g} | "
                f"{fmt_seconds(d['seconds_at_budget'])}"
                f"{' (extrapolated)' if d['extrapolated'] else ''} | "
                f"{fmt_seconds(d.get('gemv_pass'))} | {d.get('ratio', float('nan')):.2f} | "
                f"{fmt_seconds(d['chunked_pass'])} | {d['rss'] / GIB:.2f} | "
                f"{d['rss_ratio']:.2f} | {d['file_ratio']:.2f} | "
                + (
                    "—"
                    if same is None
                    else "identical"
                    if same
                    else f"differ from pick {d['matching_prefix'] + 1} on"
                )
                + " |"
            )
    checks = [r for r in results if r["method"] == "density_check" and "error" not in r]
    if checks:
        lines += [
            "",
            "## XSSR density: whole pool vs reference subsample",
            "",
            "Density ρ = 1 / (ε + mean distance to the k = 10 nearest neighbours). *cells*: the "
            "k-means-cell search over the whole pool (the default up to "
            '`DENSITY_REFERENCE_MIN_ITEMS`); *reference*: the same search over the `"auto"` '
            "seeded reference subsample. Both are compared with the exact kNN density of a "
            "seeded sample of items (brute force against the whole pool). *Picks*: XSSR greedy, "
            f"α = 0.5, B = {budget}, with each density (same novelty).",
            "",
            "| N | data | reference items | density | time (s) | Spearman vs exact | median rel. "
            "error of kNN distance | mean abs. error of normalised ρ | greedy (s) "
            "| coverage cost of the picks | mean ρ̂ (cells) of the picks |",
            "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in checks:
            for name in ("cells", "reference"):
                if name not in r:
                    continue
                d = r[name]
                lines.append(
                    f"| {r['size']:,} | {r['data']} | "
                    f"{r['density_reference'] if name == 'reference' else r['size']:,} | {name} | "
                    f"{fmt_seconds(d['seconds'])} | {d['spearman_vs_exact']:.4f} | "
                    f"{d['median_relative_error_of_mean_distance']:.3f} | "
                    f"{d['mean_abs_error_of_normalised_density']:.3f} | "
                    f"{fmt_seconds(d.get('greedy_seconds'))} | "
                    f"{d.get('coverage_cost', float('nan')):.4f} | "
                    f"{d.get('mean_density_hat_of_picks', float('nan')):.3f} |"
                )
            if "same_picks" in r:
                lines.append(
                    f"| | | | picks: {'identical' if r['same_picks'] else 'differ'} | | "
                    f"Spearman reference vs cells {r['spearman_reference_vs_cells']:.4f} | "
                    f"first {r['matching_prefix']} picks equal | "
                    f"{r['picks_in_common']} of {r['budget']} picks in common | | | |"
                )
    lines += ["", "## Targets", ""] + [f"- {line}" for line in report["targets"]]
    lines += ["", "## Notes", ""] + [f"- {line}" for line in report["notes"]]
    text = "\n".join(lines) + "\n"
    # A hand-written "## Discussion" section survives regeneration.
    if path.exists():
        previous = path.read_text()
        marker = previous.find("\n## Discussion")
        if marker >= 0:
            text += previous[marker:]
    path.write_text(text)


def evaluate_targets(report: dict[str, Any]) -> list[str]:
    params, results = report["params"], report["results"]
    budget, dim = params["budget"], params["dim"]
    index = {(r["size"], r["data"], r["method"]): r for r in results if "error" not in r}
    lines = []
    in_ram = [r["size"] for r in results if r["method"] == "coreset"] or params["sizes"]
    largest = max(in_ram)
    for data in params["data"]:
        coreset = index.get((largest, data, "coreset"))
        baseline = index.get((largest, data, "pass_baseline"))
        if coreset and baseline:
            ratio = coreset["seconds"] / (baseline["naive_pass_seconds"] * budget)
            gemv_ratio = coreset["seconds"] / (baseline["gemv_pass_seconds"] * budget)
            rss_ratio = coreset["peak_rss_bytes"] / (largest * dim * 4)
            lines.append(
                f"CoreSet {largest:,}×{dim}, B={budget} ({data}): {ratio:.2f}× the naive "
                f"`((X-x)**2).sum(1)` pass per pick (target ≤ 2×: "
                f"{'met' if ratio <= 2 else 'NOT met'}); {gemv_ratio:.2f}× a bare `X @ x` pass "
                f"per pick; peak RSS {rss_ratio:.2f}× the matrix (target ≤ 2×: "
                f"{'met' if rss_ratio <= 2 else 'NOT met'})."
            )
        sk = index.get((100_000, data, "skactiveml_coreset"))
        ours = index.get((100_000, data, "coreset"))
        if sk and ours:
            speedup = sk["seconds"] / ours["seconds"]
            lines.append(
                f"CoreSet vs scikit-activeml at 100,000 ({data}): {speedup:.1f}× faster "
                f"(target ≥ 10×: {'met' if speedup >= 10 else 'NOT met'}); "
                + (
                    "identical picks."
                    if sk["same_picks"]
                    else f"first {sk['matching_prefix']} picks identical."
                )
            )
        for xssr_method, label in (("xssr_auto", "auto-alpha"), ("xssr_fixed", "α = 0.5")):
            xssr = index.get((largest, data, xssr_method))
            if not xssr:
                continue
            line = (
                f"XSSR {label} at {largest:,} ({data}): {fmt_seconds(xssr['seconds'])} s, "
                f"peak RSS {xssr['peak_rss_bytes'] / (largest * dim * 4):.2f}× the matrix"
            )
            if baseline:
                bound = baseline["gemv_pass_seconds"] * budget
                ratio = xssr["seconds"] / bound
                line += (
                    f"; {ratio:.2f}× the GEMV bound of {fmt_seconds(bound)} s (target ≤ 1.5×: "
                    f"{'met' if ratio <= 1.5 else 'NOT met'}; load "
                    f"{xssr.get('load_average_1min', 0):.1f})"
                )
            lines.append(line + ".")
    for disk in disk_rows(report):
        lines.append(
            f"CoreSet from the memory-mapped store, {disk['size']:,}×{dim} {disk['storage']} "
            f"({disk['data']}), B={budget}: {disk['ratio_text']} a bare `X @ x` pass per pick "
            f"over the float32 memmap; peak RSS {disk['rss_ratio']:.2f}× the float32 matrix "
            f"(goal ≤ 0.5×: {'met' if disk['rss_ratio'] <= 0.5 else 'NOT met'})."
        )
    return lines


def disk_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary per ``disk_coreset_*`` result: ratios against the same-N GEMV bound."""
    params, results = report["params"], report["results"]
    budget, dim = params["budget"], params["dim"]
    index = {(r["size"], r["data"], r["method"]): r for r in results if "error" not in r}
    rows = []
    for r in results:
        if not r["method"].startswith("disk_coreset") or "error" in r:
            continue
        gemv = index.get((r["size"], r["data"], "disk_gemv"))
        measured_budget = r["budget"]
        per_pick = r["seconds"] / measured_budget
        total = r["seconds"] if measured_budget == budget else per_pick * budget
        summary: dict[str, Any] = {
            "size": r["size"],
            "data": r["data"],
            "storage": r["storage_dtype"],
            "measured_budget": measured_budget,
            "seconds": r["seconds"],
            "seconds_at_budget": total,
            "extrapolated": measured_budget != budget,
            "per_pick": per_pick,
            "chunked_pass": r["chunked_pass_seconds"],
            "rss": r["peak_rss_bytes"],
            "rss_ratio": r["peak_rss_bytes"] / (r["size"] * dim * 4),
            "file_ratio": r["peak_rss_bytes"]
            / (r["size"] * dim * (2 if r["storage_dtype"] == "float16" else 4)),
            "same_picks": r.get("same_picks_as_float32"),
            "matching_prefix": r.get("matching_prefix_float32"),
        }
        if gemv:
            summary["gemv_pass"] = gemv["gemv_pass_seconds"]
            summary["ratio"] = per_pick / gemv["gemv_pass_seconds"]
            summary["ratio_text"] = f"{summary['ratio']:.2f}×"
        else:
            summary["ratio_text"] = "(no GEMV bound measured)"
        rows.append(summary)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--data", nargs="+", choices=DATA_KINDS, default=list(DATA_KINDS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--source-size", type=int, default=1000)
    parser.add_argument("--calibration-subsample", type=int, default=100_000)
    parser.add_argument("--skactiveml-max-size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default docs/benchmarks (benchmarks/_work with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--merge-into",
        type=Path,
        help="replace the matching (size, data, method) rows of this earlier JSON report with "
        "the new measurements and rewrite it (and its .md) instead of writing a new report",
    )
    parser.add_argument(
        "--skip-done",
        action="store_true",
        help="with --merge-into: skip the configurations that report already holds (resume)",
    )
    parser.add_argument(
        "--disk-budget",
        type=int,
        help="budget of the disk_coreset_* rows (default --budget); a smaller one is "
        "extrapolated to --budget on the page with the measured per-pick cost",
    )
    parser.add_argument(
        "--density-reference",
        type=int,
        help='density_check: reference size to check (default: XSSR\'s "auto" choice)',
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.sizes, args.dim, args.budget = [2_000, 5_000], 32, 20
        args.source_size, args.calibration_subsample = 200, 2_000
    if args.out_dir is None:
        args.out_dir = QUICK_OUT_DIR if args.quick else DEFAULT_OUT_DIR

    has_skactiveml = importlib.util.find_spec("skactiveml") is not None
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "params": {
            "sizes": args.sizes,
            "dim": args.dim,
            "budget": args.budget,
            "data": args.data,
            "source_size": args.source_size,
            "calibration_subsample": args.calibration_subsample,
            "seed": args.seed,
            "quick": args.quick,
            "disk_budget": args.disk_budget or args.budget,
        },
        "results": [],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    picks_dir = Path(tempfile.mkdtemp(prefix="selection_scaling_"))
    done: set[tuple[int, str, str]] = set()
    if args.skip_done and args.merge_into and args.merge_into.exists():
        previous = json.loads(args.merge_into.read_text())
        done = {result_key(r) for r in previous["results"] if "error" not in r}
    for size in args.sizes:
        for data in args.data:
            for method in args.methods:
                if method == "skactiveml_coreset" and (
                    not has_skactiveml
                    or size > args.skactiveml_max_size
                    or "coreset" not in args.methods
                ):
                    continue
                if (size, data, method) in done:
                    print(f"N={size:,} {data} {method}: already in the report, skipped")
                    continue
                picks_file = str(picks_dir / f"coreset_{size}_{data}.npy")
                if method.startswith("disk_"):
                    dtype = "float16" if method.endswith("float16") else "float32"
                    started = time.perf_counter()
                    path = pool_file(data, size, args.dim, args.seed, dtype)
                    print(
                        f"[{time.strftime('%H:%M:%S')}] pool file {path.name} ready "
                        f"({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    disk_picks = str(picks_dir / f"disk_coreset_{size}_{data}.npy")
                    disk_config = {
                        "method": method,
                        "size": size,
                        "data": data,
                        "dim": args.dim,
                        "budget": (
                            args.budget
                            if method == "disk_gemv"
                            else args.disk_budget or args.budget
                        ),
                        "seed": args.seed,
                        "path": str(path),
                        "storage_dtype": dtype,
                        "save_picks": disk_picks if dtype == "float32" else None,
                        "reference_picks": disk_picks if dtype == "float16" else None,
                    }
                    run_and_record(disk_config, args, report)
                    continue
                config = {
                    "method": method,
                    "size": size,
                    "data": data,
                    "dim": args.dim,
                    "budget": args.budget,
                    "seed": args.seed,
                    "source_size": args.source_size,
                    "calibration_subsample": args.calibration_subsample,
                    "density_reference": args.density_reference,
                    "save_picks": picks_file if method == "coreset" else None,
                    "reference_picks": picks_file,
                }
                run_and_record(config, args, report)
    return 0


def run_and_record(config: dict[str, Any], args: Any, report: dict[str, Any]) -> None:
    """Run one configuration in its own process, print one line and write the report so far
    (an interrupted run still leaves its numbers)."""
    started = time.perf_counter()
    result = run_in_subprocess(config, args.timeout)
    for key in ("save_picks", "reference_picks", "path"):
        result.pop(key, None)
    report["results"].append(result)
    status = result.get("error") or (
        f"{fmt_seconds(result.get('seconds'))} s, peak RSS {result['peak_rss_bytes'] / GIB:.2f} GiB"
    )
    print(
        f"[{time.strftime('%H:%M:%S')}] N={config['size']:>9,} {config['data']:<9} "
        f"{config['method']:<18} {status} (wall {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    if args.merge_into:
        write_report(merge_reports(args.merge_into, report), args.merge_into)
    else:
        stem = "selection_scaling_quick" if args.quick else "selection_scaling"
        write_report(report, args.out_dir / f"{stem}.json")


def result_key(result: dict[str, Any]) -> tuple[int, str, str]:
    return (result["size"], result["data"], result["method"])


def merge_reports(base_path: Path, update: dict[str, Any]) -> dict[str, Any]:
    """The report at ``base_path`` with its rows replaced by ``update``'s matching rows."""
    base = json.loads(base_path.read_text())
    replaced = {result_key(r) for r in update["results"]}
    results = [r for r in base["results"] if result_key(r) not in replaced] + update["results"]
    sizes = sorted(set(base["params"]["sizes"]) | {r["size"] for r in update["results"]})
    kinds = base["params"]["data"]
    results.sort(
        key=lambda r: (sizes.index(r["size"]), kinds.index(r["data"]), METHODS.index(r["method"]))
    )
    params = {**base["params"], "sizes": sizes}
    params.setdefault("disk_budget", update["params"].get("disk_budget"))
    if any(r["method"].startswith("disk_") for r in update["results"]):
        params["disk_budget"] = update["params"].get("disk_budget")
    merged = {**base, "params": params, "results": results, "machine": update["machine"]}
    first_date = base["date"].split(" (rows re-measured")[0]
    methods = ", ".join(sorted({method for _, _, method in replaced}))
    merged["date"] = f"{first_date} (rows re-measured {update['date']}: {methods})"
    return merged


def write_report(report: dict[str, Any], json_path: Path) -> None:
    """Writes ``report`` as JSON and as markdown next to it (same stem)."""
    has_skactiveml = "skactiveml" in report["machine"]
    report["targets"] = evaluate_targets(report)
    report["notes"] = notes(has_skactiveml)
    json_path.write_text(json.dumps(report, indent=2))
    write_markdown(report, json_path.with_suffix(".md"))


def notes(has_skactiveml: bool) -> list[str]:
    lines = [
        "CoreSet = exact k-center greedy (farthest-first), lazy variant (default, "
        "`alframe.scoring.lazy_kcenter`): every candidate keeps an upper bound of its "
        "nearest-centre distance and is re-checked only against the centres added since its "
        "last check, and only when it leads; a bulk matrix product refreshes the remaining "
        "contenders when many lead in turn, and a final product brings all distances up to "
        "date for the scores and the coverage. So a pick costs far less than a pass over the "
        "matrix; the eager variant (`method='eager'`: one `X @ x` pass per pick with "
        "triangle-inequality pruning) gives the same picks. Never an N×N matrix; float32 "
        "near-ties are re-ranked in float64. The greedy loops run BLAS with one thread (see "
        "`alframe.scoring.distances.blas_thread_limit`). The naive baseline `((X-x)**2).sum(1)` "
        "allocates and streams N×D temporaries (several memory passes); the bare `X @ x` column "
        "(the faster of default and one BLAS thread) is the stricter one-pass reference.",
        "XSSR time includes the density kNN over the target pool (exact up to 20,000 items, "
        "k-means-cell partitioned search above: approximate, see `alframe.index.self_knn`; "
        'above `DENSITY_REFERENCE_MIN_ITEMS` = 500,000 items the `"auto"` density takes its '
        "neighbours from a seeded reference subsample of max(250,000, 25 % of N) items, rows "
        "measured before that change used the whole pool: see the *phases* and the density "
        "section), "
        "the novelty kNN against the source set (exact) and the greedy. Auto-alpha runs the "
        "11-value grid in lock-step (one thin matrix product per pick serves all alphas) on a "
        "seeded subsample when the pool is larger than the calibration subsample, then one "
        "full-pool greedy with the chosen alpha.",
        "scikit-activeml's CoreSet is given our first pick as its single labelled item and asked "
        "for B − 1 more, so both start from the same centre; 'same picks' compares the order. "
        "At the first differing pick the two candidates' distances to the common centres are "
        "recomputed in float64: a gap near 1e-8 is below float32 resolution, i.e. a tie that "
        "float32 arithmetic cannot break. alframe re-ranks such near-ties in float64.",
        "Larger-than-RAM rows (`disk_*`): the pool files are generated chunk by chunk with the "
        "same seeded stream as the in-RAM pools (float16 converted from float32) and cached "
        "under benchmarks/_work/selection_scaling/. `alframe._rows.OnDiskRows` reads them "
        "through a read-only memory map, copying the rows it needs into float32 arrays and "
        "handing the mapped pages back (`madvise(MADV_DONTNEED)`) every 256 MiB, so the "
        "selection's resident memory does not grow with the file; CoreSet runs the same lazy "
        "k-center code as in RAM (same picks: tests/test_on_disk_rows.py). OMP_NUM_THREADS was "
        "left unset (2 cores); the greedy loops pin BLAS to one thread as in RAM.",
        "Times are single runs on a 2-core machine shared with other work (other engineers' "
        "tests and training jobs ran at the same time): *load* is the 1-minute load average when "
        "the configuration finished (≈2 = both cores busy with this benchmark alone). *CPU "
        "time* is the process CPU time of the selection summed over threads; under contention "
        "wall time grows more than CPU time. Ratios are computed from wall times of the same "
        "run.",
    ]
    if not has_skactiveml:
        lines.append(
            "scikit-activeml is not installed here (`pip install scikit-activeml`, benchmark "
            "only, never a project dependency), so its comparison is missing."
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
