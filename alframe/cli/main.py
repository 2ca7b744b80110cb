"""The ``alframe`` command line.

User errors (:class:`alframe.errors.AlframeError`) print one line on stderr and exit with code 2;
``--debug`` shows the traceback instead. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

# Before anything can import huggingface_hub (via timm/smp) or albumentations: stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from alframe import __version__
from alframe.errors import AlframeError, AlframeNote

EXIT_USER_ERROR = 2

Handler = Callable[[argparse.Namespace], int]

# Sub-commands that live in their own module, one per capability: each module defines
# ``add_commands(sub)`` that adds its parsers (with ``handler`` defaults) to the sub-parser group.
COMMAND_MODULES = (
    "alframe.cli.pseudolabel",
    "alframe.cli.rank",
    "alframe.cli.transfer",
    "alframe.cli.project",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"alframe: error: {message} (see `{self.prog} --help`)\n")


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", "-r", required=True, help="recipe YAML file (see recipes/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set train.max_epochs=5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    from alframe.cli import commands

    parser = _Parser(
        prog="alframe",
        description=(
            "Annotation-efficient medical image segmentation: what to annotate next, how to get "
            "more from each label, which model to trust on a new site."
        ),
    )
    parser.add_argument("--version", action="version", version=f"alframe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="train a segmentation model from a recipe and evaluate it")
    _add_recipe_args(train)
    train.add_argument("--out", help="run folder (default: the recipe's output_dir)")
    train.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    train.set_defaults(handler=commands.cmd_train)

    evaluate = sub.add_parser("evaluate", help="per-image and mean Dice/IoU of a checkpoint")
    evaluate.add_argument("--checkpoint", "-c", required=True, help="checkpoint from alframe train")
    evaluate.add_argument(
        "--data",
        "-d",
        required=True,
        help="folder with images/ and masks/, or an evaluation set name of the checkpoint's "
        "recipe, or 'all'",
    )
    evaluate.add_argument("--out", help="per-image CSV file (one set) or folder (several)")
    evaluate.set_defaults(handler=commands.cmd_evaluate)

    embed = sub.add_parser(
        "embed",
        help="embed the pool / source (cached), or train the source-domain MAE (embed train-mae)",
    )
    embed.add_argument(
        "action", nargs="?", choices=["train-mae"], help="train-mae: train the masked autoencoder"
    )
    _add_recipe_args(embed)
    embed.add_argument("--which", choices=["pool", "source"], default="pool")
    embed.add_argument("--recompute", action="store_true", help="ignore and replace the cache")
    embed.add_argument("--out", help="train-mae: output folder (default: <run dir>)")
    embed.set_defaults(handler=commands.cmd_embed)

    select = sub.add_parser("select", help="choose the next items to annotate")
    _add_recipe_args(select)
    select.add_argument("--budget", "-b", type=int, help="how many (default: select.budget)")
    select.add_argument("--strategy", "-s", help="strategy name (default: select.strategy)")
    select.add_argument("--labelled", help="file of already-labelled ids (one per line or CSV)")
    select.add_argument("--checkpoint", help="trained model, for uncertainty strategies")
    select.add_argument("--out", "-o", default="selection.csv", help="CSV to write")
    select.set_defaults(handler=commands.cmd_select)

    experiment = sub.add_parser(
        "experiment",
        help="active-learning budget experiment: strategies × schedules × seeds (+ full data)",
    )
    _add_recipe_args(experiment)
    experiment.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted experiment from its last completed rounds",
    )
    experiment.add_argument("--out", help="experiment folder (default: the recipe's output_dir)")
    experiment.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    experiment.set_defaults(handler=commands.cmd_experiment)

    demo = sub.add_parser(
        "demo", help="a few-minute offline demo (synthetic data; real data if ALFRAME_DATA is set)"
    )
    demo.add_argument(
        "--data",
        choices=["auto", "synthetic", "real"],
        default="auto",
        help="auto: real chest X-rays when ALFRAME_DATA points at them, else synthetic",
    )
    demo.add_argument("--out", default="alframe_demo", help="work folder (default: ./alframe_demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    demo.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    demo.set_defaults(handler=commands.cmd_demo)

    import importlib

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alframe`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USER_ERROR
    import warnings

    # A Lightning-internal deprecation (torch's pytree API) on every run is noise for a user.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    python_show = warnings.showwarning

    def show_notes_plainly(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, AlframeNote):
            print(f"note: {message}", file=sys.stderr)
        else:
            python_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_notes_plainly
    try:
        return handler(args)
    except AlframeError as err:
        if args.debug:
            raise
        print(f"alframe: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("alframe: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = python_show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
