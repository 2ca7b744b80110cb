"""What `alframe demo` costs on this machine: CPU seconds, wall seconds and peak memory.

Runs the demo as a user would (``alframe demo --no-track --out <tmp>``, a fresh folder each
time, so the MAE is trained every run) on the synthetic data and, when ``ALFRAME_DATA`` points
at the chest X-rays, on the real data (``--data real``), and records the child process's user +
system CPU time (``getrusage(RUSAGE_CHILDREN)``), its wall time and its peak RSS, plus the
demo's own printed conclusion. The goal from issue 18 is **under 3 minutes (180 s) of CPU on
2 cores** for the default data.

CPU seconds are the honest measure on a shared machine (wall time grows when other work runs);
the page says how many cores this machine had and whether the goal was met.

    python benchmarks/demo_cost.py [--runs 1] [--data synthetic real] [--docs docs/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"
NAME = "demo_cost"
GOAL_CPU_SECONDS = 180.0


def run_once(data: str) -> dict[str, Any]:
    """One demo run in a fresh folder; its CPU, wall and memory cost and its conclusion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="alframe_demo_cost_") as folder:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "alframe.cli.main", "demo", "--data", data, "--no-track"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        left_outside = sorted(p.name for p in Path(folder).iterdir() if p.name != "alframe_demo")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"alframe demo --data {data} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    conclusion: list[str] = []
    for k, line in enumerate(lines):
        if line.startswith("In short"):
            conclusion = lines[k:]
    return {
        "data": data,
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
        "wall_seconds": round(wall, 1),
        # ru_maxrss of children is the largest child's peak, in KiB on Linux.
        "peak_rss_mib": round(after.ru_maxrss / 1024, 0),
        "files_outside_out": left_outside,
        "conclusion": conclusion,
    }


def build_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# What `alframe demo` costs",
        "",
        f"Measured by `benchmarks/demo_cost.py` on {env['cores']} CPU cores ({env['machine']}), "
        f"no GPU, {report['date']}. Each run starts in an empty folder (the MAE is trained every "
        "time); CPU is the demo process's user + system time, which does not grow when other "
        "work shares the machine the way wall time does.",
        "",
        f"Goal (issue 18): under {GOAL_CPU_SECONDS:.0f} s of CPU on the default data.",
        "",
        "| data | run | CPU s | wall s | peak RSS MiB | goal met |",
        "|---|---|---|---|---|---|",
    ]
    counts: dict[str, int] = {}
    for run in report["runs"]:
        k = counts[run["data"]] = counts.get(run["data"], 0) + 1
        met = "yes" if run["cpu_seconds"] < GOAL_CPU_SECONDS else "**no**"
        lines.append(
            f"| {run['data']} | {k} | {run['cpu_seconds']:.0f} | {run['wall_seconds']:.0f} | "
            f"{run['peak_rss_mib']:.0f} | {met} |"
        )
    lines += [
        "",
        "Nothing is written outside the demo's folder: files left beside it per run: "
        + ", ".join(str(r["files_outside_out"] or "none") for r in report["runs"])
        + ".",
        "",
        "## What the demo concluded (last run per data set)",
        "",
    ]
    last: dict[str, dict[str, Any]] = {}
    for run in report["runs"]:
        last[run["data"]] = run
    for data, run in last.items():
        lines += [f"**{data}**", "", "```", *run["conclusion"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1, help="runs per data set")
    parser.add_argument("--data", nargs="+", default=None, help="synthetic and/or real")
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    wanted = args.data or ["synthetic", *(["real"] if os.environ.get("ALFRAME_DATA") else [])]
    runs = []
    for data in wanted:
        for k in range(args.runs):
            print(f"demo --data {data}, run {k + 1} …", flush=True)
            run = run_once(data)
            print(
                f"  {run['cpu_seconds']:.0f} s CPU, {run['wall_seconds']:.0f} s wall, "
                f"{run['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
            runs.append(run)
    report = {
        "benchmark": NAME,
        "date": time.strftime("%Y-%m-%d"),
        "goal_cpu_seconds": GOAL_CPU_SECONDS,
        "runs": runs,
        "environment": {
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.docs / f"{NAME}.md").write_text(build_markdown(report) + "\n", encoding="utf-8")
    print(f"written: {args.docs / (NAME + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
