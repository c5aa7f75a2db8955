"""`barnraise project NAME [share N | suspend | resume | no-new-tasks | finish-then-stop]`:
one project's resource share and mode (``app.contributor.shares``).

With an engine running (headless or the tray) the change goes through its control channel
(``project_share``, ``project_mode``) and takes effect at once; with none, the project's
``scheduling.json`` is edited in place and the next engine start reads it. Without an
action it prints the project's share and mode.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from app.cli_common import _paths, _store

__all__ = ["ACTIONS", "add_project_parser", "cmd_project"]

ACTIONS = {
    "suspend": "suspended",
    "resume": "active",
    "no-new-tasks": "no_new_tasks",
    "finish-then-stop": "finish_then_stop",
}
"""The mode each action word sets (``shares.Mode`` values); ``share N`` sets the share."""


def add_project_parser(sub: Any, common: Any) -> None:
    project = sub.add_parser(
        "project",
        help="a project's resource share, or suspend/resume it",
        description=(
            "Show or change one project's resource share (a relative weight, default 100: "
            "a project with 200 gets about twice the compute of one with 100) and mode. "
            "suspend: no work for it (a task in hand is checkpointed and given back); "
            "resume: work again; no-new-tasks: finish the task in hand, lease no more; "
            "finish-then-stop: the same, then suspended once the task is done."
        ),
    )
    project.add_argument("project", help="the project name (or its page URL)")
    project.add_argument(
        "action", nargs="?", choices=["share", *ACTIONS], help="what to change (none: show)"
    )
    project.add_argument("value", nargs="?", help="the new share, after `share`")
    common(project, defaults=False)


def describe(share: int, mode: str) -> str:
    from app.contributor.shares import MODE_WORDS, Mode

    return f"share {share}, {MODE_WORDS.get(Mode(mode), mode)}"


def cmd_project(args: argparse.Namespace, out: TextIO) -> int:
    from app.cli_join import _find_project
    from app.contributor.control import NotRunning, send_command
    from app.contributor.shares import check_share

    if args.action == "share":
        if args.value is None:
            raise ValueError("give the share: `barnraise project NAME share 200`")
        args.value = check_share(args.value)
    elif args.value is not None:
        raise ValueError(f"`{args.action or 'project NAME'}` takes no value ({args.value!r})")
    ref = _find_project(_store(args), args.project)
    paths = _paths()
    command, command_args = "status", {}
    if args.action == "share":
        command, command_args = "project_share", {"key": ref.key, "share": args.value}
    elif args.action is not None:
        command, command_args = "project_mode", {"key": ref.key, "mode": ACTIONS[args.action]}
    try:
        result = send_command(paths.runtime_dir, command, command_args)
    except NotRunning:
        share, mode = _edit_files(args, ref, paths)
    else:
        (shown,) = [p for p in result.get("projects") or () if p.get("key") == ref.key]
        share, mode = int(shown.get("share", 100)), str(shown.get("mode") or "active")
    print(f"{ref.project}: {describe(share, mode)}", file=out)
    return 0


def _edit_files(args: argparse.Namespace, ref: Any, paths: Any) -> tuple[int, str]:
    """No engine runs: change the project's scheduling file as the engine would."""
    import dataclasses
    import time

    from app.contributor.shares import Mode, level_with, read_schedule, save_schedule
    from app.contributor.task_files import TaskFiles

    folder = paths.project_dir(ref.key, ref.project)
    schedule = read_schedule(folder)
    if args.action == "share":
        schedule = dataclasses.replace(schedule, share=args.value)
    elif args.action is not None:
        mode = Mode(ACTIONS[args.action])
        if mode is Mode.FINISH_THEN_STOP and not TaskFiles(folder).saved_task_id():
            mode = Mode.SUSPENDED  # nothing to finish
        if schedule.mode is Mode.SUSPENDED and mode is not Mode.SUSPENDED:
            others = [
                read_schedule(paths.project_dir(r.key, r.project))
                for r in _store(args).list_projects()
                if r.key != ref.key
            ]
            schedule = level_with(schedule, others, time.time())
        schedule = dataclasses.replace(schedule, mode=mode)
    if args.action is not None:
        save_schedule(folder, schedule)
    return schedule.share, schedule.mode.value
