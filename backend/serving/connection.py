"""One client connection on the event loop: strict framing, deadlines, and handing each
complete request to a worker thread (or parking it)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import h11

from backend.serving.answers import error_bytes, internal_error, raw_response
from backend.serving.framing import FramingError, check_head, head_end
from backend.serving.parking import PARK, PARKED, POLL_DEADLINE, RESUMED, Ticket
from backend.serving.wsgi_call import Outcome, StreamedBody, build_environ, call_app

if TYPE_CHECKING:
    from backend.serving.server import Server

log = logging.getLogger("backend.serving")

BODY = "barnraise.body"
"""The buffered body in the base environ, so a parked request can run again."""

DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_S = 5.0
"""After answering a request whose body was not read (a refused upload), up to this much
of it is read and dropped so the client sees the answer rather than a reset."""


class Connection(asyncio.Protocol):
    """An HTTP/1.1 connection: reading, framing and deadlines on the loop thread; the app
    in a worker thread; at most one request in flight (pipelined ones wait, unread)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.header_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("-", 0)
        self._scan = bytearray()
        self._scanning = True
        self._timer: asyncio.TimerHandle | None = None
        self._timer_idle = False
        self._request: h11.Request | None = None
        self._environ: dict[str, Any] | None = None
        self._body = bytearray()
        self._buffering = False
        self._stream: StreamedBody | None = None
        self._in_app = False
        self._parked_answer: Outcome | None = None
        self._writable = threading.Event()
        self._writable.set()
        self._write_timer: asyncio.TimerHandle | None = None
        self._draining = 0
        self._closed = False
        self.admitted = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        refusal = self.server.admit(self)
        if refusal is not None:
            transport.write(raw_response(refusal))
            self._close()
            return
        self._arm(self.limits.idle_timeout_s, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        if self._stream is not None:
            self._stream.end()
        self._writable.set()  # a worker waiting to write gives up
        self.server.parking.forget(self)
        self.server.release(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._draining:
            self._drain(data)
            return
        if self._parked_answer is not None or (self._in_app and self._stream is None):
            self._pause_reading()  # pipelined: it waits in h11 until this request is answered
        if self._scanning and not self._scan_head(data):
            return
        self.h11.receive_data(data)
        self._advance()

    def eof_received(self) -> bool | None:
        """The client will send nothing more. Keep the socket open to answer a request in
        the app (a half-closing client still reads); otherwise close."""
        self.h11.receive_data(b"")
        self._advance()
        return True if self._in_app else None

    def pause_writing(self) -> None:
        self._writable.clear()
        self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._abort)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._writable.set()

    # ------------------------------------------------------------------ reading

    def _scan_head(self, data: bytes) -> bool:
        """Check the raw header block once it is complete; False when the request was refused."""
        if not self._scan and self._timer_is_idle:
            self._arm(self.limits.header_timeout_s, self._header_timeout)
        searched = max(0, len(self._scan) - 2)  # a blank line may straddle the last chunk
        self._scan += data
        end = head_end(self._scan, searched)
        if end < 0 or end > self.limits.header_bytes:  # an oversized block arriving whole too
            if len(self._scan) > self.limits.header_bytes:
                self._refuse("headers_too_large",
                             f"send at most {self.limits.header_bytes} bytes of request line and headers")  # fmt: skip
                return False
            return True
        try:
            check_head(bytes(self._scan[:end]))
        except FramingError as exc:
            self._refuse("bad_request", str(exc))
            return False
        self._scanning = False
        self._scan.clear()
        return True

    def _reading_events(self) -> bool:
        if self._closed:
            return False
        if self._stream is not None:  # the app reads this body while it arrives
            return self.h11.their_state is h11.SEND_BODY
        return not self._in_app and self._parked_answer is None

    def _advance(self) -> None:
        while self._reading_events():
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                too_large = exc.error_status_hint == 431
                self._refuse("headers_too_large" if too_large else "bad_request", str(exc))
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                self._pause_reading()
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._on_end()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self._cancel_timer()
        self._request = request
        length: int | None = None
        chunked = False
        for name, value in request.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        limits = self.limits
        if length is not None and length > limits.max_body_bytes:
            self._refuse("payload_too_large",
                         f"the body is {length} bytes; this server takes at most {limits.max_body_bytes}")  # fmt: skip
            return
        self._environ = build_environ(
            request,
            server_name=self.server.server_name,
            server_port=self.server.port,
            peer=self.peer,
            scheme=self.server.scheme,
        )
        if (length or 0) > limits.buffered_body_bytes:
            self._stream_body(limits.body_deadline_s(length or 0), b"")
            return
        # Small, or chunked: read here first (no thread held while it comes); a chunked
        # body that outgrows buffered_body_bytes is streamed from then on (_on_data).
        self._buffering = True
        self._body.clear()
        if length or chunked:
            self._send_continue()
            expected = length or limits.buffered_body_bytes
            self._arm(limits.body_deadline_s(expected), self._body_timeout)

    def _stream_body(self, seconds: float, head: bytes) -> None:
        """Run the app now, reading the body as it arrives; ``head``: what came already."""
        assert self._environ is not None
        limits = self.limits
        self._buffering = False
        self._stream = StreamedBody(
            time.monotonic() + seconds,
            resume=lambda: self.loop.call_soon_threadsafe(self._resume_reading),
            on_first_read=lambda: self.loop.call_soon_threadsafe(self._send_continue),
            grace_s=limits.body_grace_s,
            min_bytes_per_s=limits.body_min_bytes_per_s,
        )
        if head and self._stream.feed(head):
            self._pause_reading()
        self._environ["wsgi.input"] = self._stream
        self._arm(seconds, self._body_timeout)
        self._dispatch(self._environ)

    def _on_data(self, data: bytes) -> None:
        if self._stream is not None:
            if self._stream.feed(data):
                self._pause_reading()
        elif self._buffering:
            self._body += data
            if len(self._body) > self.limits.buffered_body_bytes:  # chunked, and large
                head = bytes(self._body)
                self._body.clear()
                self._stream_body(self.limits.body_deadline_s(self.limits.max_body_bytes), head)

    def _on_end(self) -> None:
        if self._stream is not None:
            self._stream.end()
            self._cancel_timer()
            self._pause_reading()  # a pipelined next request waits until this one is answered
        elif self._buffering:
            self._buffering = False
            self._cancel_timer()
            assert self._environ is not None
            self._environ[BODY] = bytes(self._body)
            self._body.clear()
            self._pause_reading()
            self._dispatch(self._environ)

    def _send_continue(self) -> None:
        if self._closed or self.h11.their_state is not h11.SEND_BODY:
            return
        if self.h11.client_is_waiting_for_100_continue:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))

    # ------------------------------------------------------------------ the app

    def _dispatch(self, base: dict[str, Any], *, resumed: bool = False) -> None:
        environ = dict(base)
        if BODY in base:
            environ["wsgi.input"] = io.BytesIO(base[BODY])

            def park(
                source: Any, key: str, seen: int, deadline: float, owner: str | None = None
            ) -> bool:
                """``environ[PARK]``, called by the app in its worker thread."""
                environ[PARKED] = Ticket(source, key, seen, deadline, owner)
                base[POLL_DEADLINE] = deadline
                return True

            environ[PARK] = park  # a streamed body could not be replayed: no parking then
        if resumed:
            environ[RESUMED] = True
        self._in_app = True
        self.server.submit(self, environ)

    def run_in_worker(self, environ: dict[str, Any]) -> None:
        """The worker thread's job: run the app, then send or park its answer."""
        try:
            outcome = call_app(self.server.app, environ)
        except Exception:
            outcome = internal_error(
                f"on {environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO', '')[:200]}"
            )
        if outcome.parked is not None:
            self.loop.call_soon_threadsafe(self._park, outcome)
            return
        self._send_outcome(outcome)

    def _park(self, outcome: Outcome) -> None:
        self._in_app = False
        if self._closed:
            return
        self._parked_answer = outcome
        self._resume_reading()  # to notice a client that goes away while it waits
        self.server.parking.park(self, outcome.parked)

    def resume(self) -> None:
        """Called by ``Parking``: run the parked request again."""
        if self._closed or self._environ is None:
            return
        self._parked_answer = None
        self._dispatch(self._environ, resumed=True)

    def answer_parked(self) -> None:
        """Called by ``Parking``: send the answer the app gave when it parked."""
        outcome, self._parked_answer = self._parked_answer, None
        if outcome is None or self._closed:
            return
        outcome.parked = None
        self._in_app = True
        self._respond(outcome, True)

    def _send_outcome(self, outcome: Outcome) -> None:
        """Worker thread: hand the answer to the loop, a chunk at a time for large bodies."""
        call = self.loop.call_soon_threadsafe
        if outcome.rest is None:
            call(self._respond, outcome, True)
            return
        self._writable.clear()
        call(self._respond, outcome, False)
        try:
            for chunk in outcome.rest:
                if not self._writable.wait(self.limits.write_timeout_s) or self._closed:
                    call(self._abort)
                    return
                if chunk:
                    self._writable.clear()
                    call(self._respond_data, chunk)
            if self._writable.wait(self.limits.write_timeout_s):
                call(self._respond_end)
        except Exception:
            log.exception("the app failed while sending its body; the connection is closed")
            call(self._abort)

    # ------------------------------------------------------------------ writing (loop)

    def _respond(self, outcome: Outcome, whole: bool) -> None:
        if self._closed:
            return
        headers = list(outcome.headers) + self.server.response_headers()
        if self.h11.their_state is h11.SEND_BODY:  # its body unread: drained, then closed
            headers.append((b"Connection", b"close"))
        try:
            data = self.h11.send(
                h11.Response(status_code=outcome.status, headers=headers, reason=outcome.reason)
            )
            if outcome.body:
                data += self.h11.send(h11.Data(data=outcome.body))
            if whole:
                data += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            log.error("the app's answer is not valid HTTP (%s); the connection is closed", exc)
            self._abort()
            return
        self._write(data)
        if whole:
            self._request_done()
        else:
            self._mark_writable()

    def _respond_data(self, chunk: bytes) -> None:
        if self._closed:
            return
        try:
            self._write(self.h11.send(h11.Data(data=chunk)))
        except h11.LocalProtocolError as exc:
            log.error("the app's body does not match its headers (%s)", exc)
            self._abort()
            return
        self._mark_writable()

    def _respond_end(self) -> None:
        if self._closed:
            return
        try:
            self._write(self.h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            log.error("the app's body does not match its headers (%s)", exc)
            self._abort()
            return
        self._request_done()

    def _mark_writable(self) -> None:
        if self.transport is not None and self.transport.get_write_buffer_size() <= 64 * 1024:
            self._writable.set()
        # otherwise pause_writing was or will be called, and resume_writing sets it

    def _request_done(self) -> None:
        self._in_app = False
        self.server.parking.finished(self)
        self._stream = None
        self._environ = None
        self._request = None
        if self.h11.their_state is h11.SEND_BODY:  # before MUST_CLOSE: a reset loses the answer
            self._draining = DRAIN_BYTES  # the app answered without reading the body
            self._arm(DRAIN_S, self._close)
            self._resume_reading()
            return
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self._close()
            return
        if self.h11.their_state is not h11.DONE or self.h11.our_state is not h11.DONE:
            self._close()
            return
        self.h11.start_next_cycle()
        pending = bytes(self.h11.trailing_data[0])
        self._scanning = True
        self._scan.clear()
        self._arm(self.limits.idle_timeout_s, self._idle_timeout)
        self._resume_reading()
        if pending and self._scan_head(pending):  # a pipelined request, already in h11
            self._advance()

    def _drain(self, data: bytes) -> None:
        self._draining -= len(data)
        try:
            self.h11.receive_data(data)
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    self._close()
                    return
        except h11.RemoteProtocolError:
            self._close()
            return
        if self._draining <= 0:
            self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    # ------------------------------------------------------------------ refusals, timers

    def _refuse(self, code: str, message: str) -> None:
        """Answer a request the app never sees, and close."""
        if self._in_app or self._closed:
            self._close()
            return
        self._write(raw_response(error_bytes(code, message)))
        self._close()

    @property
    def _timer_is_idle(self) -> bool:
        return self._timer is not None and self._timer_idle

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)
        self._timer_idle = callback == self._idle_timeout

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_timeout(self) -> None:
        self._close()

    def _header_timeout(self) -> None:
        self._refuse("request_timeout",
                     f"the request line and headers must arrive within {self.limits.header_timeout_s:g} s")  # fmt: skip

    def _body_timeout(self) -> None:
        if self._stream is not None:
            self._stream.end()  # the app reads end of body and answers incomplete_body
            return
        self._refuse("request_timeout", "the body did not arrive in time")

    def _pause_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self._closed and not self.transport.is_reading():
            self.transport.resume_reading()

    def _close(self) -> None:
        self._closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self._closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def close_now(self) -> None:
        self._abort()
