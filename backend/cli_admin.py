"""``barnraise-backend ban | unban | revoke | rollback | actions``: the organiser's actions on
a project (``backend.services.admin``), each recorded in its action log and shown on its page.

    barnraise-backend ban      --data DIR --project P --client ID [--revoke] --reason TEXT
    barnraise-backend unban    --data DIR --project P --client ID --reason TEXT
    barnraise-backend revoke   --data DIR --project P --update ID --reason TEXT
    barnraise-backend rollback --data DIR --project P --to N --reason TEXT
    barnraise-backend actions  --data DIR --project P [--limit N] [--json]

A client or update id may be given whole or by a unique prefix of at least 4 characters
(the page shows each contributor's first 6 after a ``#``; an id may start with ``-``:
give it as ``--client=ID``). Prints what the action changed;
exit status 0 when done, 2 when it cannot be taken as asked (the message says why).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from backend.store import ActionRecord

ADMIN_COMMANDS = frozenset({"ban", "unban", "revoke", "rollback", "actions"})

_REASON_HELP = "why (required): recorded and shown on the project page"


def add_admin_parsers(sub: Any, data: argparse.ArgumentParser) -> None:
    """The organiser's subcommands, on the CLI's subparsers (``data`` gives ``--data``)."""
    ban = sub.add_parser("ban", parents=[data], help="ban a contributor from a project")
    unban = sub.add_parser("unban", parents=[data], help="lift a contributor's ban")
    revoke = sub.add_parser("revoke", parents=[data], help="take back one update's credit")
    rollback = sub.add_parser(
        "rollback", parents=[data], help="publish an earlier version's model as a new version"
    )
    actions = sub.add_parser("actions", parents=[data], help="list a project's organiser actions")
    for p in (ban, unban, revoke, rollback, actions):
        p.add_argument("--project", required=True, help="the project name")
    for p in (ban, unban):
        p.add_argument(
            "--client",
            required=True,
            help="the client id, or a unique prefix (as on the page); --client=ID for one "
            "that starts with '-'",
        )
    ban.add_argument(
        "--revoke",
        action="store_true",
        help="also revoke all its credit and set aside its updates not aggregated yet",
    )
    revoke.add_argument(
        "--update",
        required=True,
        help="the update id, or a unique prefix; --update=ID for one that starts with '-'",
    )
    rollback.add_argument(
        "--to", type=int, required=True, metavar="N", help="the version whose model to restore"
    )
    for p in (ban, unban, revoke, rollback):
        p.add_argument("--reason", required=True, help=_REASON_HELP)
    actions.add_argument("--limit", type=int, default=None, metavar="N", help="the newest N")
    actions.add_argument("--json", action="store_true", help="print them as a JSON list")


def run_admin(args: argparse.Namespace, data_dir: Path, out: TextIO) -> int:
    from backend.cli_store import existing_coordinator

    coordinator = existing_coordinator(args, data_dir)
    try:
        project = coordinator.project(args.project)
        admin = coordinator.services.admin
        if args.command == "actions":
            _print_actions(admin.actions(project, args.limit), args.json, out)
            return 0
        if args.command == "ban":
            record = admin.ban(project, args.client, args.reason, revoke=args.revoke)
        elif args.command == "unban":
            record = admin.unban(project, args.client, args.reason)
        elif args.command == "revoke":
            record = admin.revoke_update(project, args.update, args.reason)
        else:
            record = admin.rollback(project, args.to, args.reason)
        print(f"{project.name}: {record.action} {record.target} (action {record.id})", file=out)
        print(f"  {record.detail}", file=out)
        return 0
    except Exception as exc:
        from backend.errors import HTTPError

        if isinstance(exc, HTTPError):
            raise ValueError(exc.message) from None
        raise
    finally:
        coordinator.close()


def _print_actions(records: list[ActionRecord], as_json: bool, out: TextIO) -> None:
    if as_json:
        rows = [
            {
                "id": r.id,
                "at": int(r.at),
                "action": r.action,
                "target": r.target,
                "reason": r.reason,
                "detail": r.detail,
            }
            for r in records
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False), file=out)
        return
    if not records:
        print("no organiser actions yet", file=out)
    for r in records:
        when = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"{r.id}\t{when}\t{r.action}\t{r.target}\t{r.reason}", file=out)
        print(f"\t{r.detail}", file=out)
