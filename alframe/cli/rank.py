"""``alframe rank`` (label-free checkpoint ranking) and ``alframe adapt`` (UDA checkpoint zoos)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from alframe.cli.commands import add_devices_argument

__all__ = ["add_commands", "cmd_adapt", "cmd_rank"]

_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


INSTANCE_RANKERS = ("cte-ars",)
"""Rankers that compare instance label maps: used only with --instances."""


def ranker_list() -> str:
    """One line per registered ranker: its name and the first line of its docstring."""
    from alframe.ranking import DEFAULT_RANKER, RANKERS

    lines = []
    for name in RANKERS.names():
        doc = (RANKERS.get(name).__doc__ or "").strip().splitlines()
        summary = doc[0].rstrip(".") if doc else ""
        tags = []
        if name == DEFAULT_RANKER:
            tags.append("default")
        if name in INSTANCE_RANKERS:
            tags.append("instance label maps, with --instances")
        suffix = f" [{'; '.join(tags)}]" if tags else ""
        lines.append(f"  {name:<15} {summary}{suffix}")
    return "\n".join(lines)


def _epilog_on_help(parser: argparse.ArgumentParser, make_epilog: Any) -> None:
    """Sets ``parser``'s epilog when its help is shown: listing the rankers imports torch
    (seconds), which every other command (``round status``, ``round push``...) should not pay."""
    show_help = parser.format_help

    def format_help() -> str:
        parser.epilog = make_epilog()
        return show_help()

    parser.format_help = format_help  # type: ignore[method-assign]


def add_commands(sub: Any) -> None:
    """Add the ``rank`` and ``adapt`` sub-commands to the CLI's sub-parser group."""
    rank = sub.add_parser(
        "rank",
        help="rank checkpoints on unlabelled target images (CTE and baselines)",
        description=(
            "Rank candidate models on a target set without its labels. A path is an alframe "
            "checkpoint (.ckpt, grey-box) or a TorchScript (.pt) / ONNX (.onnx) file that maps "
            "an image batch to logits (black-box). Models whose predictions are degenerate "
            "(all foreground, all background, or the same mask for every image) are flagged "
            "and ranked last. With --labels, also reports the true Dice per model and "
            "Pearson / Spearman / Kendall correlations of every score with it."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _epilog_on_help(rank, lambda: "rankers (--method NAME):\n" + ranker_list())
    rank.add_argument("--checkpoints", "-c", nargs="+", required=True, metavar="PATH")
    rank.add_argument("--images", "-i", required=True, help="folder of target images (or images/)")
    rank.add_argument("--labels", help="folder of target masks (validation only)")
    rank.add_argument(
        "--method",
        "-m",
        action="append",
        default=None,
        help="ranker name (repeatable; the first sorts the table) or 'all'; default consensus. "
        "The rankers are listed below",
    )
    rank.add_argument(
        "--perturbation",
        "-p",
        default="gauss",
        help="perturbation of the cte-* rankers: gauss, brightness, contrast, gamma, dropout, "
        "dropout-all (default gauss)",
    )
    rank.add_argument(
        "--strength",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="input-perturbation strength range (relative: fractions of each image's spread)",
    )
    rank.add_argument(
        "--absolute-strength",
        action="store_true",
        help="read --strength as raw values on the normalised input (the CTE paper's form) "
        "instead of fractions of each image's spread",
    )
    rank.add_argument(
        "--instances",
        action="store_true",
        help="the models' outputs are read as instances (connected components): adds cte-ars "
        "to --method all and validates --labels (instance label maps) with mAP@0.5:0.95",
    )
    rank.add_argument("--dropout-p", type=float, default=None, help="channel-dropout proportion")
    rank.add_argument("--seed", type=int, default=42, help="perturbation seed (default 42)")
    rank.add_argument("--source", help="labelled source folder (images/ + masks/) for source-dice")
    rank.add_argument("--image-size", type=int, default=None, help="override the input size")
    rank.add_argument("--batch-size", type=int, default=16, help="images per pass and device")
    add_devices_argument(
        rank,
        "each scoring whole models one at a time; scores do not depend on the device count",
    )
    rank.add_argument("--out", "-o", default="alframe_rank", help="folder for CSV / JSON / plot")
    rank.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    rank.add_argument("--no-progress", action="store_true", help="no progress bars")
    rank.set_defaults(handler=cmd_rank)

    adapt = sub.add_parser(
        "adapt",
        help="source-free domain adaptation writing one checkpoint per epoch (for alframe rank)",
    )
    adapt.add_argument("--checkpoint", "-c", required=True, help="alframe checkpoint (.ckpt)")
    adapt.add_argument("--target", "-t", required=True, help="folder of unlabelled target images")
    adapt.add_argument("--method", "-m", required=True, help="adabn, mean-teacher or self-training")
    adapt.add_argument("--out", "-o", required=True, help="zoo folder for epoch_NNN.ckpt")
    adapt.add_argument("--epochs", type=int, default=None)
    adapt.add_argument("--batch-size", type=int, default=8)
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--overwrite", action="store_true", help="replace existing checkpoints")
    adapt.set_defaults(handler=cmd_adapt)


def _method_names(requested: list[str] | None, has_source: bool, instances: bool) -> list[str]:
    from alframe.errors import ConfigError
    from alframe.ranking import DEFAULT_RANKER, RANKERS

    names = requested or [DEFAULT_RANKER]
    if "all" in names:
        # The default ranker first: it sorts the table.
        chosen = [DEFAULT_RANKER] + [n for n in RANKERS.names() if n != DEFAULT_RANKER]
        return [
            n
            for n in chosen
            if (n != "source-dice" or has_source) and (n not in INSTANCE_RANKERS or instances)
        ]
    for name in names:
        RANKERS.get(name)  # unknown names: ConfigError with close matches
    if "source-dice" in names and not has_source:
        raise ConfigError("--method source-dice needs --source DIR (labelled source images)")
    if len(set(names)) != len(names):
        raise ConfigError(f"--method lists a ranker twice: {names}")
    if not instances and any(n in INSTANCE_RANKERS for n in names):
        raise ConfigError(
            "cte-ars compares instance label maps: add --instances (and instance label maps "
            "as --labels) or choose a semantic ranker such as consensus or cte-ei"
        )
    return names


def _build_rankers(args: argparse.Namespace, names: list[str], source: Any) -> list[Any]:
    from alframe.errors import ConfigError
    from alframe.ranking import RANKERS, CTERanker, create_ranker

    rankers = []
    for name in names:
        if issubclass(RANKERS.get(name), CTERanker):
            low, high = args.strength if args.strength else (None, None)
            rankers.append(
                create_ranker(
                    name,
                    perturbation=args.perturbation,
                    low=low,
                    high=high,
                    p=args.dropout_p,
                    scale="absolute" if args.absolute_strength else "relative",
                    seed=args.seed,
                )
            )
        elif name == "consensus":
            rankers.append(create_ranker(name, seed=args.seed))
        elif name == "source-dice":
            rankers.append(create_ranker(name, source=source))
        else:
            rankers.append(create_ranker(name))
    if not rankers:
        raise ConfigError("no ranker selected")
    return rankers


def cmd_rank(args: argparse.Namespace) -> int:
    """Rank the candidates and print the table (best first)."""
    from alframe.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    names = _method_names(args.method, args.source is not None, args.instances)
    from alframe.ranking import make_perturbation

    low, high = args.strength if args.strength else (None, None)
    scale = "absolute" if args.absolute_strength else "relative"
    make_perturbation(args.perturbation, low, high, args.dropout_p, scale)  # refuse bad values
    customised = (
        args.perturbation != "gauss" or args.strength or args.dropout_p is not None
    ) or args.absolute_strength
    if customised and not any(n.startswith("cte-") for n in names):
        print(
            "note: --perturbation / --strength / --dropout-p set the cte-* rankers only; "
            f"{', '.join(names)} keep their own settings (add e.g. --method cte-ei)"
        )
    from alframe.cli.commands import devices_option, quiet_lightning
    from alframe.parallel import resolve_devices
    from alframe.ranking import (
        display_names,
        images_from_folder,
        load_predictor,
        rank_models,
        validate,
        write_report,
    )

    quiet_lightning()
    devices = devices_option(args.devices)
    resolve_devices(devices)  # a bad request fails before any model is read
    predictors = [load_predictor(path) for path in args.checkpoints]
    for predictor, name in zip(predictors, display_names(args.checkpoints), strict=True):
        predictor.name = name
    recipe = next((p.recipe for p in predictors if p.recipe), None)
    images = images_from_folder(args.images, args.labels, recipe, args.image_size)
    source = (
        images_from_folder(
            Path(args.source),
            Path(args.source) / "masks",
            recipe,
            args.image_size,
        )
        if args.source
        else None
    )
    rankers = _build_rankers(args, names, source)
    report = rank_models(
        predictors,
        images,
        rankers,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        devices=devices,
    )
    for ranker, model, reason in report.skipped:
        print(f"skipped {ranker} for {model}: {reason}")
    if args.labels:
        truth = "map" if args.instances else "dice"
        validate(
            report, predictors, images, batch_size=args.batch_size, truth=truth, devices=devices
        )
    from alframe._dist import is_global_zero

    if not is_global_zero():
        return 0  # under torchrun / SLURM every process has the report; one writes it
    print(report.format())
    if report.correlations:
        measure = "mAP@0.5:0.95" if args.instances else "true Dice"
        print(f"\ncorrelation with {measure} (scores oriented so that higher = better; rank")
        print("correlations follow the printed order, degenerate models last):")
        print(report.format_correlations())
    files = write_report(report, args.out)
    print(f"\nwritten: {', '.join(str(p) for p in files.values())}")
    if not args.no_track:
        _track(report, args, files)
    return 0


def _metric(name: str) -> str:
    return _METRIC_NAME.sub("_", name)


def _track(report: Any, args: argparse.Namespace, files: dict[str, Path]) -> None:
    from alframe.tracking import Tracker

    tracker = Tracker("alframe-rank")
    with tracker.run(f"rank {Path(args.images).name}") as run_id:
        tracker.log_params(
            run_id,
            {
                "images": str(args.images),
                "labels": str(args.labels or ""),
                "methods": ",".join(report.rankers),
                "perturbation": args.perturbation,
                "perturbation_scale": "absolute" if args.absolute_strength else "relative",
                "primary_ranker": report.primary or "",
                "seed": args.seed,
                "n_models": len(report.models),
                "checkpoints": ",".join(str(c) for c in args.checkpoints)[:500],
            },
        )
        metrics: dict[str, float] = {}
        for ranker in report.rankers:
            for model, score in report.scores(ranker).items():
                metrics[_metric(f"{ranker}/{model}")] = score
        for model, dice in report.dice.items():
            metrics[_metric(f"true_dice/{model}")] = dice
        for ranker, values in report.correlations.items():
            for method, correlation in values.items():
                metrics[_metric(f"{ranker}/{method}")] = correlation.statistic
        for model in report.models:
            metrics[_metric(f"degenerate/{model}")] = float(model in report.degenerate)
        tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v == v})
        if report.degenerate:
            tracker.set_tags(
                run_id,
                {
                    _metric(f"degenerate.{m}")[:250]: why[:500]
                    for m, why in report.degenerate.items()
                },
            )
        for path in files.values():
            tracker.log_artifact(run_id, path)
    print(f"MLflow: {tracker.ui_command()}")


def cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt a checkpoint to target images and write per-epoch checkpoints."""
    from alframe.adapt import ADAPTERS, adapt_checkpoint

    ADAPTERS.get(args.method)  # unknown method: one-line error before any loading
    from alframe.cli.commands import quiet_lightning
    from alframe.ranking import images_from_folder, load_predictor

    quiet_lightning()
    predictor = load_predictor(args.checkpoint)
    if not predictor.grey_box:
        from alframe.errors import ModelError

        raise ModelError(f"{args.checkpoint}: adaptation needs an alframe checkpoint (.ckpt)")
    images = images_from_folder(args.target, None, predictor.recipe)
    result = adapt_checkpoint(
        args.checkpoint,
        images,
        args.method,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    print(
        f"{args.method}: {len(result.checkpoints)} checkpoints in {args.out} "
        f"({result.seconds:.0f} s); rank them with: alframe rank --checkpoints "
        f"{args.out}/epoch_*.ckpt --images {args.target}"
    )
    return 0
