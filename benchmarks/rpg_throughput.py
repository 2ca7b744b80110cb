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
    rpg_protoP_top1  the bank compressed to P spherical k-means prototypes per class
                     (``prototypes_per_class``), exact matching against them: approximate, so
                     its agreement with the exact top-1 labels is reported;
    rpg_stride4      :func:`alframe.pseudolabel.transfer_labels` with ``match_stride=4``: features
                     average-pooled 4×4 before matching, labels resized back — reported in
                     *target* pixels (16 per match);
    rpg_proto64_strideS  prototypes and stride S together (target pixels).

The features are clustered (2 classes × 32 modes with noise), not uniform on the sphere, so that
the agreement of approximate methods says something.

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
from _timing import best_of

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "docs" / "benchmarks"


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

    from alframe.pseudolabel.matching import ReferenceBank, match_labels, prototype_bank
    from alframe.pseudolabel.rpg import RPGOptions, transfer_labels

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    # Pixel features are clustered (tissue types, textures): 2 classes × 32 modes, noisy around
    # them, so that approximate methods can be scored by their agreement with the exact labels.
    modes = rng.standard_normal((64, args.dim)).astype(np.float32)

    def unit(n: int) -> tuple[np.ndarray, np.ndarray]:
        which = rng.integers(0, modes.shape[0], n)
        x = modes[which] + 0.6 * rng.standard_normal((n, args.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), (which >= 32).astype(np.int64)

    bank_np, bank_classes = unit(args.bank)
    bank_features = torch.from_numpy(bank_np)
    bank_labels = torch.from_numpy(bank_classes)
    bank = ReferenceBank(bank_features, bank_labels, torch.zeros(args.bank, 2), 2)
    queries = torch.from_numpy(unit(args.queries)[0])

    def naive() -> torch.Tensor:
        out = torch.empty(args.queries, dtype=torch.long)
        for start in range(0, args.queries, 4096):
            scores = queries[start : start + 4096] @ bank_features.T
            out[start : start + 4096] = bank_labels[scores.argmax(dim=1)]
        return out

    rows: list[dict[str, Any]] = []
    baseline_s, baseline_labels = best_of(naive, args.repeats)
    rows.append({"method": "naive_matmul", "seconds": baseline_s, "pixels": args.queries})
    for name, backend, k in (
        ("rpg_torch_top1", "torch", 1),
        ("rpg_faiss_top1", "faiss", 1),
        ("rpg_torch_top5", "torch", 5),
        ("rpg_faiss_top5", "faiss", 5),
    ):
        seconds, result = best_of(
            lambda b=backend, k=k: match_labels(queries, bank, top_k=k, backend=b), args.repeats
        )
        row: dict[str, Any] = {"method": name, "seconds": seconds, "pixels": args.queries}
        if k == 1:
            row["agreement_with_baseline"] = float(
                (result.labels == baseline_labels).float().mean()
            )
        rows.append(row)

    # Prototype banks (spherical k-means per class): approximate, scored by agreement with the
    # exact top-1 labels; the compression is a one-off cost per reference set (build_seconds).
    exact = baseline_labels
    for per_class in (64, 256):
        started = time.perf_counter()
        compact = prototype_bank(bank, per_class, seed=0)
        build = time.perf_counter() - started
        seconds, result = best_of(lambda c=compact: match_labels(queries, c), args.repeats)
        rows.append(
            {
                "method": f"rpg_proto{per_class}_top1",
                "seconds": seconds,
                "pixels": args.queries,
                "build_seconds": build,
                "agreement_with_baseline": float((result.labels == exact).float().mean()),
            }
        )

    # Strided matching: a coarser grid labels the same number of target pixels. The feature map
    # is a random field, so only timing is meaningful here, not agreement.
    side = int(np.sqrt(args.queries)) // 4 * 4
    feature_map = torch.from_numpy(unit(side * side)[0]).T.reshape(1, args.dim, side, side)
    for name, options, matched_bank in (
        ("rpg_stride4", RPGOptions(match_stride=4), bank),
        ("rpg_proto64_stride2", RPGOptions(match_stride=2), prototype_bank(bank, 64, seed=0)),
        ("rpg_proto64_stride4", RPGOptions(match_stride=4), prototype_bank(bank, 64, seed=0)),
    ):
        seconds, _ = best_of(
            lambda o=options, b=matched_bank: transfer_labels(feature_map, b, (side, side), o),
            args.repeats,
        )
        rows.append(
            {"method": name, "seconds": seconds, "pixels": side * side, "target_pixels": True}
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
        "| method | pixels/s | ratio vs naive matmul | labels equal to exact top-1 |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        unit_name = " (target px)" if row.get("target_pixels") else ""
        agree = row.get("agreement_with_baseline")
        agreement = "–" if agree is None else f"{100 * agree:.2f} %"
        lines.append(
            f"| {row['method']} | {row['pixels_per_s']:,.0f}{unit_name} | "
            f"{row['ratio_vs_naive']:.2f} | {agreement} |"
        )
    lines += [
        "",
        f"Baseline compute rate: {report['baseline_gflop_per_s']:.1f} GFLOP/s. Exact top-1 costs "
        f"{report['exact_work_gflop_per_target_mpx']:.2f} GFLOP per million query pixels at this bank "
        "size, so 5 M exact matches/s would need about "
        f"{5 * report['exact_work_gflop_per_target_mpx']:.0f} GFLOP/s.",
        "",
    ]
    fast = [r["method"] for r in rows if r["pixels_per_s"] >= 5e6]
    lines += [
        "Methods at or above 5 M target pixels/s in this run: "
        + (", ".join(f"`{m}`" for m in fast) if fast else "none")
        + ". Prototype banks are approximate (a pixel takes the class of its most similar "
        "k-means prototype); the agreement column shows how often that equals the exact top-1 "
        "label on these clustered features.",
        "",
    ]
    (args.out / "rpg_throughput.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
