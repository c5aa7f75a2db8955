"""`barnraise`: join projects and contribute from the command line (the tray's engine, headless).

    barnraise join URL|INVITE [--name NAME] [--team TEAM] [--yes] [--data PATH]
    barnraise leave PROJECT
    barnraise --headless                 run until stopped (Ctrl-C / SIGTERM: clean stop)
    barnraise status [--json]
    barnraise pause | resume | snooze [DURATION]
    barnraise retry                      ask for work now (after "can't reach the server")
    barnraise trust PROJECT --fingerprint FP   accept a project's new key (after checking it)
    barnraise project PROJECT [share N | suspend | resume | no-new-tasks | finish-then-stop]
                                         a project's resource share and mode (none: show them)
    barnraise verify --server URL --project P --receipt FILE_OR_JSON [--version N]
                                         prove a receipt's update is in a signed version
    barnraise --version
    barnraise                            the tray app (when installed)

Common options (also as environment variables): --data-dir (BARNRAISE_DATA_DIR),
--config-dir (BARNRAISE_CONFIG_DIR), --credentials FILE (BARNRAISE_CREDENTIALS),
--insecure. Run several contributors side by side with different --data-dir/--config-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from app.cli_common import (
    CREDENTIALS_ENV,
    EXIT_FAILED,
    EXIT_USAGE,
    _apply_dirs,
    _paths,
    _store,
    log,
)
from app.cli_headless import run_headless
from app.cli_join import cmd_join, cmd_leave, cmd_trust
from app.cli_parser import build_parser
from app.cli_project import cmd_project
from app.cli_project import describe as describe_schedule
from app.cli_tray import TRAY_ONLY_OPTIONS, _run_tray_launch, _start_tray, tray_arguments
from app.cli_verify import cmd_verify

if TYPE_CHECKING:
    from app.contributor.snapshot import EngineSnapshot

__all__ = [
    "CREDENTIALS_ENV",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "TRAY_ONLY_OPTIONS",
    "build_parser",
    "cmd_join",
    "cmd_leave",
    "cmd_status",
    "cmd_trust",
    "main",
    "parse_duration",
    "run_headless",
    "tray_arguments",
]

DEFAULT_SNOOZE = timedelta(hours=1)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> timedelta:
    """``90`` (minutes), ``45s``, ``30m``, ``2h``, ``1d`` → timedelta; ValueError otherwise."""
    match = _DURATION_RE.match(text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 30m, 2h, 45s or 1d")
    value, unit = float(match.group(1)), match.group(2) or "m"
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    return timedelta(seconds=seconds)


# --------------------------------------------------------------------------- commands


def _format_status(snapshot: EngineSnapshot) -> str:
    lines = [
        f"state: {snapshot.state_text}" + (f" ({snapshot.project})" if snapshot.project else "")
    ]
    if snapshot.decision:
        lines.append(f"policy: {snapshot.decision.summary}")
    task = snapshot.task
    if task:
        total = task.total_steps or 0
        pct = f" {100 * task.step / total:.0f}%" if total else ""
        lines.append(f"task: {task.task_id} of {task.project}{pct}")
    limits = snapshot.limits
    if limits:
        lines.append(f"limits: {limits.cpu_cores} core(s) at {limits.cpu_percent:.0f}%")
    for p in snapshot.projects:
        rank = f", rank {p.rank}" if p.rank else ""
        lines.append(
            f"  {p.project} ({p.server_url}): {p.tasks} tasks, {p.examples} examples, "
            f"{p.compute_seconds:.1f} s, credit {p.credit:.2f} {p.credit_unit}{rank}, "
            + describe_schedule(p.share, p.mode)
        )
        if p.privacy:
            lines.append(f"    privacy: {p.privacy}")
    if snapshot.last_error:
        lines.append(f"last error: {snapshot.last_error}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import NotRunning, send_command
    from app.contributor.snapshot import EngineSnapshot, ProjectSnapshot

    paths = _paths()
    try:
        snapshot = EngineSnapshot.from_json(send_command(paths.runtime_dir, "status"))
    except NotRunning:
        from app.contributor.ledger import Ledger
        from app.contributor.privacy import summary as privacy_summary
        from app.contributor.shares import ProjectSchedule, read_schedule

        ledger = Ledger(paths.ledger_path)
        try:
            refs = _store(args).list_projects()
        except Exception as exc:
            refs = []
            log.warning("cannot list projects: %s", exc)
        projects = []
        for ref in refs:
            t = ledger.totals(ref.key)
            folder = paths.project_dir(ref.key, ref.project)
            try:
                schedule = read_schedule(folder)
            except ValueError as exc:
                log.warning("%s", exc)
                schedule = ProjectSchedule()
            projects.append(
                ProjectSnapshot(
                    key=ref.key,
                    project=ref.project,
                    server_url=ref.server_url,
                    tasks=t.tasks,
                    examples=t.examples,
                    compute_seconds=t.compute_seconds,
                    credit=t.credit,
                    credit_unit=t.credit_unit,
                    rank=None,
                    privacy=privacy_summary(folder),
                    share=schedule.share,
                    mode=schedule.mode.value,
                )
            )
        snapshot = EngineSnapshot.not_running(tuple(projects))
    if args.json:
        print(json.dumps(snapshot.to_json(), indent=2, sort_keys=True, default=str), file=out)
    else:
        print(_format_status(snapshot), file=out)
    return 0


def cmd_remote(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import NotRunning, send_command

    command_args: dict[str, Any] = {}
    if args.command == "snooze":
        command_args["seconds"] = parse_duration(args.duration).total_seconds()
    try:
        result = send_command(_paths().runtime_dir, args.command, command_args)
    except NotRunning as exc:
        print(f"barnraise: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "snooze":
        print(f"snoozed until {result['until']}", file=out)
    else:
        from app.contributor.snapshot import EngineSnapshot

        print(_format_status(EngineSnapshot.from_json(result)), file=out)
    return 0


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command; its exit status. Output cut short by a closed pipe (``| head``)
    ends quietly, as the Python docs advise (status 1, no traceback)."""
    try:
        code = _main(argv, out=out)
        (out or sys.stdout).flush()
    except BrokenPipeError:
        # So the interpreter's last flush of stdout meets no closed pipe (a test's captured
        # stdout has no file descriptor: nothing to do).
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


