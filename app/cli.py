"""`barnraise`: join projects and contribute from the command line (the tray's engine, headless).

    barnraise join URL|INVITE [--name NAME] [--team TEAM] [--yes] [--data PATH]
    barnraise leave PROJECT
    barnraise --headless                 run until stopped (Ctrl-C / SIGTERM: clean stop)
    barnraise status [--json]
    barnraise pause | resume | snooze [DURATION]
    barnraise retry                      ask for work now (after "can't reach the server")
    barnraise trust PROJECT --fingerprint FP   accept a project's new key (after checking it)
    barnraise --version
    barnraise                            the tray app (when installed)

Common options (also as environment variables): --data-dir (BARNRAISE_DATA_DIR),
--config-dir (BARNRAISE_CONFIG_DIR), --credentials FILE (BARNRAISE_CREDENTIALS),
--insecure. Run several contributors side by side with different --data-dir/--config-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

__all__ = ["main", "parse_duration"]

CREDENTIALS_ENV = "BARNRAISE_CREDENTIALS"
DEFAULT_SNOOZE = timedelta(hours=1)
EXIT_USAGE = 2
EXIT_FAILED = 1

log = logging.getLogger("barnraise")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("barnraise")
    except PackageNotFoundError:
        return "unknown"


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


# --------------------------------------------------------------------------- arguments


def _common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    default = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--data-dir", type=Path, default=default, help="data folder (ledger, cache, control socket)"
    )
    parser.add_argument(
        "--config-dir", type=Path, default=default, help="config folder (settings, project index)"
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        default=default,
        metavar="FILE",
        help="keep keys and tokens in this private file instead of the OS keychain",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="allow plain http:// to machines other than this one",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if defaults else argparse.SUPPRESS,
        help="more log output",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barnraise",
        description="Contribute your computer's spare time to federated training projects.",
    )
    parser.add_argument("--version", action="version", version=f"barnraise {_version()}")
    parser.add_argument(
        "--headless", action="store_true", help="run the contributor without the tray until stopped"
    )
    parser.add_argument("--lease-wait", type=float, default=25.0, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-interval", type=float, default=None, help=argparse.SUPPRESS)
    _common(parser, defaults=True)
    sub = parser.add_subparsers(dest="command")

    join = sub.add_parser("join", help="join a project from its page URL or an invite link")
    join.add_argument(
        "target", help="https://HOST/p/NAME, an invite link, or a barnraise://join link"
    )
    join.add_argument("--name", help="display name shown on the project's leaderboard")
    join.add_argument("--team", help="team name shown on the leaderboard")
    join.add_argument("--data", help="your data file, for projects that train on local data")
    join.add_argument("--yes", action="store_true", help="consent without asking (scripts)")
    _common(join, defaults=False)

    leave = sub.add_parser("leave", help="leave a project and delete its keys")
    leave.add_argument("project", help="the project name (or its page URL)")
    _common(leave, defaults=False)

    status = sub.add_parser("status", help="what the running contributor is doing")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _common(status, defaults=False)

    trust = sub.add_parser(
        "trust", help="accept the new key of a project whose organiser changed it"
    )
    trust.add_argument("project", help="the project name (or its page URL)")
    trust.add_argument(
        "--fingerprint",
        required=True,
        help="the new key's fingerprint, as the organiser gave it to you (checked, not trusted)",
    )
    _common(trust, defaults=False)

    for name, text in (
        ("pause", "pause computing"),
        ("resume", "resume computing"),
        ("retry", "ask the coordinators for work now instead of after the backoff"),
    ):
        _common(sub.add_parser(name, help=text), defaults=False)
    snooze = sub.add_parser("snooze", help="pause for a while (default 1h)")
    snooze.add_argument("duration", nargs="?", default="1h", help="e.g. 30m, 2h, 45s (default 1h)")
    _common(snooze, defaults=False)
    return parser


def _apply_dirs(args: argparse.Namespace) -> None:
    # Environment variables so every module (settings, credentials index) sees the same folders.
    from app.contributor.paths import DATA_DIR_ENV
    from app.contributor.settings import CONFIG_DIR_ENV

    if args.data_dir is not None:
        os.environ[DATA_DIR_ENV] = str(args.data_dir)
    if args.config_dir is not None:
        os.environ[CONFIG_DIR_ENV] = str(args.config_dir)
    if args.credentials is None and os.environ.get(CREDENTIALS_ENV):
        args.credentials = Path(os.environ[CREDENTIALS_ENV])


def _paths() -> Any:
    from app.contributor.paths import EnginePaths

    return EnginePaths.default()


def _store(args: argparse.Namespace) -> Any:
    from app.contributor.credentials import open_credential_store

    return open_credential_store(args.credentials)


# --------------------------------------------------------------------------- commands


def cmd_join(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import ControlError, send_command
    from app.contributor.joining import (
        already_joined,
        complete_join,
        preview_join,
        save_project_data_path,
    )

    if not args.yes:
        # An invite link clicked while the tray runs: let its join dialog ask for consent.
        try:
            send_command(_paths().runtime_dir, "open_join", {"url": args.target}, timeout=3.0)
        except ControlError:
            pass  # nobody is running (or it cannot open dialogs): join here, in the terminal
        else:
            print("opened in the running Barnraise window", file=out)
            return 0
    preview = preview_join(args.target, insecure=args.insecure)
    interactive = sys.stdin.isatty() and not args.yes
    name = args.name
    if not name:
        suggestion = f"volunteer-{secrets.token_hex(2)}"
        name = (
            input(f"Display name for the leaderboard [{suggestion}]: ").strip()
            if interactive
            else ""
        ) or suggestion
    data_path = os.path.abspath(args.data) if args.data else None
    if preview.data_mode == "local" and not data_path:
        print(
            "this project trains on your own data: pass --data PATH (the file never leaves this machine)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    existing = already_joined(preview, _store(args))
    if existing is not None:
        print(
            f"This computer already joined {preview.target.project} (client {existing.client_id}). "
            "Joining again keeps that identity and its credit; only the display name and team "
            "are updated. To start afresh instead, `barnraise leave` the project first.",
            file=out,
        )
    for line in preview.disclosure(display_name=name, team=args.team, data_path=data_path):
        print(line, file=out)
    if not args.yes:
        if not sys.stdin.isatty():
            print("not joined: consent is needed; run in a terminal or pass --yes", file=sys.stderr)
            return EXIT_USAGE
        answer = input("Join this project? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not joined", file=out)
            return EXIT_FAILED
    creds = complete_join(
        preview, _store(args), display_name=name, team=args.team, insecure=args.insecure
    )
    if data_path:
        save_project_data_path(_paths(), creds.key, creds.project, data_path)
    print(
        f"joined {creds.project} at {creds.server_url} as {name!r} (client {creds.client_id})",
        file=out,
    )
    print("run `barnraise --headless` (or the tray app) to start contributing", file=out)
    return 0


def _find_project(store: Any, text: str) -> Any:
    from app.contributor.invites import InviteError, parse_join_target

    refs = store.list_projects()
    try:
        target = parse_join_target(text)
        matches = [
            r
            for r in refs
            if r.project == target.project
            and r.server_url.rstrip("/") == target.server_url.rstrip("/")
        ]
    except InviteError:
        matches = [r for r in refs if r.project == text or r.key == text]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(r.project for r in refs) or "none"
        raise SystemExit(f"barnraise: you have not joined {text!r} (joined: {known})")
    raise SystemExit(
        f"barnraise: {text!r} is ambiguous; give the page URL: " + ", ".join(r.key for r in matches)
    )


def cmd_leave(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import NotRunning, send_command

    store = _store(args)
    ref = _find_project(store, args.project)
    paths = _paths()
    try:
        send_command(paths.runtime_dir, "leave", {"key": ref.key})
    except NotRunning:
        from app.contributor.controller import Controller

        controller = Controller(credentials=store, paths=paths)
        controller.leave(ref.key)
    print(f"left {ref.project} ({ref.server_url}); its keys were deleted", file=out)
    return 0


def _format_status(snapshot: dict[str, Any]) -> str:
    lines = [
        f"state: {snapshot['state']}"
        + (f" ({snapshot['project']})" if snapshot.get("project") else "")
    ]
    decision = snapshot.get("decision")
    if decision:
        lines.append(f"policy: {decision['summary']}")
    task = snapshot.get("task")
    if task:
        total = task.get("total_steps") or 0
        pct = f" {100 * task.get('step', 0) / total:.0f}%" if total else ""
        lines.append(f"task: {task['task_id']} of {task['project']}{pct}")
    limits = snapshot.get("limits")
    if limits:
        lines.append(f"limits: {limits['cpu_cores']} core(s) at {limits['cpu_percent']:.0f}%")
    for p in snapshot.get("projects", []):
        rank = f", rank {p['rank']}" if p.get("rank") else ""
        lines.append(
            f"  {p['project']} ({p['server_url']}): {p['tasks']} tasks, {p['examples']} examples, "
            f"{p['compute_seconds']:.1f} s, credit {p['credit']:.2f} {p['credit_unit']}{rank}"
        )
    if snapshot.get("last_error"):
        lines.append(f"last error: {snapshot['last_error']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import NotRunning, send_command

    paths = _paths()
    try:
        snapshot = send_command(paths.runtime_dir, "status")
    except NotRunning:
        from app.contributor.ledger import Ledger

        ledger = Ledger(paths.ledger_path)
        try:
            refs = _store(args).list_projects()
        except Exception as exc:
            refs = []
            log.warning("cannot list projects: %s", exc)
        snapshot = {"state": "not running", "projects": []}
        for ref in refs:
            t = ledger.totals(ref.key)
            snapshot["projects"].append(
                {
                    "key": ref.key,
                    "project": ref.project,
                    "server_url": ref.server_url,
                    "tasks": t.tasks,
                    "examples": t.examples,
                    "compute_seconds": t.compute_seconds,
                    "credit": t.credit,
                    "credit_unit": t.credit_unit,
                    "rank": None,
                }
            )
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True, default=str), file=out)
    else:
        print(_format_status(snapshot), file=out)
    return 0


def cmd_trust(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import NotRunning, send_command
    from app.contributor.joining import accept_new_key, detect_key_change

    store = _store(args)
    ref = _find_project(store, args.project)
    try:
        send_command(
            _paths().runtime_dir, "trust", {"key": ref.key, "fingerprint": args.fingerprint}
        )
    except NotRunning:
        creds = store.load(ref.key)
        change = detect_key_change(creds, insecure=args.insecure) if creds else None
        if change is None:
            print(f"{ref.project}: the coordinator still signs with the pinned key", file=out)
            return 0
        if change.new_fingerprint != args.fingerprint.strip():
            print(
                f"barnraise: {ref.project} now signs with {change.new_fingerprint}, not "
                f"{args.fingerprint!r}; nothing was changed",
                file=sys.stderr,
            )
            return EXIT_FAILED
        accept_new_key(store, creds, change)
    print(f"{ref.project}: the new key is pinned; your identity and credit are kept", file=out)
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
        print(_format_status(result), file=out)
    return 0


# --------------------------------------------------------------------------- headless


class _Printer:
    """Shows engine events: one updating line in a terminal, log lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._lock = threading.Lock()
        self._line = ""

    def __call__(self, event: Any) -> None:
        from app.contributor import events as ev

        with self._lock:
            if isinstance(event, ev.Progress):
                if self.tty:
                    width = 24
                    filled = int(width * event.fraction)
                    bar = "█" * filled + "·" * (width - filled)
                    self._show(
                        f"[{event.project}] {bar} {100 * event.fraction:3.0f}% step {event.step}/{event.total_steps} "
                        f"loss {event.loss:.3f} {event.examples_per_second:.0f} ex/s"
                    )
                return
            if isinstance(event, ev.StateChanged):
                text = f"{event.state.value}" + (f" [{event.project}]" if event.project else "")
                if event.reasons:
                    text += ": " + ", ".join(event.reasons)
            elif isinstance(event, ev.TaskFinished):
                verdict = "accepted" if event.accepted else "rejected"
                text = (
                    f"[{event.project}] task {event.task_id} {verdict}: {event.num_examples} examples, "
                    f"{event.compute_seconds:.2f}s, credit {event.credit:.2f}"
                )
            elif isinstance(event, ev.CreditUpdated):
                text = f"[{event.project}] total credit {event.credit:.2f} {event.credit_unit} over {event.tasks} tasks"
            elif isinstance(event, ev.PolicyChanged):
                text = f"policy: {event.action}" + (
                    " (" + ", ".join(event.reasons) + ")" if event.reasons else ""
                )
            elif isinstance(event, ev.Error):
                text = f"error: {event.message}"
            else:  # pragma: no cover - future events
                text = str(event)
            self._log(text)

    def _show(self, text: str) -> None:
        pad = max(0, len(self._line) - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._line = text

    def _log(self, text: str) -> None:
        if self.tty:
            if self._line:
                self.stream.write("\r" + " " * len(self._line) + "\r")
                self._line = ""
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            log.info("%s", text)


def run_headless(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import ControlError, ControlServer
    from app.contributor.controller import Controller, EngineOptions
    from app.contributor.settings import load_settings

    paths = _paths()
    settings = load_settings()
    store = _store(args)
    options = EngineOptions(
        insecure=args.insecure,
        lease_wait_s=args.lease_wait,
        checkpoint_interval_s=args.checkpoint_interval,
    )
    controller = Controller(credentials=store, paths=paths, settings=settings, options=options)

    def handle(command: str, command_args: Mapping[str, Any]) -> Any:
        if command == "leave":
            controller.leave(str(command_args["key"]))
            return {"left": command_args["key"]}
        return controller.handle_command(command, command_args)

    control = ControlServer(paths.runtime_dir, handle)
    try:
        control.start()
    except ControlError as exc:
        print(f"barnraise: {exc}", file=sys.stderr)
        return EXIT_FAILED
    unsubscribe = controller.subscribe(_Printer(out))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s; stopping (checkpoint, give the task back)", signal.Signals(signum).name
        )
        controller.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not store.list_projects():
            log.info(
                "no project joined yet: run `barnraise join URL` (this keeps running and picks it up)"
            )
        controller.start()
        while not controller.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        unsubscribe()
        control.close()
    if controller.failure is not None:
        # Stopped by an error, not asked to: non-zero, so a service manager restarts us.
        print(f"barnraise: the engine stopped: {controller.failure}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _start_tray(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from app.tray import main as tray_main  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        print(
            "barnraise: the tray app is not available here. Use:\n"
            "  barnraise join https://HOST/p/PROJECT   to join a project\n"
            "  barnraise --headless                    to contribute without the tray\n"
            "  barnraise --help                        for everything else",
            file=out,
        )
        return EXIT_USAGE
    result: int = tray_main()
    return result


TRAY_ONLY_OPTIONS = (
    "--show",
    "--minimized",
    "--join",
    "--self-test",
    "--quit-after",
    "--ready-file",
)
"""Options only the tray knows: autostart entries start `barnraise --minimized`."""


def tray_arguments(argv: Sequence[str]) -> list[str] | None:
    """This launch's arguments for the tray, if the launch is for the tray.

    Desktop entries run `barnraise %u` for a clicked `barnraise://join?...` invite link, which
    becomes `--join LINK`; tray-only options (autostart's `--minimized`) go to the tray as is.
    """
    translated: list[str] = []
    for_tray = False
    for arg in argv:
        if arg.startswith("barnraise:"):
            translated += ["--join", arg]
            for_tray = True
        else:
            translated.append(arg)
            for_tray = for_tray or arg.split("=", 1)[0] in TRAY_ONLY_OPTIONS
    return translated if for_tray else None


def _run_tray_launch(tray_args: list[str], out: TextIO) -> int:
    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument("--data-dir", type=Path, default=None)
    folders.add_argument("--config-dir", type=Path, default=None)
    known, rest = folders.parse_known_args(tray_args)
    known.credentials = None
    _apply_dirs(known)
    if known.credentials is not None and "--credentials" not in rest:
        rest += ["--credentials", str(known.credentials)]
    try:
        from app.tray import main as tray_main  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        print("barnraise: the tray app is not available here; see `barnraise --help`", file=out)
        return EXIT_USAGE
    result: int = tray_main(rest)
    return result


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
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
