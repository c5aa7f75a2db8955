"""The `barnraise` argument parser (see ``app.cli`` for the commands it names)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli_project import add_project_parser
from app.cli_verify import add_verify_parser

__all__ = ["build_parser"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("barnraise")
    except PackageNotFoundError:
        return "unknown"


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
    add_project_parser(sub, _common)
    add_verify_parser(sub, _common)
    return parser
