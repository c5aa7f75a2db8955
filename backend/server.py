"""Serving the WSGI app on cheroot (TLS optional), in the foreground or in a thread."""

from __future__ import annotations

import gc
import threading
from typing import Any

from cheroot import wsgi

DEFAULT_THREADS = 64
"""Server threads; a long-polled lease holds one for up to 30 s, so keep this above the
number of contributors expected to wait at once."""

LISTEN_BACKLOG = 1024
"""Connections the kernel queues before cheroot accepts them (capped by net.core.somaxconn).
cheroot's default of 5 makes a burst of contributors connecting at once (a new model
version, a restart) see resets and SYN retransmits of one second or more."""

KEEP_ALIVE_CONNECTIONS = 1024
"""Idle keep-alive connections kept open (each a socket and two small buffers, closed
after cheroot's 10 s idle timeout). cheroot's default of 10 answers ``Connection: close``
as soon as more than 10 contributors are idle between requests, so each of their next
requests pays for a new TCP connection."""


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
) -> wsgi.Server:
    server = wsgi.Server(
        (host, port),
        app,
        numthreads=threads,
        server_name="barnraise-backend",
        request_queue_size=LISTEN_BACKLOG,
    )
    server.keep_alive_conn_limit = KEEP_ALIVE_CONNECTIONS
    server.shutdown_timeout = 2
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(tls_cert, tls_key)
    return server


def bound_port(server: wsgi.Server) -> int:
    addr = server.bind_addr
    return int(addr[1]) if isinstance(addr, tuple) else 0


def start_in_thread(server: wsgi.Server) -> threading.Thread:
    """Bind now (so the port is known and accepting), serve in a daemon thread."""
    server.prepare()
    thread = threading.Thread(target=server.serve, name="barnraise-http", daemon=True)
    thread.start()
    return thread
