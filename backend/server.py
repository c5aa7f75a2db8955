"""Serving the WSGI app on cheroot (TLS optional), in the foreground or in a thread."""

from __future__ import annotations

import threading
from typing import Any

from cheroot import wsgi

DEFAULT_THREADS = 64
"""Server threads; a long-polled lease holds one for up to 30 s, so keep this above the
number of contributors expected to wait at once."""


def make_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    threads: int = DEFAULT_THREADS,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> wsgi.Server:
    server = wsgi.Server((host, port), app, numthreads=threads, server_name="barnraise-backend")
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
