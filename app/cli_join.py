"""`barnraise join`, `leave` and `trust`: the commands that change which projects this
computer contributes to, and which keys it accepts."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any, TextIO

from app.cli_common import EXIT_FAILED, EXIT_USAGE, _paths, _store

__all__ = ["cmd_join", "cmd_leave", "cmd_trust"]


def cmd_join(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor.control import ControlError, send_command
    from app.contributor.joining import (
        already_joined,
        complete_join,
        preview_join,
        save_consent,
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
    save_consent(_paths(), creds, preview)
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
