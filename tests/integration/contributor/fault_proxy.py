"""A fault-injecting HTTP/1.1 proxy on loopback, standard library only.

It sits between real contributors and a real coordinator and, for a configurable share of
requests (decided by a seeded random sequence, so a run can be repeated), does one of:

    refuse             close the client's connection before forwarding anything
    cut_request        forward half of the request, then close both sides
    drop_response      forward the request, let the coordinator answer, send nothing back
    cut_after_headers  send the response's status line and headers only, then close
    cut_mid_body       send the headers and half of the body (as framed), then close
    reset_mid_body     the same, ending with a TCP reset instead of a close
    truncate           send half of the body as a whole message (Content-Length rewritten):
                       the client gets a well-framed answer whose JSON does not parse
    delay              wait up to ``max_delay_s`` before sending the whole response

The first three can lose a request the coordinator never saw or a request it handled whose
answer never arrived: the two cases a client must tell apart only by retrying safely.

Each client connection gets its own upstream connection; requests on it are handled one at
a time (requests does not pipeline). Every socket has a timeout and ``stop()`` closes them
all, so the proxy is bounded in time. ``counts`` says what it did, by fault and by route.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["ALL_FAULTS", "FaultProxy", "route_of"]

ALL_FAULTS: tuple[str, ...] = (
    "refuse",
    "cut_request",
    "drop_response",
    "cut_after_headers",
    "cut_mid_body",
    "reset_mid_body",
    "truncate",
    "delay",
)
SOCKET_TIMEOUT_S = 90.0
"""Longer than any long poll (the coordinator holds a lease request at most 30 s)."""
MAX_HEAD_BYTES = 64 * 1024

_ID_SEGMENT = re.compile(r"/(tasks|models)/(?!lease$|lease/|current$)[^/?]+")


def route_of(method: str, path: str) -> str:
    """``PUT /api/v1/projects/digits/tasks/<id>/update`` for counting faults by kind of call."""
    return f"{method} {_ID_SEGMENT.sub(lambda m: f'/{m.group(1)}/<id>', path.split('?')[0])}"


class _Closed(Exception):
    """The peer closed the connection (or it broke) where a message was expected."""


@dataclass
class _Message:
    head: bytes  # start line and headers, up to and including the blank line
    start_line: str
    headers: dict[str, str]  # lower-case names
    raw_body: bytes  # the body as framed on the wire (chunked framing kept)
    body: bytes  # the body itself

    def with_body(self, body: bytes) -> bytes:
        """The message re-framed with ``body`` and a Content-Length (no chunking), saying
        ``Connection: close`` (the proxy closes it next, and the client must not reuse it)."""
        lines = self.head.decode("latin-1").split("\r\n")
        replaced = ("content-length", "transfer-encoding", "connection")
        kept = [
            line
            for line in lines[1:]
            if line and line.split(":", 1)[0].strip().lower() not in replaced
        ]
        framing = [f"Content-Length: {len(body)}", "Connection: close"]
        head = "\r\n".join([lines[0], *kept, *framing, "", ""])
        return head.encode("latin-1") + body


class _Reader:
    """Reads HTTP/1.1 messages from one socket, keeping bytes that arrived early."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            raise _Closed(str(exc)) from None
        if not data:
            raise _Closed("closed")
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _Closed("line too long")
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def _rest(self) -> bytes:
        while True:
            try:
                self._fill()
            except _Closed:
                data, self.buffer = self.buffer, b""
                return data

    def message(self, *, request: bool, request_method: str = "") -> _Message | None:
        """The next message; None if the peer closed cleanly before its first byte."""
        if not self.buffer:
            try:
                self._fill()
            except _Closed:
                return None
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _Closed("head too long")
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        start = lines[0]
        raw, body = self._body(start, headers, request=request, request_method=request_method)
        return _Message(head, start, headers, raw, body)

    def _body(
        self, start: str, headers: dict[str, str], *, request: bool, request_method: str
    ) -> tuple[bytes, bytes]:
        if not request:
            status = int(start.split(" ")[1])
            if request_method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                return b"", b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raw, body = b"", b""
            while True:
                size_line = self._line()
                raw += size_line
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = self._line()
                        raw += trailer
                        if trailer == b"\r\n":
                            return raw, body
                chunk = self._take(size + 2)
                raw += chunk
                body += chunk[:-2]
        if "content-length" in headers:
            data = self._take(int(headers["content-length"]))
            return data, data
        if request:
            return b"", b""
        data = self._rest()  # delimited by the server closing the connection
        return data, data


