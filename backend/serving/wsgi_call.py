"""The WSGI side of a request: its environ, its streamed body, and running the app in a
worker thread (PEP 3333)."""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

log = logging.getLogger("backend.serving")

WHOLE_RESPONSE_BYTES = 256 * 1024
"""A response body up to this size is handed to the connection in one piece."""


def build_environ(
    request: h11.Request,
    *,
    server_name: str,
    server_port: int,
    peer: tuple[str, int],
    scheme: str,
) -> dict[str, Any]:
    """The WSGI environ of ``request`` (without ``wsgi.input``).

    Header names with an underscore are dropped, as nginx and cheroot do: otherwise
    ``X_Forwarded_For`` would arrive as the same ``HTTP_X_FORWARDED_FOR`` key as the
    header a trusted proxy sets."""
    target = request.target
    path, _, query = target.partition(b"?")
    if path.startswith((b"http://", b"https://")):  # absolute form: keep only the path
        path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": peer[0],
        "REMOTE_PORT": str(peer[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue
        value = raw_value.decode("latin-1")
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class StreamedBody(io.RawIOBase):
    """``wsgi.input`` for a body the app reads while it arrives: the connection feeds
    chunks from the event loop, the app reads them in its worker thread.

    The loop stops reading the socket while more than ``high_water`` bytes wait here, so
    a fast client never fills memory; past its deadline, or when the client goes away,
    reads return end of body and the app answers its own "incomplete body".

    With ``min_bytes_per_s``, a read also ends the body once the client falls behind that
    rate since the app's first read (after ``grace_s``; bytes that came before count): a
    client that declares a large body and then sends nothing holds the app's worker
    thread for about ``grace_s``, not for the whole body's deadline."""

    def __init__(
        self,
        deadline: float,
        *,
        resume: Callable[[], object],
        on_first_read: Callable[[], object] | None = None,
        high_water: int = 1024 * 1024,
        grace_s: float = 0.0,
        min_bytes_per_s: float = 0.0,
    ) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._fed = 0
        self._start: float | None = None
        self._grace_s = grace_s
        self._min_rate = min_bytes_per_s
        self._ended = False
        self._deadline = deadline
        self._resume = resume
        self._on_first_read = on_first_read
        self._high_water = high_water
        self.paused = False

    def readable(self) -> bool:
        return True

    # the loop's side
    def feed(self, data: bytes) -> bool:
        """Queue ``data``; True when the loop should stop reading the socket for now."""
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            self._fed += len(data)
            self._cond.notify()
            self.paused = self._buffered > self._high_water
            return self.paused

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    # the app's side
    def read(self, size: int | None = -1) -> bytes:
        if self._start is None:
            self._start = time.monotonic()
        if self._on_first_read is not None:
            self._on_first_read()
            self._on_first_read = None
        want = sys.maxsize if size is None or size < 0 else size
        out = bytearray()
        with self._cond:
            while len(out) < want:
                if self._chunks:
                    chunk = self._chunks.popleft()
                    take = want - len(out)
                    if len(chunk) > take:
                        self._chunks.appendleft(chunk[take:])
                        chunk = chunk[:take]
                    out += chunk
                    self._buffered -= len(chunk)
                    continue
                if out and size is not None and size >= 0:
                    break  # return what there is rather than wait for a full read
                if self._ended:
                    break
                remaining = self._wait_until() - time.monotonic()
                if remaining <= 0:
                    self._ended = True
                    break
                self._cond.wait(remaining)
            resume = self.paused and self._buffered <= self._high_water // 2
            if resume:
                self.paused = False
        if resume:
            self._resume()
        return bytes(out)

    def _wait_until(self) -> float:
        """When the next byte is due: the body's deadline, or sooner at ``min_bytes_per_s``."""
        if self._min_rate <= 0 or self._start is None:
            return self._deadline
        due = self._start + self._grace_s + (self._fed + 1) / self._min_rate
        return min(self._deadline, due)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class Outcome:
    """What running the app produced, for the connection to send."""

    status: int = 500
    reason: bytes = b"Internal Server Error"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    rest: Iterable[bytes] | None = None
    """The remainder of a large body, to be sent chunk by chunk (``body`` comes first)."""
    parked: Any = None


def call_app(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Outcome:
    """Run the app on ``environ`` until its status, headers and first bytes are known."""
    outcome = Outcome()
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and outcome.parked is None and written:
            raise exc_info[1].with_traceback(exc_info[2])
        code, _, reason = status.partition(" ")
        outcome.status = int(code)
        outcome.reason = reason.encode("latin-1")
        outcome.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return written.append

    result = app(environ, start_response)
    parked = environ.get("barnraise.parked")
    if parked is not None:
        outcome.parked = parked
    iterator = iter(result)
    size = sum(map(len, written))
    try:
        while size <= WHOLE_RESPONSE_BYTES:
            chunk = next(iterator)
            if chunk:
                written.append(chunk)
                size += len(chunk)
    except StopIteration:
        close = getattr(result, "close", None)
        if close is not None:
            close()
        outcome.body = b"".join(written)
        return outcome
    outcome.body = b"".join(written)
    outcome.rest = _closing_rest(iterator, result)
    return outcome


def _closing_rest(iterator: Any, result: Any) -> Iterable[bytes]:
    try:
        yield from iterator
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
