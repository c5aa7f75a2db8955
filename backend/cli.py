"""``barnraise-backend``: serve, manage projects and invites, verify a project's chain of
versions (``backend.cli_verify``), ban, unban, revoke and roll back (``backend.cli_admin``),
migrate the store's schema and copy SQLite into PostgreSQL (``backend.cli_database``), run
the demo.

Every subcommand takes ``--data DIR`` (default: the platform's user data folder for
``barnraise-backend``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from backend.cli_admin import ADMIN_COMMANDS, add_admin_parsers, run_admin
from backend.cli_database import add_database_parsers, run_database
from backend.cli_sample import add_sample_parser, run_sample
from backend.cli_serve import (
    SERVE_CONFIG_KEYS,
    check_data_dir,
    configured_public_url,
    load_serve_config,
    serve,
)
from backend.cli_store import add_database_url, existing_coordinator
from backend.cli_verify import add_verify_parser, run_verify
from backend.demo_headless import DEMO_HPARAMS as DEMO_HPARAMS
from backend.demo_headless import DEMO_PROJECT as DEMO_PROJECT
from backend.settings import SETTING_HELP, ProjectSettings

# The demo project, re-exported: tests and benches import it from here.
from backend.store.base import StoreOpenError


def _key_values(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {what} {item!r} must look like KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _parser() -> argparse.ArgumentParser:
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder (default: %(default)s → platform data folder)",
    )
    add_database_url(data)
    p = argparse.ArgumentParser(prog="barnraise-backend", description="The Barnraise coordinator.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[data], help="serve the API and pages")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=None, help="port (default 8080; 0: any free port)"
    )
    serve.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve HTTPS")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads running requests (default 16); waiting long polls and slow clients hold none",
    )
    serve.add_argument(
        "--max-connections-per-address",
        type=int,
        default=None,
        metavar="N",
        help="open connections one address may hold (default 256; raise it for a campus "
        "NAT, or behind a proxy that does not set X-Forwarded-For)",
    )
    serve.add_argument(
        "--public-url",
        default=None,
        help="where volunteers reach this server, as pages show it (default: the bind "
        "address; set it behind a proxy or on 0.0.0.0; never taken from a request's Host)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        metavar="ADDRESS_OR_NETWORK",
        help="a load balancer whose X-Forwarded-For names the client (repeatable); from "
        "anyone else the header is ignored",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML file with {', '.join(SERVE_CONFIG_KEYS)} (any other key is refused)",
    )

    project = sub.add_parser("project", help="create and manage projects")
    psub = project.add_subparsers(dest="action", required=True)
    create = psub.add_parser("create", parents=[data], help="create a project")
    create.add_argument("name")
    create.add_argument("hparams", nargs="*", metavar="KEY=VALUE", help="recipe hyperparameters")
    create.add_argument("--recipe", required=True)
    create.add_argument("--strategy", default="fedavg")
    create.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="a recipe hyperparameter"
    )
    create.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--description", default="")
    defaults = ProjectSettings()
    for f in fields(ProjectSettings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            create.add_argument(  # --flag / --no-flag: some default to on (fit_tasks)
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{SETTING_HELP[f.name]} (default {'on' if default else 'off'})",
            )
        else:
            create.add_argument(
                flag,
                dest=f.name,
                type=type(default),
                default=None,
                help=f"{SETTING_HELP[f.name]} (default {default})",
            )
    for action in ("list",):
        psub.add_parser(action, parents=[data], help="list projects")
    change = psub.add_parser(
        "set", parents=[data], help="change a running project's settings where it is safe"
    )
    change.add_argument("name")
    change.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="settings to change")
    change.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE")
    change.add_argument("--reason", default="", help="why, for the page and the action log")
    for action, text in (
        ("show", "show a project"),
        ("pause", "stop handing out tasks"),
        ("resume", "hand out tasks again"),
        ("close", "close for good"),
        ("finish", "finish for good: the current version is the final model"),
    ):
        a = psub.add_parser(action, parents=[data], help=text)
        a.add_argument("name")
        if action == "finish":
            a.add_argument("--reason", default="", help="why, for the page and the action log")

    invite = sub.add_parser("invite", help="invite links")
    isub = invite.add_subparsers(dest="action", required=True)
    ic = isub.add_parser("create", parents=[data], help="create an invite link")
    ic.add_argument("project")
    ic.add_argument("--uses", type=int, default=1, help="how many joins it allows (default 1)")
    ic.add_argument(
        "--public-url",
        "--url",
        dest="public_url",
        default=None,
        help="where volunteers reach the server, as `serve` advertises it (default: public_url, "
        "else host and port, of --config; else serve's default http://127.0.0.1:8080)",
    )
    ic.add_argument(
        "--config", type=Path, default=None, help="the TOML file `serve --config` reads"
    )

    add_verify_parser(sub, data)
    add_admin_parsers(sub, data)
    add_sample_parser(sub, data)
    add_database_parsers(sub, data)

    demo = sub.add_parser(
        "demo",
        parents=[data],
        help="a local project (digits, or a language model) with real contributors",
    )
    demo.add_argument(
        "--rounds", type=int, default=None, help="exit after this many model versions"
    )
    demo.add_argument("--contributors", type=int, default=3)
    demo.add_argument("--mode", choices=("sync", "async"), default="sync")
    demo.add_argument(
        "--recipe",
        choices=("digits-mlp", "byte-lm"),
        default="digits-mlp",
        help="byte-lm: a byte-level language model (tiny preset) trained with DiLoCo",
    )
    demo.add_argument(
        "--until-loss",
        type=float,
        default=None,
        help="end at the first version whose held-out loss is below this (nats)",
    )
    demo.add_argument(
        "--privacy",
        choices=("none", "dp-sgd", "dp-fedavg"),
        default="none",
        help="run the demo project under differential privacy (epsilon 8, delta 1e-5, the "
        "noise calibrated to the rounds); its page shows the epsilon spent",
    )
    demo.add_argument(
        "--contributor-kind",
        choices=("auto", "headless", "in-process"),
        default="auto",
        help="real `barnraise --headless` processes, simple in-process clients, or "
        "auto (headless when the contributor app is installed)",
    )
    demo.add_argument("--port", type=int, default=0)
    demo.add_argument(
        "--json", action="store_true", help="print one JSON summary object at the end"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit status. Output cut short by a closed pipe (``| head``)
    ends quietly, as the Python docs advise (status 1, no traceback)."""
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 1
    return code


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's last flush meets no closed pipe."""
    with contextlib.suppress(OSError, ValueError):  # a test's captured stdout has no fd
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE hyperparameters may follow the options of `project create`.
    if extra:
        if not (
            args.command == "project"
            and args.action == "create"
            and all("=" in e and not e.startswith("-") for e in extra)
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.hparams = [*args.hparams, *extra]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from backend.coordinator import default_data_dir

    data_dir: Path = args.data or default_data_dir()
    try:
        if args.command == "serve":
            return serve(args, data_dir)
        if args.command == "project":
            return _project(args, data_dir)
        if args.command == "invite":
            return _invite(args, data_dir)
        if args.command == "demo":
            return _demo(args)
        if args.command == "verify":
            return run_verify(args, data_dir, sys.stdout)
        if args.command in ADMIN_COMMANDS:
            return run_admin(args, data_dir, sys.stdout)
        if args.command == "sample":
            return run_sample(args, data_dir, sys.stdout)
        if args.command == "database":
            return run_database(args, data_dir, sys.stdout)
    except BrokenPipeError:
        raise
    except (ValueError, OSError, StoreOpenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from backend.errors import HTTPError

        if isinstance(exc, HTTPError):  # e.g. no such project
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        raise
    return 2


def _coordinator(data_dir: Path, database_url: str | None = None) -> Any:
    from backend.coordinator import Coordinator

    return Coordinator(data_dir, start_worker=False, database_url=database_url)


def _project(args: argparse.Namespace, data_dir: Path) -> int:
    if args.action == "create":  # the one project command that may start a coordinator
        check_data_dir(data_dir)
        coordinator = _coordinator(data_dir, args.database_url)
    else:
        coordinator = existing_coordinator(args, data_dir)
    try:
        if args.action == "create":
            hparams = {
                **_key_values(args.hparams, "hyperparameter"),
                **_key_values(args.hp, "hyperparameter"),
            }
            settings = {
                f.name: getattr(args, f.name)
                for f in fields(ProjectSettings)
                if getattr(args, f.name) is not None
            }
            params: dict[str, Any] = {}
            for k, v in _key_values(args.strategy_param, "strategy parameter").items():
                params[k] = _number(v)
            record = coordinator.create_project(
                args.name,
                recipe=args.recipe,
                strategy=args.strategy,
                strategy_params=params,
                hparams=hparams,
                settings=settings,
                description=args.description,
                warn=lambda text: print(f"warning: {text}", file=sys.stderr),
            )
            print(json.dumps(coordinator.project_view(record), indent=2))
            _print_next_steps(args, record.name, record.settings.get("invite_required", False))
        elif args.action == "list":
            for p in coordinator.projects():
                print(
                    f"{p.name}\t{p.status}\t{p.recipe}\t{p.settings.get('mode')}\tversion {p.current_version}"
                )
        elif args.action == "show":
            record = coordinator.project(args.name)
            print(
                json.dumps(
                    {
                        **coordinator.project_view(record),
                        "settings": record.settings,
                        "stats": coordinator.stats(record),
                    },
                    indent=2,
                )
            )
        elif args.action == "set":
            changes = _key_values(args.settings, "setting")
            record = coordinator.change_project(
                args.name,
                {k.replace("-", "_"): v for k, v in changes.items()},
                _key_values(args.hp, "hyperparameter"),
                args.reason,
            )
            print(json.dumps({"settings": record.settings, "hparams": record.hparams}, indent=2))
        elif args.action == "finish":
            record = coordinator.finish(args.name, args.reason)
            print(f"{record.name}: finished at version {record.current_version}")
        else:
            status = {"pause": "paused", "resume": "open", "close": "closed"}[args.action]
            record = coordinator.set_status(args.name, status)
            print(f"{record.name}: {record.status}")
    except Exception as exc:
        from backend.errors import HTTPError

        if isinstance(exc, HTTPError):
            raise ValueError(exc.message) from None
        raise
    finally:
        coordinator.close()
    return 0


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _data_flags(args: argparse.Namespace) -> str:
    """The ``--data``/``--database-url`` options to repeat in a suggested command."""
    flags = f" --data {args.data}" if args.data else ""
    return flags + (" --database-url URL" if args.database_url else "")


def _print_next_steps(args: argparse.Namespace, name: str, invite_required: bool) -> None:
    """After ``project create``: how to serve it and how volunteers join (on stderr, so
    stdout stays the project's JSON)."""
    from backend.wsgi import DEFAULT_PUBLIC_URL

    data = _data_flags(args)
    page = f"{DEFAULT_PUBLIC_URL}/p/{name}"
    join = (
        f"give each volunteer a link from `barnraise-backend invite create {name}{data}`; "
        "they run `barnraise join 'LINK'`"
        if invite_required
        else f"volunteers run `barnraise join {page}` (or open the page)"
    )
    print(
        f"next steps:\n"
        f"  1. serve it: barnraise-backend serve{data} (add --public-url URL where volunteers "
        "reach it from elsewhere)\n"
        f"  2. its page: {page}\n"
        f"  3. {join}",
        file=sys.stderr,
    )


def _invite(args: argparse.Namespace, data_dir: Path) -> int:
    if args.uses < 1:
        raise ValueError(f"--uses must be at least 1, got {args.uses}")
    base = configured_public_url(load_serve_config(args.config), public_url=args.public_url)
    coordinator = existing_coordinator(args, data_dir)
    try:
        code = coordinator.create_invite(args.project, max_uses=args.uses)
    finally:
        coordinator.close()
    page = f"{base}/p/{args.project}"
    print(f"barnraise://join?url={quote(page, safe='')}&invite={code}")
    print(f"{page}?invite={code}")
    print(
        f"volunteers run `barnraise join 'LINK'` with either link (quoted: it holds '&'), or "
        f"open the second; both assume the server is reached at {base}",
        file=sys.stderr,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from backend.demo import run_demo

    data_dir = args.data or Path(tempfile.mkdtemp(prefix="barnraise-demo-"))
    summary = run_demo(
        data_dir,
        rounds=args.rounds,
        contributors=args.contributors,
        mode=args.mode,
        port=args.port,
        out=None if args.json else sys.stdout,
        kind=args.contributor_kind,
        privacy=args.privacy,
        recipe=args.recipe,
        until_loss=args.until_loss,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        accuracy, loss = summary["final_accuracy"], summary["final_loss"]
        final = (
            f"final validation loss {'n/a' if loss is None else f'{loss:.3f}'}"
            if summary["recipe"] == "byte-lm"
            else f"final accuracy {'n/a' if accuracy is None else f'{accuracy:.3f}'}"
        )
        print(
            f"{'done' if summary['ok'] else 'FAILED'}: {summary['versions']} versions in "
            f"{summary['seconds']:.1f} s, {final}, "
            f"{summary['contributors']} contributors, {summary['updates_accepted']} updates accepted, "
            f"{summary['updates_rejected']} rejected, {summary['total_credit']:,.1f} "
            f"{summary['credit_unit']} credited; data in {summary['data_dir']}"
        )
        for error in summary["client_errors"]:
            print(f"contributor error: {error}", file=sys.stderr)
    return 0 if summary.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
