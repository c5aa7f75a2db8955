"""The embedded HTTP server: one asyncio event loop holds every connection, a small
thread pool runs the WSGI app on complete requests.

Why this and not cheroot, gunicorn's gevent worker or bounded poll slots (measured in
README "Performance", reasoned in docs/backend.md "Serving"): cheroot gives every
connection that is reading headers or waiting in a long poll one of its threads, so 65
idle volunteers or 70 slow sockets stop it. gevent would hold them cheaply but runs the
whole coordinator in one hub, so aggregation and re-execution (seconds of torch) would
have to move to another process, and it patches the standard library under torch.
Bounded slots with 204 + Retry-After keep the threads but make volunteers beyond the
slots poll blind. Here a waiting volunteer is a socket and a timer on the loop, headers
and small bodies are read there under deadlines, and a thread is taken only while the
app runs."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from backend.serving.answers import error_bytes
from backend.serving.connection import Connection
from backend.serving.limits import ServerLimits, raise_open_file_limit
from backend.serving.parking import Parking
from backend.serving.wsgi_call import Outcome

log = logging.getLogger("backend.serving")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Server:
    """``prepare()`` binds, ``serve()`` runs until ``stop()`` (from any thread)."""

    def __init__(
        self,
        bind_addr: tuple[str, int],
        app: WSGIApp,
        *,
        threads: int = 16,
        limits: ServerLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 1024,
        server_name: str = "barnraise-backend",
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.limits = limits or ServerLimits()
        self.threads = threads
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"
        self.backlog = backlog
        self.server_header = server_name.encode("ascii")
        self.shutdown_timeout = shutdown_timeout
        self._requested = bind_addr
        self._sock: socket.socket | None = None
        self.loop = asyncio.new_event_loop()
        self.parking = Parking(self.loop)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="barnraise-http")
        self._connections: set[Connection] = set()
        self._per_address: dict[str, int] = {}
        self._cap = 0
        self._in_flight: set[Future[None]] = set()
        self._stopped = threading.Event()
        self._serving = threading.Event()
        self._date = (0, b"")

    # ------------------------------------------------------------------ lifecycle

    @property
    def bind_addr(self) -> tuple[str, int]:
        if self._sock is None:
            return self._requested
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def server_name(self) -> str:
        return self.bind_addr[0]

    @property
    def port(self) -> int:
        return self.bind_addr[1]

    def prepare(self) -> None:
        """Bind and listen now, so the port is known and connections queue."""
        if self._sock is not None:
            return
        raise_open_file_limit()
        self._cap = self.limits.connection_cap()
        host, port = self._requested
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server(
            (host, port), family=family, backlog=self.backlog, reuse_port=False
        )
        self._sock.setblocking(False)

    def serve(self) -> None:
        """Run the loop in this thread until ``stop()``."""
        self.prepare()
        assert self._sock is not None
        asyncio.set_event_loop(self.loop)
        listener = self.loop.run_until_complete(
            self.loop.create_server(
                lambda: Connection(self),
                sock=self._sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.limits.header_timeout_s if self.ssl_context else None,
                backlog=self.backlog,
            )
        )
        self._serving.set()
        try:
            self.loop.run_forever()
        finally:
            listener.close()
            self.parking.close()
            self._drain_workers()
            for conn in list(self._connections):
                conn.close_now()
            self.loop.run_until_complete(asyncio.sleep(0))
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.loop.close()
            self._stopped.set()

    def stop(self) -> None:
        """Stop accepting, answer parked polls, give running requests ``shutdown_timeout``."""
        if self.loop.is_closed():
            return
        if not self._serving.is_set():
            if self._sock is not None:
                self._sock.close()
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._stopped.wait(self.shutdown_timeout + 5)

    def _drain_workers(self) -> None:
        give_up = time.monotonic() + self.shutdown_timeout
        while self._in_flight and time.monotonic() < give_up:
            self.loop.run_until_complete(asyncio.sleep(0.02))

    # ------------------------------------------------------------------ connections

    def admit(self, conn: Connection) -> Outcome | None:
        """Count ``conn`` in; an answer refusing it when a cap is reached."""
        address = conn.peer[0]
        if len(self._connections) >= self._cap:
            return error_bytes(
                "unavailable", "the server is at its connection limit; try again later", 5
            )
        if self._per_address.get(
            address, 0
        ) >= self.limits.max_connections_per_address and self.limits.caps_address(address):
            return error_bytes(
                "too_many_connections",
                f"at most {self.limits.max_connections_per_address} connections per address",
                5,
            )
        self._connections.add(conn)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        conn.admitted = True
        return None

    def release(self, conn: Connection) -> None:
        if not conn.admitted:
            return
        conn.admitted = False
        self._connections.discard(conn)
        address = conn.peer[0]
        left = self._per_address.get(address, 1) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------------ the app

    def submit(self, conn: Connection, environ: dict[str, Any]) -> None:
        """Run the app for ``conn`` in a worker thread (loop thread only)."""
        future = self._executor.submit(conn.run_in_worker, environ)
        self._in_flight.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._in_flight.discard, future)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """Date and Server, added to every answer (Date computed once a second)."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode("ascii"))
        return [(b"Date", self._date[1]), (b"Server", self.server_header)]
