"""Label Studio commands: ``project connect``, ``round push``, ``round sync``, ``round watch``,
and the push that ``round next`` does on a connected project.

::

    alframe project connect DIR --label-studio URL [--project-id N] [--token-env VAR]
    alframe round push DIR [--pre-annotate auto|model|rpg|none]
    alframe round sync DIR [--unpainted background|ignore]
    alframe round watch DIR --retrain-every N [--budget B] [--interval S]

The token is read from an environment variable (``$LABEL_STUDIO_API_KEY`` unless
``--token-env`` names another); only the variable's name is stored in the project.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from alframe.cli.project import _notes

PRE_ANNOTATE_CHOICES = ("auto", "model", "rpg", "none")


def connected_client(project: Any, pre_annotate: str = "auto") -> Any:
    """(link, client) of a connected project with server, token and pre-annotation mode
    checked; None otherwise.

    ``round next`` calls it *before* selecting, so a server that is down, a refused token or a
    pre-annotation that cannot be made stops the command with the project unchanged.
    """
    from alframe.annotate.labelstudio import check_pre_annotate, open_link, read_link

    if read_link(project) is None:
        return None
    check_pre_annotate(project, pre_annotate)
    return open_link(project)


def push_after_next(project: Any, live: Any, round_index: int, pre_annotate: str) -> list[str]:
    """Push the new round's tasks; returns lines to print. A failure names the way out."""
    from alframe.annotate.labelstudio import LabelStudioError, push_round_tasks
    from alframe.errors import AlframeError

    if live is None:
        return []
    link, client = live
    try:
        report = push_round_tasks(project, link, client, pre_annotate)
    except AlframeError as err:
        raise LabelStudioError(
            f"round {round_index} is committed but its tasks were not all pushed ({err}); run "
            f"`alframe round push {project.root}` when Label Studio is back"
        ) from None
    return _push_lines(report, link)


def _push_lines(report: Any, link: Any) -> list[str]:
    pre = (
        f", {report.pre_annotated} with a pre-annotation ({report.model_version})"
        if report.pre_annotated
        else ""
    )
    lines = [
        f"Label Studio: {len(report.created)} tasks created{pre} in project {link.project_id} "
        f"({link.url}/projects/{link.project_id})"
    ]
    if report.adopted:
        lines.append(f"Label Studio: {len(report.adopted)} tasks of an interrupted push recorded")
    return lines + [f"note: {n}" for n in report.notes]


def cmd_project_connect(args: argparse.Namespace) -> int:
    from alframe.annotate import open_project
    from alframe.annotate.labelstudio import connect_project

    with open_project(args.dir) as project:
        _notes(project)
        info = connect_project(
            project,
            args.label_studio,
            token_env=args.token_env,
            project_id=args.project_id,
            title=args.title,
            users=args.user,
            replace=args.replace,
        )
    verb = "created" if info["created"] else "attached to"
    print(
        f"{verb} Label Studio project {info['project_id']} ({info['title']}) at {info['url']}; "
        f"link recorded in {args.dir}"
    )
    print(f"next: alframe round next {args.dir} --budget B   (pushes the tasks)")
    return 0


def cmd_round_push(args: argparse.Namespace) -> int:
    from alframe.annotate import open_project
    from alframe.annotate.labelstudio import open_link, push_round_tasks

    with open_project(args.dir) as project:
        _notes(project)
        link, client = open_link(project)
        report = push_round_tasks(project, link, client, args.pre_annotate)
    for line in _push_lines(report, link):
        print(line)
    return 0


def _sync(project: Any, unpainted: str, track: bool) -> Any:
    from alframe.annotate.labelstudio import open_link, sync_annotations

    link, client = open_link(project)
    return sync_annotations(project, link, client, unpainted=unpainted, track=track)


def _sync_lines(report: Any) -> list[str]:
    lines = [
        f"synced {len(report.new)} new, {len(report.replaced)} replaced, "
        f"{len(report.unchanged)} unchanged labels ({report.recorded} annotation versions "
        f"recorded); {report.pending} items still pending"
    ]
    for task_id, item, who, user in report.skipped:
        lines.append(
            f"skipped in Label Studio (not imported): task {task_id} {item} ({who}, {user})"
        )
    return lines + [f"note: {n}" for n in report.notes]


def cmd_round_sync(args: argparse.Namespace) -> int:
    from alframe.annotate import open_project

    with open_project(args.dir) as project:
        _notes(project)
        report = _sync(project, args.unpainted, not args.no_track)
    for line in _sync_lines(report):
        print(line)
    return 0


