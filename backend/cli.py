"""``barnraise-backend``: serve, manage projects and invites, verify a project's chain of
versions (``backend.cli_verify``), ban, unban, revoke and roll back (``backend.cli_admin``),
run the demo.

Every subcommand takes ``--data DIR`` (default: the platform's user data folder for
``barnraise-backend``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

# The demo project, re-exported: tests and benches import it from here.
from backend.cli_admin import ADMIN_COMMANDS, add_admin_parsers, run_admin
from backend.cli_sample import add_sample_parser, run_sample
from backend.cli_store import add_database_url
from backend.cli_verify import add_verify_parser, run_verify
from backend.demo_headless import DEMO_HPARAMS as DEMO_HPARAMS
from backend.demo_headless import DEMO_PROJECT as DEMO_PROJECT
from backend.settings import SETTING_HELP, ProjectSettings


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
        help="TOML file with host, port, tls_cert, tls_key, threads, rate, burst, "
        "public_url, trusted_proxies, max_connections_per_address",
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
    for action, text in (
        ("show", "show a project"),
        ("pause", "stop handing out tasks"),
        ("resume", "hand out tasks again"),
        ("close", "close for good"),
    ):
        a = psub.add_parser(action, parents=[data], help=text)
        a.add_argument("name")

    invite = sub.add_parser("invite", help="invite links")
    isub = invite.add_subparsers(dest="action", required=True)
    ic = isub.add_parser("create", parents=[data], help="create an invite link")
    ic.add_argument("project")
    ic.add_argument("--uses", type=int, default=1, help="how many joins it allows (default 1)")
    ic.add_argument("--url", default="http://127.0.0.1:8080", help="the server's public base URL")

    add_verify_parser(sub, data)
    add_admin_parsers(sub, data)
    add_sample_parser(sub, data)

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
            return _serve(args, data_dir)
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
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


def _coordinator(data_dir: Path, database_url: str | None = None) -> Any:
    from backend.coordinator import Coordinator

    return Coordinator(data_dir, start_worker=False, database_url=database_url)


def _serve(args: argparse.Namespace, data_dir: Path) -> int:
    from backend.server import DEFAULT_THREADS, bound_port, freeze_startup_heap, make_server
    from backend.serving import ServerLimits
    from backend.throttle import parse_proxies
    from backend.wsgi import DEFAULT_BURST, DEFAULT_RATE, bind_url, check_public_url, create_app

    config: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as f:
            config = tomllib.load(f)
    host = args.host or config.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(config.get("port", 8080))
    threads = args.threads or int(config.get("threads", DEFAULT_THREADS))
    cert = args.tls_cert or config.get("tls_cert")
    key = args.tls_key or config.get("tls_key")
    public_url = args.public_url or config.get("public_url")
    if public_url:
        public_url = check_public_url(str(public_url))  # before anything is opened or bound
    proxies = args.trusted_proxy or list(config.get("trusted_proxies", []))
    parse_proxies(proxies)  # a bad one is refused before anything is opened or bound
    app = create_app(
        data_dir,
        rate=config.get("rate", DEFAULT_RATE),
        burst=config.get("burst", DEFAULT_BURST),
        trusted_proxies=proxies,
        database_url=args.database_url,
    )
    per_address = args.max_connections_per_address or config.get("max_connections_per_address")
    limits = ServerLimits(max_connections_per_address=int(per_address)) if per_address else None
    server = make_server(
        app, host, port, threads=threads, tls_cert=cert, tls_key=key, limits=limits
    )
    freeze_startup_heap()

    def stop(_signum: int, _frame: Any) -> None:
        app.coordinator.notifier.close()  # answer waiting long polls now
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.prepare()
    app.public_url = public_url or bind_url(host, bound_port(server), tls=bool(cert))
    scheme = "https" if cert else "http"
    print(
        f"barnraise-backend serving {data_dir} on {scheme}://{host}:{bound_port(server)}",
        flush=True,
    )
    try:
        server.serve()
    finally:
        app.close()
    return 0


def _project(args: argparse.Namespace, data_dir: Path) -> int:
    coordinator = _coordinator(data_dir, args.database_url)
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


def _invite(args: argparse.Namespace, data_dir: Path) -> int:
    coordinator = _coordinator(data_dir, args.database_url)
    try:
        code = coordinator.create_invite(args.project, max_uses=args.uses)
    finally:
        coordinator.close()
    page = f"{args.url.rstrip('/')}/p/{args.project}"
    print(f"barnraise://join?url={quote(page, safe='')}&invite={code}")
    print(f"{page}?invite={code}")
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