def _main(argv: Sequence[str] | None, *, out: TextIO | None) -> int:
    out = out or sys.stdout
    tray_args = tray_arguments(sys.argv[1:] if argv is None else argv)
    if tray_args is not None:
        return _run_tray_launch(tray_args, out)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s"
        if args.verbose
        else "%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if args.verbose == 0:
        for noisy in ("urllib3", "apscheduler", "app.contributor.client"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    _apply_dirs(args)
    from app.contributor.client import ClientError
    from app.contributor.control import ControlError
    from app.contributor.credentials import CredentialsError
    from app.contributor.invites import InviteError
    from app.contributor.ledger import LedgerError
    from app.contributor.settings import SettingsError

    commands = {
        "join": cmd_join,
        "leave": cmd_leave,
        "status": cmd_status,
        "pause": cmd_remote,
        "resume": cmd_remote,
        "snooze": cmd_remote,
        "retry": cmd_remote,
        "trust": cmd_trust,
        "project": cmd_project,
        "verify": cmd_verify,
    }
    try:
        if args.command is not None:
            return commands[args.command](args, out)
        if args.headless:
            return run_headless(args, out)
        return _start_tray(args, out)
    except (
        ClientError,
        ControlError,
        CredentialsError,
        InviteError,
        LedgerError,
        SettingsError,
        ValueError,
    ) as exc:
        print(f"barnraise: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
