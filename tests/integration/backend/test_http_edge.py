"""Hostile HTTP against the embedded server (issue 12): strict framing, header and body
sizes, read deadlines, connection caps, draining a refused body, pipelining.

Every test starts its own server (``backend.serving``) with small limits in front of a
tiny recording WSGI app and speaks raw bytes over loopback sockets, so each refusal is
checked as sent: the status and JSON error code, ``Connection: close``, the socket
closed after it, and the app never seeing the request."""

from __future__ import annotations

import ipaddress
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from backend.server import bound_port, make_server, start_in_thread
from backend.serving import Server, ServerLimits

READ_S = 15.0
"""Longest wait for any one answer or close: generous, for a loaded two-core machine."""

MiB = 1024 * 1024


# ---------------------------------------------------------------------- the app and server


class Recorder:
    """A WSGI app that records every request it runs: ``/healthz`` and ``/echo`` (the body
    back), ``/refuse`` (401 without reading the body), ``/big`` (8 MiB)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def paths(self) -> list[str]:
        with self._lock:
            return [path for _method, path in self.seen]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        with self._lock:
            self.seen.append((method, path))
        if path == "/refuse":
            body = b'{"error": {"code": "unauthorized", "message": "bad token"}}'
            start_response("401 Unauthorized", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/big":
            start_response("200 OK", [("Content-Length", str(8 * MiB))])
            return (b"x" * (64 * 1024) for _ in range(128))
        body = environ["wsgi.input"].read() if path == "/echo" else b"ok"
        if len(body) < int(environ.get("CONTENT_LENGTH") or 0):
            start_response("400 Bad Request", [("Content-Length", "0")])
            return [b""]
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]


SMALL = dict(header_bytes=4096, header_timeout_s=1.0, idle_timeout_s=1.0, body_grace_s=1.0,
             body_min_bytes_per_s=64 * 1024.0, write_timeout_s=1.0, max_body_bytes=8 * MiB,
             buffered_body_bytes=64 * 1024, max_connections_per_address=200)  # fmt: skip


@contextmanager
def serving(app: Any = None, *, threads: int = 2, **limits: Any) -> Iterator[Server]:
    limits = {**SMALL, **limits}
    server = make_server(
        app or Recorder(), "127.0.0.1", 0, threads=threads, limits=ServerLimits(**limits)
    )
    start_in_thread(server)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------- a raw client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


class Raw:
    """One socket, read with a timeout; answers are parsed by Content-Length."""

    def __init__(self, port: int, timeout: float = READ_S, source: str | None = None) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def reply(self) -> Reply:
        """The next final answer (a 100 Continue is skipped)."""
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError(f"closed before an answer; got {bytes(self.buf)[:200]!r}")
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            self.buf = bytearray(rest)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            if status == 100:
                continue
            headers = {k.strip().lower(): v.strip() for k, _, v in map(_split, lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                if not self._fill():
                    raise ConnectionError("closed in the middle of a body")
            body, self.buf = bytes(self.buf[:length]), self.buf[length:]
            return Reply(status, headers, body)

    def closed(self, *, clean: bool = False) -> bool:
        """True once the server has closed (EOF, or a reset unless ``clean``) with nothing
        more sent; False if it sent more or kept the socket open past the timeout."""
        try:
            while self._fill():
                pass
        except (ConnectionResetError, BrokenPipeError):
            return not clean and not self.buf
        except TimeoutError:
            return False
        return not self.buf

    def close(self) -> None:
        self.sock.close()


def _split(line: str) -> tuple[str, str, str]:
    return line.partition(":")


def get(path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def assert_refused(conn: Raw, status: int, code: str) -> Reply:
    reply = conn.reply()
    assert (reply.status, reply.error) == (status, code), reply
    assert reply.headers["connection"] == "close"
    assert conn.closed(), "the server kept the connection open after refusing"
    return reply


def healthz(port: int) -> Reply:
    conn = Raw(port)
    try:
        conn.send(get())
        return conn.reply()
    finally:
        conn.close()


# ---------------------------------------------------------------------- framing


POST = b"POST /echo HTTP/1.1\r\nHost: t\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"
AMBIGUOUS = {
    "content_length_and_chunked": POST + b"Content-Length: 5\r\n" + CHUNKED + b"\r\n0\r\n\r\n",
    "content_length_twice_same": POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "content_length_twice_differing": POST + b"Content-Length: 2\r\nContent-Length: 4\r\n\r\nhihi",
    "content_length_list": POST + b"Content-Length: 2, 2\r\n\r\nhi",
    "gzip_chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "two_transfer_encodings": POST + CHUNKED + CHUNKED + b"\r\n0\r\n\r\n",
    "space_before_colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "folded_transfer_encoding": POST + b"Transfer-Encoding: \r\n chunked\r\n\r\n0\r\n\r\n",
    "folded_header_line": POST + b"X-A: b\r\n Content-Length: 3\r\n\r\nabc",
    "bare_lf": b"GET /healthz HTTP/1.1\nHost: t\n\n",
    "bare_lf_in_one_line": b"GET /healthz HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n",
    "http11_without_host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "malformed_request_line": b"GET /healthz\r\nHost: t\r\n\r\n",
    "garbage_request_line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "blank_line_before_request": b"\r\n\r\n"
    + POST
    + b"Content-Length: 3\r\n"
    + CHUNKED
    + b"\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
def test_ambiguous_framing_is_400_and_closes(name: str) -> None:
    app = Recorder()
    with serving(app) as server:
        conn = Raw(bound_port(server))
        conn.send(AMBIGUOUS[name])
        assert_refused(conn, 400, "bad_request")
        assert app.paths() == []


def test_http10_without_host_is_served() -> None:
    """Host is mandatory in HTTP/1.1 only: the refusal above is not a blanket one."""
    with serving() as server:
        conn = Raw(bound_port(server))
        conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert (conn.reply().status, conn.closed()) == (200, True)


def test_request_smuggled_in_a_cl_te_body_never_runs() -> None:
    """``Content-Length`` covers the whole body, ``chunked`` ends it at ``0``: a server (or
    proxy) honouring the chunking would run ``/smuggled`` as a second request."""
    app = Recorder()
    hidden = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    with serving(app) as server:
        conn = Raw(bound_port(server))
        smuggler = POST + CHUNKED + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden
        conn.send(get("/echo") + smuggler)  # after a valid request, in the same write
        assert conn.reply().status == 200
        assert_refused(conn, 400, "bad_request")
        assert app.paths() == ["/echo"]


def test_pipelined_requests_are_answered_in_order() -> None:
    app = Recorder()
    with serving(app) as server:
        conn = Raw(bound_port(server))
        conn.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nfirst"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nsecond\r\n0\r\n\r\n"
            + get("/healthz")
            + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfifth"
        )
        replies = [conn.reply() for _ in range(4)]
        assert [(r.status, r.body) for r in replies] == [
            (200, b"first"),
            (200, b"second"),
            (200, b"ok"),
            (200, b"fifth"),
        ]
        assert conn.closed()
        assert app.paths() == ["/echo", "/echo", "/healthz", "/echo"]


def test_pipelined_request_after_a_valid_one_is_still_checked() -> None:
    """The strict checks run on every request of a connection, not only its first."""
    app = Recorder()
    with serving(app) as server:
        conn = Raw(bound_port(server))
        conn.send(
            get("/healthz") + b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        assert conn.reply().status == 200
        assert_refused(conn, 400, "bad_request")
        assert app.paths() == ["/healthz"]


# ---------------------------------------------------------------------- sizes


def test_headers_over_the_limit_are_431() -> None:
    app = Recorder()
    with serving(app, header_bytes=4096) as server:
        port = bound_port(server)
        fits = Raw(port)
        fits.send(get("/healthz", f"X-Pad: {'a' * 3900}\r\n"))
        assert fits.reply().status == 200
        fits.close()
        over = Raw(port)  # one write: the whole block arrives at once, complete
        over.send(get("/healthz", f"X-Pad: {'a' * 5000}\r\n"))
        assert_refused(over, 431, "headers_too_large")
        many = Raw(port)  # many small headers, none large
        many.send(get("/healthz", "".join(f"X-{i}: {i}\r\n" for i in range(600))))
        assert_refused(many, 431, "headers_too_large")
        assert app.paths() == ["/healthz"]


def test_a_16_mib_header_is_refused_before_it_is_all_sent() -> None:
    app = Recorder()
    total = 16 * MiB
    sent = [0]
    with serving(app, header_bytes=32 * 1024) as server:
        conn = Raw(bound_port(server))

        def send() -> None:
            head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Huge: "
            block = b"a" * 65536
            try:
                conn.sock.sendall(head)
                while sent[0] < total:
                    sent[0] += conn.sock.send(block)
            except OSError:
                pass  # the server closed: the rest is never read

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert_refused(conn, 431, "headers_too_large")
        sender.join(READ_S)
        assert not sender.is_alive()
        assert sent[0] < total, "the server read all 16 MiB of a header"
        assert app.paths() == []


def test_body_over_the_limit_is_413_before_it_is_sent() -> None:
    app = Recorder()
    with serving(app, max_body_bytes=1 * MiB) as server:
        conn = Raw(bound_port(server))
        conn.send(
            b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (1 * MiB + 1)
        )
        reply = assert_refused(conn, 413, "payload_too_large")  # no 100 Continue came first
        assert "1048576" in json.loads(reply.body)["error"]["message"]
        assert app.paths() == []


@pytest.mark.parametrize("extra", ["", "Connection: close\r\n", "Transfer-Encoding: chunked\r\n"])
def test_refused_upload_lets_the_client_read_the_answer(extra: str) -> None:
    """The app answers 401 without reading a 2 MiB body: the server drains it, so the
    client finishes sending and reads the 401 rather than a reset, told not to reuse the
    connection (``Connection: close``), which then closes without a reset."""
    app = Recorder()
    body = b"z" * (2 * MiB)
    if extra.startswith("Transfer-Encoding"):
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        extra += f"Content-Length: {len(body)}\r\n"
    with serving(app) as server:
        conn = Raw(bound_port(server))
        conn.send(f"PUT /refuse HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode() + body)
        reply = conn.reply()
        assert (reply.status, reply.error) == (401, "unauthorized")
        assert reply.headers.get("connection") == "close"
        assert conn.closed(clean=True), "reset: on a real network it can destroy the answer"
        assert app.paths() == ["/refuse"]


# ---------------------------------------------------------------------- deadlines


def test_stalled_streamed_bodies_do_not_hold_the_threads() -> None:
    """Bodies over ``buffered_body_bytes`` are read by the app in a worker thread as they
    arrive. Two that declare 4 MiB and then stop must not hold both threads (threads=2)
    until their whole-body deadline (1 + 64 s here): once they fall behind
    ``body_min_bytes_per_s`` the app reads the end of its body, answers, and the threads
    serve others again."""
    app = Recorder()
    with serving(app, threads=2, body_grace_s=1.0, body_min_bytes_per_s=64 * 1024.0) as server:
        port = bound_port(server)
        stalled = [Raw(port) for _ in range(2)]
        for conn in stalled:
            conn.send(
                b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (4 * MiB)
                + b"b" * 1000
            )
        assert _eventually(lambda: len(app.paths()) == 2)  # both are in the app, reading
        assert healthz(port).status == 200
        for conn in stalled:
            assert conn.reply().status == 400  # the app's own "incomplete body"
            conn.close()


def test_stalled_chunked_bodies_are_read_on_the_loop() -> None:
    """A chunked body is buffered on the loop like a small one until it outgrows
    ``buffered_body_bytes``: two that stall after a few bytes hold no worker thread
    (threads=2, a 30 s grace), and the app never sees them."""
    app = Recorder()
    with serving(app, threads=2, body_grace_s=30.0) as server:
        port = bound_port(server)
        stalled = [Raw(port) for _ in range(2)]
        for conn in stalled:
            conn.send(POST + CHUNKED + b"\r\n5\r\nhel")
        assert healthz(port).status == 200
        assert app.paths() == ["/healthz"]
        done = Raw(port)  # and a chunked body that completes is served as before
        done.send(POST + CHUNKED + b"\r\n5\r\nhello\r\n0\r\n\r\n")
        assert done.reply().body == b"hello"
        for conn in [*stalled, done]:
            conn.close()


def test_slowloris_sockets_get_408_while_others_are_served() -> None:
    """70 sockets dribble a header byte at a time; the server answers /healthz on another
    socket meanwhile, then each slow one with 408 (its header deadline runs from its first
    byte, however often bytes come) and closes it."""
    app = Recorder()
    slow_count = 70
    with serving(app, threads=2, header_timeout_s=1.0) as server:
        port = bound_port(server)
        head = get("/healthz", "X-Slow: " + "s" * 500 + "\r\n")
        slow = [Raw(port) for _ in range(slow_count)]
        stop = threading.Event()
        answered: set[int] = set()

        def dribble() -> None:
            at = 0
            while not stop.is_set() and at < len(head) - 2:
                for i, conn in enumerate(slow):
                    if i in answered:
                        continue
                    try:
                        conn.sock.send(head[at : at + 1])
                    except OSError:
                        answered.add(i)
                at += 1
                stop.wait(0.02)

        dribbler = threading.Thread(target=dribble, daemon=True)
        dribbler.start()
        try:
            assert healthz(port).status == 200
            with selectors.DefaultSelector() as sel:
                for i, conn in enumerate(slow):
                    sel.register(conn.sock, selectors.EVENT_READ, i)
                give_up = time.monotonic() + READ_S
                waiting = set(range(slow_count))
                while waiting and time.monotonic() < give_up:
                    for key, _ in sel.select(timeout=1.0):
                        sel.unregister(key.fileobj)
                        waiting.discard(key.data)
                        answered.add(key.data)
                assert not waiting, f"{len(waiting)} slow sockets were never answered"
            for conn in slow:
                assert_refused(conn, 408, "request_timeout")
        finally:
            stop.set()
            dribbler.join(READ_S)
            for conn in slow:
                conn.close()
        assert app.paths() == ["/healthz"]


def test_slow_small_body_is_408() -> None:
    app = Recorder()
    with serving(app, body_grace_s=1.0, body_min_bytes_per_s=64 * 1024.0) as server:
        conn = Raw(bound_port(server))
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"b" * 10)
        assert_refused(conn, 408, "request_timeout")
        assert app.paths() == []


def test_idle_keep_alive_connection_is_closed() -> None:
    with serving(idle_timeout_s=1.0) as server:
        port = bound_port(server)
        used = Raw(port)
        used.send(get())
        assert used.reply().status == 200
        assert used.closed(), "an idle keep-alive connection stayed open"
        silent = Raw(port)  # connected, never sent a byte
        assert silent.closed()


def test_half_closed_client_still_gets_its_answer_and_the_socket_closes() -> None:
    with serving(idle_timeout_s=60.0) as server:
        conn = Raw(bound_port(server))
        conn.send(get("/echo"))
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.reply().status == 200
        assert conn.closed(), "a half-closed connection was kept until its idle timeout"


def test_client_that_reads_nothing_is_disconnected() -> None:
    """8 MiB the client never reads: after ``write_timeout_s`` without progress the server
    drops the connection and its worker thread is free again (threads=1)."""
    with serving(threads=1, write_timeout_s=1.0) as server:
        port = bound_port(server)
        stuck = Raw(port)
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.send(get("/big"))
        assert stuck.sock.recv(16).startswith(b"HTTP/1.1 200")  # the answer began; no more is read
        assert _eventually(lambda: server.open_connections == 0), (
            "a client that reads nothing stayed"
        )
        assert healthz(port).status == 200
        stuck.close()


# ---------------------------------------------------------------------- connection caps


@pytest.mark.parametrize(
    ("cap", "status", "code"),
    [
        ("max_connections_per_address", 429, "too_many_connections"),
        ("max_connections", 503, "unavailable"),
    ],
)
def test_connections_beyond_a_cap_are_refused(cap: str, status: int, code: str) -> None:
    """Three connections held open (one address, so either cap): the fourth is refused
    with Retry-After and closed; once one of the three goes, a new one is served."""
    with serving(**{cap: 3}, idle_timeout_s=30.0) as server:
        port = bound_port(server)
        held = [Raw(port) for _ in range(3)]
        for conn in held:  # each admitted: it is answered and stays open
            conn.send(get())
            assert conn.reply().status == 200
        extra = Raw(port)
        extra.send(get())
        reply = assert_refused(extra, status, code)
        assert int(reply.headers["retry-after"]) > 0
        held.pop().close()
        assert _eventually(lambda: server.open_connections == 2)
        again = Raw(port)
        again.send(get())
        assert again.reply().status == 200
        for conn in [*held, again]:
            conn.close()


def test_a_trusted_proxy_is_not_held_to_the_per_address_cap() -> None:
    """Behind nginx every volunteer's connection comes from the proxy's address: it is not
    counted (the proxy caps each volunteer), while any other address still is."""
    proxy = (ipaddress.ip_network("127.0.0.1/32"),)
    with serving(
        max_connections_per_address=2, idle_timeout_s=30.0, uncapped_networks=proxy
    ) as server:
        port = bound_port(server)
        through_proxy = [Raw(port) for _ in range(5)]
        for conn in through_proxy:
            conn.send(get())
            assert conn.reply().status == 200
        direct = [Raw(port, source="127.0.0.2") for _ in range(3)]
        for conn in direct[:2]:
            conn.send(get())
            assert conn.reply().status == 200
        direct[2].send(get())
        assert_refused(direct[2], 429, "too_many_connections")
        for conn in [*through_proxy, *direct[:2]]:
            conn.close()


def _eventually(condition: Any, timeout: float = READ_S) -> bool:
    """Poll a server-side condition (a count updated on the loop thread) until it holds."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True
