"""The WSGI application: the route table as data, and the one place errors become JSON.

Routes come from ``backend.api.routes`` (the same table the OpenAPI document is generated
from): ``(name, compiled regex, methods, handler)``; the first whose regex matches wins. Captured groups are passed to the handler by name; handlers validate them
(``bad_id``) before they touch storage. A path matched with another method is 405.

Run it with the CLI (``barnraise-backend serve``, ``backend.serving``) or under any WSGI server::

    gunicorn --threads 32 'backend.wsgi:app_from_env()'     # reads BARNRAISE_DATA
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backend.api.routes import API, HTML_ROUTES, ROUTE_TABLE
from backend.coordinator import Coordinator
from backend.errors import (
    HTTPError,
    MethodNotAllowed,
    NotFound,
    api_error,
    error_body,
)
from backend.http import HTTP_REASONS, Request, Response
from backend.openapi import build_openapi
from backend.serving.parking import PARKED
from backend.storage import STORAGE_RETRY_AFTER_S, is_storage_full
from backend.store import ClientRecord, ProjectRecord
from backend.throttle import Throttle, forwarded_client, parse_proxies

log = logging.getLogger(__name__)

Handler = Callable[..., Response]
StartResponse = Callable[..., Any]

ROUTES: list[tuple[str, re.Pattern[str], frozenset[str], Handler]] = [
    (route.name, route.regex, frozenset({route.method}), route.handler) for route in ROUTE_TABLE
]
"""(name, regex, methods, handler) from ``backend.api.routes.ROUTE_TABLE``; first match wins."""

BEARER_ROUTES = frozenset(route.name for route in ROUTE_TABLE if route.bearer)
"""Routes whose handler authenticates: charged to the client then (``backend.throttle``)."""

DEFAULT_RATE = 50.0
"""Requests per second a client may sustain (token bucket refill)."""
DEFAULT_BURST = 200.0
"""Requests a client may make at once."""

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"
"""Where pages say the server is when nobody said (``serve`` says its bind address)."""


def check_public_url(url: str) -> str:
    """``url`` without its trailing slash, if it is ``http(s)://HOST[:PORT][/PATH]``."""
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"the public URL {url!r} has a bad port") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"the public URL {url!r} must look like https://HOST[:PORT][/PATH]")
    return url.strip().rstrip("/")


