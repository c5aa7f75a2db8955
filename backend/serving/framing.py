"""Strict request framing, checked on the raw header block before h11 parses it.

h11 already refuses a malformed request line, a header name with a space before its
colon, differing Content-Lengths, a missing Host and codings other than chunked. What
it tolerates, and a proxy in front may frame differently (request smuggling), is refused
here: bare LF line ends, folded (continuation) header lines, a repeated Content-Length
(even with equal values, or as a list), both Content-Length and Transfer-Encoding, a
Transfer-Encoding that is not exactly ``chunked``, and a repeated Host."""

from __future__ import annotations

import re


class FramingError(ValueError):
    """A request whose framing is ambiguous: answered 400, then the connection closes."""


HEAD_END = re.compile(rb"\n\r?\n")
"""The blank line ending a header block as h11 finds it: CRLF or a bare LF, so a block
ended by bare LFs is checked (and refused) too, not passed to h11 unscanned."""


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Offset just past the header block in ``buffer``, or -1 while it is incomplete.
    ``start``: where a blank line could begin, given the bytes already searched (so a
    header dribbled a byte at a time costs linear time, not quadratic)."""
    found = HEAD_END.search(buffer, start)
    return -1 if found is None else found.end()


def check_head(head: bytes) -> None:
    """Raise ``FramingError`` for a header block a proxy could read differently."""
    if head.count(b"\n") != head.count(b"\r\n"):
        raise FramingError("lines must end with CRLF, not a bare LF")
    counts: dict[bytes, int] = {}
    transfer_encoding = b""
    for line in head.split(b"\r\n")[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise FramingError("a header line must not begin with a space (obsolete folding)")
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # h11 refuses it with its own message
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        if key == b"transfer-encoding":
            transfer_encoding = value.strip().lower()
        elif key == b"content-length" and b"," in value:
            counts[key] += 1  # "2, 2": a list is Content-Length sent twice
    if counts.get(b"content-length", 0) > 1:
        raise FramingError("send Content-Length once")
    if counts.get(b"host", 0) > 1:
        raise FramingError("send Host once")
    if b"transfer-encoding" in counts:
        if counts[b"transfer-encoding"] > 1 or transfer_encoding != b"chunked":
            raise FramingError("the only Transfer-Encoding accepted is one 'chunked'")
        if b"content-length" in counts:
            raise FramingError("send Content-Length or Transfer-Encoding, not both")
