"""``alframe rank-sources``: source-model selection (LP·FU and classic transferability scores)."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from alframe.cli.commands import add_devices_argument
from alframe.errors import ConfigError, DataError

_EPILOG = """\
candidate specs (--models):
  seg:PATH | PATH.ckpt        encoder of an alframe segmentation checkpoint (alframe train)
  mae:PATH                    encoder of an alframe MAE (mae.ckpt / mae_encoder.safetensors / mae/)
  timm:NAME=WEIGHTS           timm model with a local weights file, e.g.
                              timm:tf_efficientnet_lite0=lite0.pth
  torchvision:NAME=WEIGHTS    torchvision model with a local weights file, e.g.
                              torchvision:mobilenet_v2=mnv2.pth
  random:NAME[=SEED]          timm architecture with random weights, e.g. random:resnet18
  LABEL@SPEC                  any of the above, named LABEL in the table and the truth CSV

target (--target): DIR/<class>/*.png class folders, a CSV of path,label, or a segmentation
set DIR/images + DIR/masks (labels from masks: --label-mode fraction|presence|pixels).

scores (--scores): lpfu (default, first = ranking order), lp, fu, logme, leep, nleep, sfda,
parc, ncti, or all. LEEP needs a source classifier (timm/torchvision weights with a head).
"""


def add_commands(sub: Any) -> None:
    """Adds ``rank-sources`` to the ``alframe`` sub-command group."""
    parser = sub.add_parser(
        "rank-sources",
        help="rank pretrained source models for a labelled target set (LP·FU, LogME, ...)",
        description="Predict which candidate encoder will fine-tune best on a small labelled "
        "target set, without fine-tuning, and print the ranking best first.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", "-m", nargs="+", required=True, metavar="SPEC", help="candidates (see below)"
    )
    parser.add_argument("--target", "-t", required=True, help="labelled target folder or CSV")
    parser.add_argument("--truth", help="CSV model,performance: print weighted Kendall τ per score")
    parser.add_argument("--scores", "-s", default="lpfu", help="comma-separated names or 'all'")
    parser.add_argument(
        "--natural-source",
        action="store_true",
        help="LP·FU as (1−LP̃)(1−FŨ), the paper's variant for natural-image (ImageNet) sources",
    )
    parser.add_argument(
        "--leave-one-out",
        action="store_true",
        help="LP with leave-one-out kNN (not resubstitution)",
    )
    parser.add_argument("--image-size", type=int, default=96, help="resize side (default 96)")
    parser.add_argument("--max-images", type=int, help="stratified subsample of the target")
    parser.add_argument(
        "--label-mode",
        default="auto",
        choices=["auto", "class", "fraction", "presence", "pixels"],
        help="segmentation targets: how labels come from masks (default fraction)",
    )
    parser.add_argument("--bins", type=int, default=3, help="fraction bins (default 3)")
    parser.add_argument(
        "--fu-layers", metavar="FIRST,SECOND", help="FU conv pair by module name (default: auto)"
    )
    add_devices_argument(
        parser,
        "each computing the features of whole batches of target images; the features do not "
        "depend on the device count",
    )
    parser.add_argument("--out", "-o", help="write the ranking as .csv or .json")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=cmd_rank_sources)


def _read_truth(path: str) -> dict[str, float]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"truth CSV {file} does not exist")
    truth: dict[str, float] = {}
    with open(file, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DataError(f"{file}:{line_no}: expected 'model,performance', got {row!r}")
            try:
                truth[row[0].strip()] = float(row[1])
            except ValueError:
                if line_no == 1:
                    continue  # header
                raise DataError(
                    f"{file}:{line_no}: performance {row[1]!r} is not a number"
                ) from None
    if not truth:
        raise DataError(f"truth CSV {file} has no rows 'model,performance'")
    return truth


def _format(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"


def cmd_rank_sources(args: argparse.Namespace) -> int:
    from alframe.transfer.base import parse_score_names

    score_names = parse_score_names(args.scores)  # fail on a typo before any model is loaded
    conv_layers = None
    if args.fu_layers:
        parts = [p.strip() for p in args.fu_layers.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"--fu-layers expects FIRST,SECOND module names, got {args.fu_layers!r}"
            )
        conv_layers = (parts[0], parts[1])
    if args.max_images is not None and args.max_images < 2:
        raise ConfigError(f"--max-images must be at least 2, got {args.max_images}")
    if args.out and Path(args.out).suffix.lower() not in {".csv", ".json"}:
        raise ConfigError(f"--out {args.out}: use a .csv or .json file name")
    truth = _read_truth(args.truth) if args.truth else None
    from alframe.cli.commands import devices_option, quiet_lightning
    from alframe.inference import hardware_for_devices

    devices = devices_option(args.devices)
    quiet_lightning()
    hardware_for_devices(devices)  # devices this machine lacks fail before any model is read
    from alframe.transfer.sources import parse_spec

    specs = [parse_spec(spec) for spec in args.models]  # missing files fail before any work
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"candidate names must be unique, got {labels}; name them LABEL@SPEC")
    from alframe.transfer.pipeline import rank_sources
    from alframe.transfer.targets import load_target

    target = load_target(
        args.target,
        image_size=args.image_size,
        label_mode=args.label_mode,
        bins=args.bins,
        max_images=args.max_images,
    )
    ranking = rank_sources(
        specs,
        target,
        score_names,
        natural_source=args.natural_source,
        leave_one_out=args.leave_one_out,
        conv_layers=conv_layers,
        progress=not args.no_progress,
        devices=devices,
    )
    from alframe._dist import is_global_zero

    if not is_global_zero():
        return 0  # under torchrun / SLURM every process has the ranking; one prints and writes it
    rows = ranking.as_rows()
    print(
        f"target: {args.target} ({len(target)} images, {len(set(target.labels.tolist()))} "
        f"classes, labels: {target.label_mode}); ranked by {ranking.primary}"
        + (" (natural-source variant)" if args.natural_source and "lpfu" in score_names else "")
    )
    width = max(len("model"), *(len(r["model"]) for r in rows))
    print(f"{'rank':>4}  {'model':<{width}}  " + "  ".join(f"{n:>9}" for n in score_names))
    for row in rows:
        print(
            f"{row['rank']:>4}  {row['model']:<{width}}  "
            + "  ".join(f"{_format(row[n]):>9}" for n in score_names)
        )
    taus = ranking.tau(truth) if truth is not None else None
    if taus is not None:
        print(
            "weighted Kendall tau vs truth: "
            + ", ".join(f"{k} {_format(v)}" for k, v in taus.items())
        )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            payload = {"primary": ranking.primary, "ranking": rows, "weighted_tau": taus}
            out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        else:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with open(out, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
        print(f"ranking written to {out}")
    return 0
