"""Sub-command handlers: parse → call the library → print. Imports are local to keep --help fast."""

from __future__ import annotations

import argparse


def cmd_train(args: argparse.Namespace) -> int:
    from alframe.config import load_recipe

    # Validate the recipe before the (slow) torch imports so a typo fails in a fraction of a second.
    recipe = load_recipe(args.recipe, args.overrides)
    from alframe.models import format_table
    from alframe.workflows import train_and_evaluate

    result = train_and_evaluate(recipe, out_dir=args.out, track=not args.no_track)
    print(
        f"\ntrained {recipe.model.arch}/{recipe.model.encoder} for {result.epochs_run} epochs in "
        f"{result.train_seconds:.0f} s; best validation Dice {result.best_val_dice:.4f}"
    )
    print(format_table(result.evaluations))
    print(f"checkpoint: {result.checkpoint}")
    print(f"per-image results: {result.out_dir}/eval_<set>.csv")
    if result.tracking_uri:
        print(f"MLflow: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alframe.models import format_table
    from alframe.workflows import evaluate_checkpoint

    tables, _ = evaluate_checkpoint(args.checkpoint, args.data, out_csv=args.out)
    print(format_table(tables))
    if args.out:
        print(f"per-image results written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alframe.workflows.demo import run_demo

    run_demo(
        data=args.data, out=args.out, seed=args.seed, epochs=args.epochs, track=not args.no_track
    )
    return 0