def watch(
    directory: str,
    retrain_every: int,
    budget: int | None,
    interval: float,
    pre_annotate: str = "auto",
    unpainted: str = "background",
    max_cycles: int | None = None,
    track: bool = True,
) -> int:
    """Poll Label Studio: sync; when ``retrain_every`` new labels have arrived since the last
    model, train, select the next batch and push it. Every step commits on its own, so Ctrl-C
    at any moment keeps everything synced so far.

    Args:
        directory: the project folder.
        retrain_every: new human-labelled items that trigger a retrain (>= 1).
        budget: items per new round (default: the recipe's ``select.budget``).
        interval: seconds between polls.
        pre_annotate: pre-annotations of pushed rounds.
        unpainted: see ``round sync``.
        max_cycles: stop after this many polls (None: until Ctrl-C).
        track: log to MLflow when the recipe enables it.

    Returns:
        The exit code (0).
    """
    from alframe.annotate import next_round, open_project, train_round
    from alframe.cli.commands import quiet_lightning
    from alframe.errors import ConfigError

    if retrain_every < 1:
        raise ConfigError(f"--retrain-every {retrain_every}: give a number of labels >= 1")
    cycle = 0
    try:
        while max_cycles is None or cycle < max_cycles:
            cycle += 1
            with open_project(directory, wait=True) as project:
                _notes(project)
                report = _sync(project, unpainted, track)
                if report.recorded or report.skipped:
                    for line in _sync_lines(report):
                        print(line, flush=True)
                store = project.store
                labelled = int(
                    store.query("SELECT COUNT(DISTINCT id) AS n FROM annotations")[0]["n"]
                )
                last = store.query("SELECT n_labelled FROM trainings ORDER BY run DESC LIMIT 1")
                trained_on = int(last[0]["n_labelled"]) if last else 0
                if labelled - trained_on >= retrain_every:
                    quiet_lightning()
                    print(f"{labelled - trained_on} new labels: training on {labelled}", flush=True)
                    result = train_round(project, track=track)
                    print(f"run {result.run}: validation Dice {result.best_val_dice:.4f}")
                    size = budget if budget is not None else project.recipe.select.budget
                    if size:
                        live = connected_client(project, pre_annotate)
                        exported = next_round(project, size)
                        print(f"round {exported.round}: {len(exported.ids)} items selected")
                        for line in push_after_next(project, live, exported.round, pre_annotate):
                            print(line, flush=True)
            if max_cycles is None or cycle < max_cycles:
                time.sleep(interval)
    except KeyboardInterrupt:
        print("stopped; everything synced so far is kept", flush=True)
    return 0


def cmd_round_watch(args: argparse.Namespace) -> int:
    return watch(
        args.dir,
        args.retrain_every,
        args.budget,
        args.interval,
        pre_annotate=args.pre_annotate,
        unpainted=args.unpainted,
        max_cycles=args.max_cycles,
        track=not args.no_track,
    )


def add_pre_annotate(parser: argparse.ArgumentParser) -> None:
    """The ``--pre-annotate`` option (``round next``, ``round push``, ``round watch``)."""
    parser.add_argument(
        "--pre-annotate",
        choices=PRE_ANNOTATE_CHOICES,
        default="auto",
        help="Label Studio pre-annotations: auto (the latest round model when one exists), "
        "model, rpg (recorded pseudo-labels) or none",
    )


def add_project_commands(project_sub: Any) -> None:
    """``project connect``."""
    from alframe.annotate.labelstudio import DEFAULT_TOKEN_ENV

    connect = project_sub.add_parser(
        "connect", help="link the project to a Label Studio server (create or attach a project)"
    )
    connect.add_argument("dir", help="project folder")
    connect.add_argument("--label-studio", required=True, metavar="URL", help="server URL")
    connect.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="VAR",
        help=f"environment variable holding the access token (default: {DEFAULT_TOKEN_ENV})",
    )
    connect.add_argument("--project-id", type=int, help="attach to this Label Studio project")
    connect.add_argument("--title", help="title of the created project (default: recipe name)")
    connect.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="EMAIL=ANNOTATOR",
        help="map a Label Studio user (e-mail or username) to a project annotator (repeatable)",
    )
    connect.add_argument(
        "--replace", action="store_true", help="replace a link to another Label Studio project"
    )
    connect.set_defaults(handler=cmd_project_connect)


def add_round_commands(round_sub: Any) -> None:
    """``round push``, ``round sync``, ``round watch``."""
    push = round_sub.add_parser(
        "push", help="upload pending items of the rounds to Label Studio (connected projects)"
    )
    push.add_argument("dir", help="project folder")
    add_pre_annotate(push)
    push.set_defaults(handler=cmd_round_push)

    sync = round_sub.add_parser(
        "sync", help="import annotations submitted or edited in Label Studio since the last sync"
    )
    sync.add_argument("dir", help="project folder")
    sync.add_argument(
        "--unpainted",
        choices=["background", "ignore"],
        default="background",
        help="pixels outside every brush region (default: background)",
    )
    sync.add_argument("--no-track", action="store_true", help="do not log effort to MLflow")
    sync.set_defaults(handler=cmd_round_sync)

    watch_parser = round_sub.add_parser(
        "watch", help="poll Label Studio: sync, retrain and push the next batch every N labels"
    )
    watch_parser.add_argument("dir", help="project folder")
    watch_parser.add_argument(
        "--retrain-every", type=int, required=True, metavar="N", help="new labels per retrain"
    )
    watch_parser.add_argument("--budget", "-b", type=int, help="items per new round")
    watch_parser.add_argument(
        "--interval", type=float, default=30.0, help="seconds between polls (default 30)"
    )
    watch_parser.add_argument("--max-cycles", type=int, help="stop after this many polls")
    watch_parser.add_argument("--unpainted", choices=["background", "ignore"], default="background")
    watch_parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    add_pre_annotate(watch_parser)
    watch_parser.set_defaults(handler=cmd_round_watch)
