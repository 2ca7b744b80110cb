"""RPG label-transfer throughput: our matcher against a naive chunked torch matmul baseline.

Every method labels the same random L2-normalised query pixels (64-d) against the same
class-balanced bank (20k reference pixels, 2 classes), in one process, with the same thread
count; the baseline is measured in the same run so the ratios are comparable across machines.

Methods:
    naive_matmul     ``(q_chunk @ bank.T).argmax(1)`` over 4096-query chunks (the whole bank per
                     chunk), then a label lookup;
    rpg_torch_top1   :func:`alframe.pseudolabel.match_labels`, backend ``torch`` (blocked GEMM +
                     arg-max), top-1;
    rpg_faiss_top1   the same with backend ``faiss`` (IndexFlatIP);
    rpg_torch_top5   backend ``torch``, top-5 vote (τ = 0.1);
    rpg_faiss_top5   backend ``faiss``, top-5 vote;
    rpg_stride4      :func:`alframe.pseudolabel.transfer_labels` with ``match_stride=4``: features
                     average-pooled 4×4 before matching, labels resized back — reported in
                     *target* pixels (16 per match).

Usage:
    python benchmarks/rpg_throughput.py            # ~1-2 min on 2 cores
    python benchmarks/rpg_throughput.py --queries 16384 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "docs" / "benchmarks"


def _timed(fn: Any, repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=32_768, help="query pixels (exact methods)")
    parser.add_argument("--bank", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    import faiss
    import torch

    from alframe.pseudolabel.matching import ReferenceBank, match_labels
    from alframe.pseudolabel.rpg import RPGOptions, transfer_labels

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, args.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    bank_features = torch.from_numpy(unit(args.bank))
    bank_labels = torch.from_numpy(rng.integers(0, 2, args.bank))
    bank = ReferenceBank(bank_features, bank_labels, torch.zeros(args.bank, 2), 2)
    queries = torch.from_numpy(unit(args.queries))

    def naive() -> torch.Tensor:
        out = torch.empty(args.queries, dtype=torch.long)
        for start in range(0, args.queries, 4096):
            scores = queries[start : start + 4096] @ bank_features.T
            out[start : start + 4096] = bank_labels[scores.argmax(dim=1)]
        return out

    rows: list[dict[str, Any]] = []
    baseline_s, baseline_labels = _timed(naive, args.repeats)
    rows.append({"method": "naive_matmul", "seconds": baseline_s, "pixels": args.queries})
    for name, backend, k in (
        ("rpg_torch_top1", "torch", 1),
        ("rpg_faiss_top1", "faiss", 1),
        ("rpg_torch_top5", "torch", 5),
        ("rpg_faiss_top5", "faiss", 5),
    ):
        seconds, result = _timed(
            lambda b=backend, k=k: match_labels(queries, bank, top_k=k, backend=b), args.repeats
        )
        row: dict[str, Any] = {"method": name, "seconds": seconds, "pixels": args.queries}
        if k == 1:
            row["agreement_with_baseline"] = float(
                (result.labels == baseline_labels).float().mean()
            )
        rows.append(row)

    # Stride-4 matching: a 4× coarser grid of the same number of target pixels.
    side = int(np.sqrt(args.queries)) // 4 * 4
    feature_map = torch.from_numpy(unit(side * side)).T.reshape(1, args.dim, side, side)
    options = RPGOptions(match_stride=4)
    seconds, _ = _timed(
        lambda: transfer_labels(feature_map, bank, (side, side), options), args.repeats
    )
    rows.append(
        {"method": "rpg_stride4", "seconds": seconds, "pixels": side * side, "target_pixels": True}
    )

    for row in rows:
        row["pixels_per_s"] = row["pixels"] / row["seconds"]
        row["ratio_vs_naive"] = row["pixels_per_s"] / rows[0]["pixels_per_s"]
    gflop = 2.0 * args.queries * args.bank * args.dim / 1e9
    report = {
        "benchmark": "rpg_throughput",
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "queries": args.queries,
        "bank": args.bank,
        "dim": args.dim,
        "baseline_gflop_per_s": gflop / baseline_s,
        "exact_work_gflop_per_target_mpx": 2.0 * 1e6 * args.bank * args.dim / 1e9,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rpg_throughput.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [
        "# RPG label-transfer throughput",
        "",
        f"{args.queries} query pixels, bank of {args.bank} reference pixels, {args.dim}-d features, "
        f"{args.threads} threads ({os.cpu_count()} CPUs visible), best of {args.repeats}. "
        "Generated by `benchmarks/rpg_throughput.py`.",
        "",
        "| method | pixels/s | ratio vs naive matmul |",
        "|---|---:|---:|",
    ]
    for row in rows:
        unit_name = " (target px)" if row.get("target_pixels") else ""
        lines.append(
            f"| {row['method']} | {row['pixels_per_s']:,.0f}{unit_name} | {row['ratio_vs_naive']:.2f} |"
        )
    lines += [
        "",
        f"Baseline compute rate: {report['baseline_gflop_per_s']:.1f} GFLOP/s. Exact top-1 costs "
        f"{report['exact_work_gflop_per_target_mpx']:.2f} GFLOP per million query pixels at this bank "
        "size, so 5 M exact matches/s would need about "
        f"{5 * report['exact_work_gflop_per_target_mpx']:.0f} GFLOP/s.",
        "",
    ]
    (args.out / "rpg_throughput.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
