"""``alframe project``, ``alframe round`` and ``alframe export``: labelling rounds with annotators.

::

    alframe project init DIR --images FOLDER --classes background=0,lung=255 [--masks FOLDER]
    alframe project init DIR --recipe R [--annotators a,b --overlap 0.2]
    alframe round next DIR --budget B [--strategy S]
    alframe round import DIR --from PATH [--annotator A] [--replace]
    alframe project connect / round push / round sync / round watch   (alframe.cli.labelstudio)
    alframe round status DIR [--json] [--report]
    alframe round pseudolabel DIR [--checkpoint latest|PATH] [--devices D]
    alframe round train DIR [--pseudo-labels]
    alframe export nnunet DIR OUT [--dataset-id N]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from alframe.cli.commands import add_devices_argument


def _notes(project: Any) -> None:
    for note in project.notes:
        print(f"recovered: {note}")


def cmd_project_init(args: argparse.Namespace) -> int:
    from alframe.annotate import init_project
    from alframe.annotate.project import parse_classes, recipe_for_images
    from alframe.config import apply_overrides, load_recipe, recipe_from_dict, recipe_to_dict
    from alframe.errors import ConfigError

    if (args.recipe is None) == (args.images is None):
        raise ConfigError(
            "project init needs either --recipe R or --images FOLDER --classes "
            "background=0,lung=255 (not both); nothing was created"
        )
    if args.recipe is not None:
        for flag in ("masks", "classes", "image_size", "channels"):
            if getattr(args, flag) is not None:
                raise ConfigError(
                    f"--{flag.replace('_', '-')} goes with --images; with --recipe set it in the "
                    "recipe (or with --set); nothing was created"
                )
        recipe = load_recipe(args.recipe, args.overrides)
    else:
        if args.classes is None:
            raise ConfigError(
                "--images needs --classes, e.g. --classes background=0,lung=255 (mask value of "
                "each class, background first); nothing was created"
            )
        size = args.image_size or 256
        recipe = recipe_for_images(
            args.dir,
            args.images,
            parse_classes(args.classes),
            masks=args.masks,
            image_size=(size, size),
            in_channels=args.channels,
        )
        if args.overrides:
            recipe = recipe_from_dict(
                apply_overrides(recipe_to_dict(recipe), args.overrides), "project init --images"
            )
    names = args.annotators.split(",") if args.annotators else ["annotator"]
    summary = init_project(
        args.dir,
        recipe,
        annotators=names,
        overlap=args.overlap,
        ignore_value=args.ignore_value,
        url_prefix=args.url_prefix,
    )
    print(
        f"project {args.dir}: pool of {summary['pool']} images; annotators "
        f"{', '.join(summary['annotators'])}; unlabelled pixels in masks: "
        f"{summary['ignore_value']}"
    )
    if recipe.data.source is None:
        print(
            "no separate source site: the MAE is trained on these images themselves and XSSR "
            "runs without its novelty term (density × diversity)"
        )
    print(f"recipe: {args.dir}/recipe.yaml (edit it for later rounds); outputs stay in {args.dir}")
    print(f"next: alframe round next {args.dir} --budget B")
    return 0


def cmd_round_next(args: argparse.Namespace) -> int:
    from alframe.annotate import next_round, open_project
    from alframe.cli.labelstudio import connected_client, push_after_next
    from alframe.errors import ConfigError

    if args.budget is not None and args.budget < 1:
        raise ConfigError(
            f"--budget {args.budget}: give the number of items to select (>= 1); no round was "
            "opened"
        )
    with open_project(args.dir) as project:
        _notes(project)
        # `--budget 0` is a value, not "unset": only a missing --budget falls back to the recipe.
        budget = args.budget if args.budget is not None else project.recipe.select.budget
        if budget is None:
            raise ConfigError("no budget: pass --budget N or set select.budget in the recipe")
        annotators = args.annotators.split(",") if args.annotators else None
        # Label Studio (server, token, pre-annotations) checked before anything is selected.
        live = connected_client(project, args.pre_annotate)
        result = next_round(
            project,
            budget,
            strategy=args.strategy,
            checkpoint_path=args.checkpoint,
            annotators=annotators,
            overlap=args.overlap,
        )
        pushed = push_after_next(project, live, result.round, args.pre_annotate)
    for note in result.notes:
        print(f"note: {note}")
    loads: dict[str, int] = {}
    for names in result.assignments.values():
        for name in names:
            loads[name] = loads.get(name, 0) + 1
    shown = ", ".join(f"{n} {c}" for n, c in sorted(loads.items()))
    print(f"round {result.round} ({result.strategy}): {len(result.ids)} items → {shown}")
    print(f"export: {result.folder / 'export'} (manifest.csv, labelstudio_tasks.json)")
    if result.pictures:
        print(f"pictures: {', '.join(str(p) for p in result.pictures.values())}")
    for line in pushed:
        print(line)
    if pushed:
        print(f"then: alframe round sync {args.dir}")
    else:
        print(f"then: alframe round import {args.dir} --from MASKS_OR_LABEL_STUDIO_JSON")
    return 0


def cmd_round_import(args: argparse.Namespace) -> int:
    from alframe.annotate import import_labels, open_project

    with open_project(args.dir) as project:
        _notes(project)
        report = import_labels(
            project,
            args.source,
            annotator=args.annotator,
            replace=args.replace,
            unpainted=args.unpainted,
            dry_run=args.dry_run,
            only_selected=args.only_selected,
        )
    verb = "would import" if report.dry_run else "imported"
    pending = "would still be pending" if report.dry_run else "still pending"
    print(
        f"{verb} {len(report.new)} new, {len(report.replaced)} replaced, "
        f"{len(report.unchanged)} unchanged labels; {report.pending} items {pending}"
    )
    if report.skipped:
        print(f"left out {len(report.skipped)} files of items no round has given out yet")
    return 0


def cmd_round_status(args: argparse.Namespace) -> int:
    from alframe.annotate import format_status, open_project, project_status

    with open_project(args.dir, write=False) as project:
        _notes(project)
        status = project_status(project)
        report = None
        if args.report:
            from alframe.annotate.pictures import write_project_report

            report = write_project_report(project, status)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    if report is not None:
        print(f"report: {report} (open it in a browser)", file=sys.stderr if args.json else None)
    return 0


def cmd_round_pseudolabel(args: argparse.Namespace) -> int:
    from alframe.annotate import open_project, pseudo_label_project
    from alframe.cli.commands import devices_option

    devices = devices_option(args.devices)
    with open_project(args.dir) as project:
        _notes(project)
        result = pseudo_label_project(
            project, args.checkpoint, allow_degenerate=args.allow_degenerate, devices=devices
        )
    print(
        f"recorded {result.n_recorded} pseudo-labels from {result.n_references} labelled "
        f"references (model {result.checkpoint}); train on them with `alframe round train DIR "
        "--pseudo-labels`"
    )
    if result.estimated_dice is not None:
        print(
            f"  estimated Dice of the pseudo-labels: {result.estimated_dice:.3f} (each labelled "
            "item pseudo-labelled from the others and compared with its human label)"
        )
    else:
        print("  estimated Dice of the pseudo-labels: needs two labelled items")
    if result.model_agreement is not None:
        print(f"  agreement with the model's own predictions: {result.model_agreement:.3f}")
    if result.degenerate is not None:
        print(f"  warning: the model is degenerate on the pool ({result.degenerate})")
    return 0


def cmd_round_train(args: argparse.Namespace) -> int:
    from alframe.annotate import open_project, train_round
    from alframe.cli.commands import quiet_lightning

    with open_project(args.dir) as project:
        _notes(project)
        quiet_lightning()
        result = train_round(
            project,
            include_pseudo=args.pseudo_labels,
            track=not args.no_track,
            overrides=args.overrides,
        )
    print(
        f"run {result.run}: trained on {result.n_labelled} labelled (+{result.n_pseudo} "
        f"pseudo-labelled) items; best validation Dice {result.best_val_dice:.4f}"
    )
    for name, stats in result.evaluation.items():
        dice = stats.get("dice_mean", stats.get("dice", float("nan")))
        print(f"  {name}: Dice {dice:.4f}")
    agreement = result.pool_agreement
    if agreement.get("value") is not None:
        print(
            f"  agreement with run {agreement['previous_run']} on {agreement['n_items']} "
            f"unlabelled items: {agreement['value']:.4f}"
        )
    elif agreement.get("note"):
        print(f"  agreement with the previous model: {agreement['note']}")
    print(f"checkpoint: {result.checkpoint}")
    for note in result.notes:
        print(f"note: {note}")
    if result.pictures:
        print(f"pictures: {', '.join(str(p) for p in result.pictures.values())}")
    return 0


def cmd_export_nnunet(args: argparse.Namespace) -> int:
    from alframe.annotate import open_project
    from alframe.export import export_nnunet

    with open_project(args.dir, write=False) as project:
        _notes(project)
        result = export_nnunet(
            project,
            args.out,
            dataset_id=args.dataset_id,
            name=args.name,
            file_format=args.format,
            overwrite=args.overwrite,
        )
    print(
        f"nnU-Net data set {result.folder}: {result.n_training} cases ({result.file_ending}); "
        f"labels {result.labels}"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Add the ``project``, ``round`` and ``export`` sub-commands to ``sub``."""
    from alframe.cli import labelstudio

    project = sub.add_parser("project", help="labelling projects (init)")
    project_sub = project.add_subparsers(dest="project_action", metavar="ACTION", required=True)
    init = project_sub.add_parser(
        "init", help="create a labelling project on a folder of images (or a recipe's pool)"
    )
    init.add_argument("dir", help="project folder (new or empty)")
    init.add_argument("--recipe", "-r", help="recipe YAML; data.train is the pool")
    init.add_argument("--images", help="folder of images to label (instead of --recipe)")
    init.add_argument("--masks", help="with --images: masks with the images' file names")
    init.add_argument("--classes", help="with --images: NAME=VALUE,... e.g. background=0,lung=255")
    init.add_argument(
        "--image-size", type=int, help="with --images: square side after resizing (default 256)"
    )
    init.add_argument(
        "--channels", type=int, choices=(1, 3), help="with --images: default from the first image"
    )
    init.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    init.add_argument("--annotators", help="comma-separated names (default: one 'annotator')")
    init.add_argument(
        "--overlap", type=float, default=0.0, help="fraction labelled twice, for agreement"
    )
    init.add_argument(
        "--ignore-value",
        type=int,
        default=None,
        help="mask value of unlabelled pixels (default: 255, or the largest free value)",
    )
    init.add_argument("--url-prefix", default=None, help="Label Studio image URL prefix")
    init.set_defaults(handler=cmd_project_init)
    labelstudio.add_project_commands(project_sub)

    rounds = sub.add_parser(
        "round", help="labelling rounds: next, import, status, pseudolabel, train"
    )
    round_sub = rounds.add_subparsers(dest="round_action", metavar="ACTION", required=True)
    nxt = round_sub.add_parser("next", help="select and export the next batch for annotators")
    nxt.add_argument("dir", help="project folder")
    nxt.add_argument("--budget", "-b", type=int, help="items to select (default: select.budget)")
    nxt.add_argument("--strategy", "-s", help="strategy (default: the recipe's select.strategy)")
    nxt.add_argument("--checkpoint", help="model for uncertainty strategies, or 'latest'")
    nxt.add_argument("--annotators", help="change the annotators from this round on (a,b,...)")
    nxt.add_argument("--overlap", type=float, help="change the overlap from this round on")
    labelstudio.add_pre_annotate(nxt)
    nxt.set_defaults(handler=cmd_round_next)

    imp = round_sub.add_parser("import", help="validate and commit annotators' masks")
    imp.add_argument("dir", help="project folder")
    imp.add_argument(
        "--from",
        dest="source",
        required=True,
        help="folder of masks (PNG/TIFF/NIfTI), manifest CSV/JSON, or Label Studio JSON export",
    )
    imp.add_argument("--annotator", help="whose masks these are (default: from the source)")
    imp.add_argument("--replace", action="store_true", help="overwrite labels that changed")
    imp.add_argument(
        "--unpainted",
        choices=["background", "ignore"],
        default="background",
        help="Label Studio pixels outside every region (default: background)",
    )
    imp.add_argument("--dry-run", action="store_true", help="validate only, commit nothing")
    imp.add_argument(
        "--only-selected",
        action="store_true",
        help="leave out files of items no round gave out (e.g. existing masks of the whole pool)",
    )
    imp.set_defaults(handler=cmd_round_import)

    status = round_sub.add_parser("status", help="pending / labelled per round and annotator")
    status.add_argument("dir", help="project folder")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--report",
        action="store_true",
        help="also write DIR/report.html: learning curve, pool and picked pictures, tables",
    )
    status.set_defaults(handler=cmd_round_status)

    pseudo = round_sub.add_parser(
        "pseudolabel",
        help="RPG pseudo-labels for unlabelled items from the human labels (stored apart)",
    )
    pseudo.add_argument("dir", help="project folder")
    pseudo.add_argument(
        "--checkpoint",
        default="latest",
        help="model whose decoder features are matched (default: latest `round train` model)",
    )
    pseudo.add_argument(
        "--allow-degenerate",
        action="store_true",
        help="record pseudo-labels even when the model predicts one mask for everything",
    )
    add_devices_argument(
        pseudo,
        "each labelling whole batches of items; the labels do not depend on the device count; "
        "default: the recipe's pseudolabel.devices",
        default=None,
    )
    pseudo.set_defaults(handler=cmd_round_pseudolabel)

    train = round_sub.add_parser("train", help="train on the labels and evaluate")
    train.add_argument("dir", help="project folder")
    train.add_argument(
        "--pseudo-labels", action="store_true", help="also use recorded pseudo-labels"
    )
    train.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.set_defaults(handler=cmd_round_train)
    labelstudio.add_round_commands(round_sub)

    export = sub.add_parser("export", help="export labelled data (nnunet)")
    export_sub = export.add_subparsers(dest="export_action", metavar="FORMAT", required=True)
    nnunet = export_sub.add_parser("nnunet", help="nnU-Net v2 raw data set of the labelled items")
    nnunet.add_argument("dir", help="project folder")
    nnunet.add_argument("out", help="nnUNet_raw folder (or a DatasetNNN_Name folder)")
    nnunet.add_argument("--dataset-id", type=int, default=1)
    nnunet.add_argument("--name", help="data set name (default: the recipe name)")
    nnunet.add_argument("--format", choices=["auto", "png", "nifti"], default="auto")
    nnunet.add_argument("--overwrite", action="store_true")
    nnunet.set_defaults(handler=cmd_export_nnunet)
