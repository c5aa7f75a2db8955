"""``barnraise-backend serve``, and the configuration it shares with ``invite create``.

Everything a typo can get wrong (the ``--config`` file and its keys, the TLS files, the data
folder, the port, the address) is checked before the coordinator is opened, and a bind that
fails says why in one line (``ValueError``: the CLI prints ``error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import signal
import socket
import ssl
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

SERVE_CONFIG_KEYS = (
    "host",
    "port",
    "tls_cert",
    "tls_key",
    "threads",
    "rate",
    "burst",
    "public_url",
    "trusted_proxies",
    "max_connections_per_address",
)
"""The keys a ``serve --config`` TOML file may hold; any other is refused (a typo)."""


def load_serve_config(path: Path | None) -> dict[str, Any]:
    """The ``--config`` TOML file's table ({} for none); ValueError naming the file and the
    unknown keys, with the known ones."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file; give the path of a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    unknown = sorted(set(config) - set(SERVE_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"--config {path}: unknown key(s) {', '.join(unknown)}; "
            f"the known keys are {', '.join(SERVE_CONFIG_KEYS)}"
        )
    return config


def _number(
    config: Mapping[str, Any], key: str, kind: type, source: Path | None, default: Any
) -> Any:
    """``config[key]`` as a ``kind`` (``default`` when absent); ValueError naming the key."""
    if key not in config:
        return default
    try:
        return kind(config[key])
    except (TypeError, ValueError):
        raise ValueError(
            f"{key} in --config {source} must be a {kind.__name__}, got {config[key]!r}"
        ) from None


def configured_public_url(
    config: Mapping[str, Any],
    *,
    public_url: str | None = None,
    host: str | None = None,
    port: int | None = None,
    tls: bool = False,
) -> str:
    """Where volunteers reach the server, as ``serve`` advertises it: ``public_url`` (flag,
    then config), else the URL of the bind address (host and port from flags, then config,
    then 127.0.0.1:8080). ``invite create`` prints its links under it."""
    from backend.wsgi import bind_url, check_public_url

    explicit = public_url or config.get("public_url")
    if explicit:
        return check_public_url(str(explicit))
    host = host or str(config.get("host", DEFAULT_HOST))
    if port is None:
        port = int(config.get("port", DEFAULT_PORT))
    return bind_url(host, port, tls=tls or bool(config.get("tls_cert")))


def check_data_dir(data_dir: Path) -> None:
    """Refuse a ``--data`` that is a file (the coordinator would fail to make its folders)."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(
            f"--data {data_dir} is a file, not a folder: give the coordinator's data folder "
            "(it is created if missing)"
        )


def _check_file(path: str, flag: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{flag} {path}: no such file; give the path of a PEM file")


def _bind_error(exc: OSError, host: str, port: int) -> ValueError:
    where = f"{host}:{port}"
    # A name that does not resolve: socket.create_server re-raises getaddrinfo's error as
    # an OSError with its negative EAI_* errno.
    if isinstance(exc, socket.gaierror) or (exc.errno is not None and exc.errno < 0):
        text = (
            f"cannot serve on {host!r}: no such address (the name does not resolve); pass "
            "--host 127.0.0.1 (this machine) or 0.0.0.0 (every network)"
        )
    elif exc.errno == errno.EADDRINUSE:
        text = (
            f"cannot serve on {where}: the port is in use (another barnraise-backend?); stop "
            "that server or pass another --port"
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        text = (
            f"cannot serve on {where}: {host} is not an address of this machine; pass "
            "--host 127.0.0.1 (this machine) or 0.0.0.0 (every network)"
        )
    elif exc.errno == errno.EACCES:
        text = f"cannot serve on {where}: not allowed (ports below 1024 need privileges); pass --port 8080"
    else:
        text = f"cannot serve on {where}: {exc.strerror or exc}"
    return ValueError(text)


def serve(args: argparse.Namespace, data_dir: Path) -> int:
    """Run ``serve`` until SIGTERM or Ctrl-C; ValueError for what a user can fix."""
    from backend.server import DEFAULT_THREADS, bound_port, freeze_startup_heap, make_server
    from backend.serving import ServerLimits
    from backend.throttle import parse_proxies
    from backend.wsgi import DEFAULT_BURST, DEFAULT_RATE, bind_url, check_public_url, create_app

    source = args.config
    config = load_serve_config(source)
    host = args.host or str(config.get("host", DEFAULT_HOST))
    port = (
        args.port if args.port is not None else _number(config, "port", int, source, DEFAULT_PORT)
    )
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range: give 1 to 65535 (0: any free port)")
    threads = args.threads or _number(config, "threads", int, source, DEFAULT_THREADS)
    cert = args.tls_cert or config.get("tls_cert")
    key = args.tls_key or config.get("tls_key")
    for path, flag, name in ((cert, "--tls-cert", "tls_cert"), (key, "--tls-key", "tls_key")):
        if path:
            given = flag if getattr(args, name) else f"{name} in --config {source}"
            _check_file(str(path), given)
    public_url = args.public_url or config.get("public_url")
    if public_url:
        public_url = check_public_url(str(public_url))  # before anything is opened or bound
    proxies = args.trusted_proxy or list(config.get("trusted_proxies", []))
    proxy_networks = parse_proxies(proxies)  # a bad one is refused before anything is bound
    per_address = args.max_connections_per_address or _number(
        config, "max_connections_per_address", int, source, None
    )
    check_data_dir(data_dir)
    app = create_app(
        data_dir,
        rate=_number(config, "rate", float, source, DEFAULT_RATE),
        burst=_number(config, "burst", float, source, DEFAULT_BURST),
        trusted_proxies=proxies,
        database_url=args.database_url,
    )
    try:
        limits = ServerLimits(uncapped_networks=proxy_networks)
        if per_address:
            limits = dataclasses.replace(limits, max_connections_per_address=per_address)
        server = make_server(
            app, host, port, threads=threads, tls_cert=cert, tls_key=key, limits=limits
        )
        server.prepare()
    except ssl.SSLError as exc:
        app.close()
        raise ValueError(
            f"cannot load --tls-cert {cert} with --tls-key {key}: {exc.reason or exc}; give a "
            "PEM certificate chain and its private key"
        ) from None
    except OSError as exc:
        app.close()
        raise _bind_error(exc, host, port) from None
    except BaseException:
        app.close()
        raise
    freeze_startup_heap()

    def stop(_signum: int, _frame: Any) -> None:
        app.coordinator.notifier.close()  # answer waiting long polls now
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
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
