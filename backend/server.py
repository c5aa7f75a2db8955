"""Serving the WSGI app on the embedded server (``backend.serving``, TLS optional), in
the foreground or in a thread."""

from __future__ import annotations

import gc
import ssl
import threading
from typing import Any

from backend.serving import Server, ServerLimits

DEFAULT_THREADS = 16
"""Worker threads running the app. A waiting long poll or a slow client holds none (they
are sockets on the event loop), so this bounds only requests being computed at once:
uploads being verified and stored, leases being signed."""

LISTEN_BACKLOG = 1024
"""Connections the kernel queues before the server accepts them (capped by
net.core.somaxconn): a burst of contributors connecting at once (a new model version, a
restart) otherwise sees resets and SYN retransmits of one second or more."""


def freeze_startup_heap() -> None:
    """Exempt everything allocated so far from the cyclic garbage collector.

    Call once, in the serving process, after the app is built. torch, numpy and the
    recipes leave a heap of several hundred thousand long-lived objects, and every full
    collection walked all of them again: under load the collector took several per cent
    of the server's one core. Frozen objects are still freed by reference counting; only
    cycles among them are never collected, and start-up makes none worth the walk."""
    gc.collect()
    gc.freeze()


def make_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    threads: int = DEFAULT_THREADS,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    limits: ServerLimits | None = None,
) -> Server:
    context = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    return Server((host, port), app, threads=threads, limits=limits, ssl_context=context,
                  backlog=LISTEN_BACKLOG)  # fmt: skip


def bound_port(server: Server) -> int:
    return server.port


def start_in_thread(server: Server) -> threading.Thread:
    """Bind now (so the port is known and accepting), serve in a daemon thread."""
    server.prepare()
    thread = threading.Thread(target=server.serve, name="barnraise-http", daemon=True)
    thread.start()
    return thread