def _close(sock: socket.socket | None, *, reset: bool = False) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``upstream`` ("host", port)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        share: float = 0.25,
        seed: int = 0,
        faults: Sequence[str] = ALL_FAULTS,
        max_delay_s: float = 1.5,
        applies_to: Callable[[str, str], bool] | None = None,
    ) -> None:
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown or not faults:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {ALL_FAULTS}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within 0..1, got {share!r}")
        self.upstream = upstream
        self.share = share
        self.faults = tuple(faults)
        self.max_delay_s = max_delay_s
        self.applies_to = applies_to or (lambda method, path: True)
        self.counts: Counter[str] = Counter()  # fault (or "ok") -> requests
        self.by_route: Counter[str] = Counter()  # "fault route" -> requests
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_share(self, share: float) -> None:
        with self._lock:
            self.share = share

    def stop(self) -> None:
        self._stopped.set()
        _close(self._listener)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> str:
        with self._lock:
            faults = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            routes = "; ".join(f"{k}: {v}" for k, v in sorted(self.by_route.items()))
        return f"{faults}\n{routes}"

    # --- plumbing ------------------------------------------------------------------------
    def _track(self, sock: socket.socket) -> socket.socket:
        sock.settimeout(SOCKET_TIMEOUT_S)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _forget(self, *socks: socket.socket | None) -> None:
        with self._lock:
            for sock in socks:
                if sock is not None:
                    self._sockets.discard(sock)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="fault-proxy-conn", daemon=True
            ).start()

    def _decide(self, method: str, path: str) -> tuple[str, float]:
        with self._lock:
            roll, pick, delay = self._rng.random(), self._rng.randrange(1 << 30), self._rng.random()
            if self.applies_to(method, path) and roll < self.share:
                fault = self.faults[pick % len(self.faults)]
            else:
                fault = "ok"
            self.counts[fault] += 1
            self.by_route[f"{fault} {route_of(method, path)}"] += 1
        return fault, delay * self.max_delay_s

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        reader = _Reader(client)
        up_reader: _Reader | None = None
        try:
            while not self._stopped.is_set():
                request = reader.message(request=True)
                if request is None:
                    return
                method, path = [*request.start_line.split(" "), "", ""][:2]
                fault, delay = self._decide(method, path)
                if fault == "refuse":
                    return
                if upstream is None:
                    upstream = self._track(socket.create_connection(self.upstream, timeout=10))
                    upstream.settimeout(SOCKET_TIMEOUT_S)
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                wire = request.head + request.raw_body
                if fault == "cut_request":
                    upstream.sendall(wire[: max(1, len(wire) // 2)])
                    return
                upstream.sendall(wire)
                response = up_reader.message(request=False, request_method=method)
                if response is None:
                    return
                if fault == "drop_response":
                    return
                if fault == "cut_after_headers":
                    client.sendall(response.head)
                    return
                if fault in ("cut_mid_body", "reset_mid_body"):
                    client.sendall(response.head + response.raw_body[: len(response.raw_body) // 2])
                    if fault == "reset_mid_body":
                        _close(client, reset=True)
                    return
                if fault == "truncate":
                    client.sendall(response.with_body(response.body[: len(response.body) // 2]))
                    return  # close: the rest of this connection's framing is ours now
                if fault == "delay":
                    time.sleep(delay)
                client.sendall(response.head + response.raw_body)
                closing = response.headers.get("connection", "").lower() == "close"
                if closing or request.headers.get("connection", "").lower() == "close":
                    return
        except (_Closed, OSError):
            return
        finally:
            self._forget(client, upstream)
            _close(client)
            _close(upstream)