def bind_url(host: str, port: int, *, tls: bool = False) -> str:
    """The URL of a bind address: the machine's name for a wildcard address."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def resolve(method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
    """(route name, handler, captured arguments) for a request; NotFound or MethodNotAllowed."""
    allowed: set[str] = set()
    for name, pattern, methods, handler in ROUTES:
        m = pattern.match(path)
        if m is None:
            continue
        if method in methods or (method == "HEAD" and "GET" in methods):
            return name, handler, m.groupdict()
        allowed |= methods
    if allowed:
        raise MethodNotAllowed(
            f"{method} is not allowed here; use {', '.join(sorted(allowed))}",
            headers=[("Allow", ", ".join(sorted(allowed)))],
        )
    raise NotFound(f"nothing at {path[:200]!r}; the API is under {API}")


class App:
    """The WSGI callable over one ``Coordinator``.

    ``public_url`` is where volunteers reach this server, as pages show it (the join
    address): configuration, never a request's ``Host`` header, which any caller sets."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        rate: float | None = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        public_url: str = DEFAULT_PUBLIC_URL,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.coordinator = coordinator
        self.public_url = check_public_url(public_url)
        self.metrics = coordinator.metrics
        self.throttle = Throttle(rate, burst, self.metrics)
        self.trusted_proxies = parse_proxies(trusted_proxies)
        self._openapi: bytes | None = None

    def openapi_json(self) -> bytes:
        """``GET /api/v1/openapi.json``: the same for every request, so built once."""
        if self._openapi is None:
            self._openapi = json.dumps(build_openapi(), ensure_ascii=False).encode("utf-8")
        return self._openapi

    def authenticate(self, req: Request, project: ProjectRecord) -> ClientRecord:
        try:
            client = self.coordinator.authenticate(project, req.header("authorization"))
        except HTTPError:
            self.throttle.charge_failed_auth(req.remote_addr, req.route_name)
            raise
        req.client_id = client.id
        if not req.resumed:
            self.throttle.charge_client(client.id, req.route_name)
        return client

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        forwarded_client(environ, self.trusted_proxies)
        req = Request(environ)
        try:
            name, handler, args = resolve(req.method, req.path)
            req.route_name = name
            if not req.resumed:  # a parked long poll run again was charged when it came
                self.throttle.charge_request(name, req.remote_addr, name in BEARER_ROUTES)
            response = handler(self, req, **args)
        except HTTPError as exc:
            response = self._error_response(req, exc)
        except Exception as exc:
            response = self._error_response(req, self._unexpected(req, exc))
        return self._send(req, response, start_response, started)

    def _unexpected(self, req: Request, exc: Exception) -> HTTPError:
        """A full disk is 507, expected and logged as a warning without a traceback (not a
        bug); anything else is a 500 whose traceback is logged."""
        if not is_storage_full(exc):
            log.exception("unexpected error answering %s %s", req.method, req.path[:200])
            return HTTPError(
                "the server hit an unexpected error; it has been logged, try again later"
            )
        self.coordinator.storage.failed()
        log.warning(
            "no space left to answer %s %s (%s): answered 507", req.method, req.path[:200], exc
        )
        return api_error(
            "insufficient_storage",
            "the coordinator's disk is full, so this request was not completed; send it "
            "again after Retry-After seconds",
            retry_after=STORAGE_RETRY_AFTER_S,
        )

    def _error_response(self, req: Request, exc: HTTPError) -> Response:
        if req.route_name in HTML_ROUTES:
            from backend.pages import PAGE_HEADERS, render_error_page

            headers = [(k, v) for k, v in PAGE_HEADERS if k.lower() != "content-type"]
            body = render_error_page(exc.status, exc.message).encode("utf-8")
            return Response(
                exc.status, body, headers + exc.extra_headers, "text/html; charset=utf-8"
            )
        headers = [h for h in exc.headers() if h[0].lower() != "content-type"]
        return Response(exc.status, error_body(exc), headers, "application/json")

    def _send(
        self, req: Request, response: Response, start_response: StartResponse, started: float
    ) -> Iterable[bytes]:
        headers = list(response.headers)
        if response.content_type:
            headers.append(("Content-Type", response.content_type))
        body = response.body
        if isinstance(body, bytes):
            if response.status not in (204, 304):
                headers.append(("Content-Length", str(len(body))))
            chunks: Iterable[bytes] = [body]
        else:
            chunks = body
        if req.method == "HEAD" or response.status in (204, 304):
            if not isinstance(body, bytes) and hasattr(body, "close"):
                body.close()
            chunks = []
        reason = HTTP_REASONS.get(response.status, "Unknown")
        start_response(f"{response.status} {reason}", headers)
        if PARKED in req.environ:
            return chunks  # held by the server: counted when it is run again and answered
        self.metrics.requests.labels(
            method=req.method if req.method in _KNOWN_METHODS else "OTHER",
            route=req.route_name,
            status=str(response.status),
        ).inc()
        self.metrics.request_seconds.labels(
            method=req.method if req.method in _KNOWN_METHODS else "OTHER", route=req.route_name
        ).observe(time.perf_counter() - started)
        return chunks

    def close(self) -> None:
        self.coordinator.close()


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def create_app(
    data_dir: str | Path,
    *,
    rate: float | None = DEFAULT_RATE,
    burst: float = DEFAULT_BURST,
    public_url: str = DEFAULT_PUBLIC_URL,
    trusted_proxies: Iterable[str] = (),
    **coordinator_options: Any,
) -> App:
    """The WSGI app over ``data_dir`` (created if missing), its aggregation worker started."""
    return App(
        Coordinator(data_dir, **coordinator_options),
        rate=rate,
        burst=burst,
        public_url=public_url,
        trusted_proxies=trusted_proxies,
    )


def app_from_env() -> App:
    """For WSGI servers: ``gunicorn 'backend.wsgi:app_from_env()'`` with BARNRAISE_DATA set
    (and BARNRAISE_PUBLIC_URL, where pages say volunteers reach the server;
    BARNRAISE_DATABASE_URL for PostgreSQL)."""
    from backend.coordinator import default_data_dir
    from backend.server import freeze_startup_heap

    data = os.environ.get("BARNRAISE_DATA") or str(default_data_dir())
    proxies = [p for p in os.environ.get("BARNRAISE_TRUSTED_PROXIES", "").split(",") if p.strip()]
    app = create_app(
        data,
        public_url=os.environ.get("BARNRAISE_PUBLIC_URL") or DEFAULT_PUBLIC_URL,
        trusted_proxies=proxies,
        database_url=os.environ.get("BARNRAISE_DATABASE_URL") or None,
    )
    freeze_startup_heap()
    return app
