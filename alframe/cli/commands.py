"""Sub-command handlers: parse → call the library → print. Imports are local to keep --help fast."""

from __future__ import annotations

import argparse


def devices_option(text: str | None) -> int | str | None:
    """The value of a ``--devices`` option as a device request, spelled as ``embed.devices``.

    Only the spelling is checked here; whether the devices exist is checked by the command
    (:func:`alframe.inference.hardware_for_devices`) before any work.

    Args:
        text: the option's value (None when absent and the command has no default).

    Returns:
        A count for digits (``"2"`` → 2), else the text; None for None.

    Raises:
        ConfigError: an unknown spelling (the message lists the accepted ones).
    """
    from alframe.config.schema import check_device_spelling
    from alframe.errors import ConfigError

    if text is None:
        return None
    value: int | str = int(text) if text.strip().isdigit() else text
    try:
        check_device_spelling(value)
    except ValueError as err:
        raise ConfigError(f"--devices {text}: {err}") from None
    return value


def add_devices_argument(
    parser: argparse.ArgumentParser, sharing: str, default: str | None = "auto"
) -> None:
    """Adds ``--devices`` to a sub-command: the one definition every command that runs
    inference over several devices shares (``rank``, ``rank-sources``, ``round pseudolabel``);
    the handler reads it with :func:`devices_option`.

    Args:
        parser: the sub-command's parser.
        sharing: how the work is shared out and what stays the same, for the help text
            (e.g. ``"each scoring whole models one at a time; scores do not depend on the
            device count"``); it may end with a default of its own.
        default: the value without the option (None: the command's own default, which
            ``sharing`` should name).
    """
    parser.add_argument(
        "--devices",
        default=default,
        help="auto (every GPU, else CPU; under torchrun / SLURM every process takes its share), "
        f"all, a count, cpu, cuda:1, or several: cuda:0,cuda:1 (one process per device, {sharing})",
    )


def quiet_lightning() -> None:
    """Silence Lightning's per-run INFO lines ("GPU available: False", tips) on the command line.

    Lightning sets its logger to INFO when it is imported, so this must run after that import.
    """
    import logging

    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cmd_train(args: argparse.Namespace) -> int:
    from alframe.config import load_recipe

    # Validate the recipe before the (slow) torch imports so a typo fails in a fraction of a second.
    recipe = load_recipe(args.recipe, args.overrides)
    from alframe.models import format_table
    from alframe.workflows import train_and_evaluate

    quiet_lightning()
    result = train_and_evaluate(recipe, out_dir=args.out, track=not args.no_track)
    from alframe._dist import is_global_zero

    if not is_global_zero():  # other data-parallel processes stay quiet
        return 0
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


def cmd_experiment(args: argparse.Namespace) -> int:
    from alframe.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from alframe.loop import run_experiment

    quiet_lightning()
    result = run_experiment(recipe, resume=args.resume, out_dir=args.out, track=not args.no_track)
    print(f"experiment folder: {result.run_dir} ({result.seconds / 60:.1f} min)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alframe.workflows.demo import run_demo

    quiet_lightning()

    run_demo(
        data=args.data, out=args.out, seed=args.seed, epochs=args.epochs, track=not args.no_track
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from alframe.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.action == "train-mae":
        from alframe.embed import train_mae

        quiet_lightning()
        result = train_mae(recipe, out_dir=args.out)
        print(
            f"MAE ({recipe.embed.mae.encoder}) trained on {result.n_images} source images for "
            f"{result.epochs} epochs in {result.wall_time_s:.0f} s; final loss {result.final_loss:.4f}"
        )
        print(f"checkpoint: {result.checkpoint}")
        return 0
    from alframe.embed import embed_pool

    emb = embed_pool(recipe, which=args.which, recompute=args.recompute)
    origin = "cache" if emb.from_cache else "computed"
    print(
        f"{args.which}: {emb.embeddings.shape[0]} × {emb.embeddings.shape[1]} embeddings ({origin}); "
        f"weights {emb.weights_hash[:12]}; {emb.cache_path}"
    )
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from alframe.config import load_recipe
    from alframe.errors import ConfigError

    recipe = load_recipe(args.recipe, args.overrides)
    budget = args.budget if args.budget is not None else recipe.select.budget
    if budget is None or budget < 1:
        raise ConfigError("no budget: pass --budget N (N >= 1) or set select.budget in the recipe")
    from alframe.workflows.selection import (
        explain_selection,
        select_from_recipe,
        write_selection_csv,
    )

    result = select_from_recipe(
        recipe, budget, strategy=args.strategy, labelled=args.labelled, checkpoint=args.checkpoint
    )
    path = write_selection_csv(result, args.out)
    print(f"{result.strategy}: selected {len(result.selection.indices)} of {len(result.ids)}")
    for line in explain_selection(result.selection):
        print(line)
    print(f"written to {path}")
    from alframe.workflows.pictures import selection_picture_paths, write_selection_pictures

    try:
        pictures, notes = write_selection_pictures(
            recipe, result, selection_picture_paths(path), model=args.checkpoint
        )
    except Exception as err:  # the selection is written; a picture must not fail the command
        print(f"note: pictures not written ({type(err).__name__}: {err})")
    else:
        for note in notes:
            print(f"note: {note}")
        print(f"pictures: {', '.join(str(p) for p in pictures.values())}")
    contrast = result.contrast
    if contrast is not None and contrast.low:
        from alframe.scoring.structure import LOW_CONTRAST

        print(
            f"hint: the embedding barely separates the pool (neighbour contrast "
            f"{contrast.contrast:.2f} < {LOW_CONTRAST}: nearest neighbours are hardly closer than in a "
            "shuffled copy), so embedding-based picks are close to random; train the MAE longer "
            "or on more images (alframe embed train-mae), or use random / an uncertainty strategy"
        )
    return 0
