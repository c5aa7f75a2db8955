"""Launching the tray app from `barnraise`: plain `barnraise`, tray-only options
(autostart's `--minimized`) and clicked `barnraise://` invite links."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from app.cli_common import EXIT_USAGE, _apply_dirs

__all__ = ["TRAY_ONLY_OPTIONS", "tray_arguments"]


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

COMMANDS = frozenset(
    {"join", "leave", "status", "pause", "resume", "snooze", "retry", "trust", "verify"}
)
"""The `barnraise` subcommands: a link after one is that command's argument, not the tray's."""


def tray_arguments(argv: Sequence[str]) -> list[str] | None:
    """This launch's arguments for the tray, if the launch is for the tray.

    Desktop entries run `barnraise %u` for a clicked `barnraise://join?...` invite link, which
    becomes `--join LINK`; tray-only options (autostart's `--minimized`) go to the tray as is.
    """
    if _command_before_link(argv):
        return None  # `barnraise join barnraise://join?...`: the command takes the link
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


def _command_before_link(argv: Sequence[str]) -> bool:
    """Whether a subcommand (``join``) comes before the first ``barnraise:`` link."""
    for arg in argv:
        if arg.startswith("barnraise:"):
            return False
        if arg in COMMANDS:
            return True
    return False


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
