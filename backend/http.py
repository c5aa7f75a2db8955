"""The request and response wrappers: bounded body reading, JSON, streaming to a temp file.

No body is ever read without a cap: JSON control bodies stop at ``JSON_BODY_LIMIT``
(64 KiB), uploads stream to disk in chunks under the project's cap while being hashed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import parse_qs

from backend.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, refusal
from backend.serving.parking import RESUMED
from backend.settings import JSON_BODY_LIMIT
from federated import protocol

T = TypeVar("T")

CHUNK = 256 * 1024


class Request:
    """One WSGI request. ``params`` are the captured path segments from the route."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = environ.get("PATH_INFO", "") or "/"
        self.query: dict[str, list[str]] = parse_qs(environ.get("QUERY_STRING", ""))
        self.params: dict[str, str] = {}
        self.client_id: str | None = None  # set once a bearer token authenticated the caller
        self.route_name = "unmatched"
        self.resumed = bool(environ.get(RESUMED))
        """A parked long poll run again by the server (``backend.serving.parking``)."""

    def header(self, name: str) -> str | None:
        key = "HTTP_" + name.upper().replace("-", "_")
        if name.lower() == "content-type":
            key = "CONTENT_TYPE"
        elif name.lower() == "content-length":
            key = "CONTENT_LENGTH"
        value = self.environ.get(key)
        return str(value) if value not in (None, "") else None

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def remote_addr(self) -> str:
        return str(self.environ.get("REMOTE_ADDR") or "-")

    @property
    def remote_network(self) -> str | None:
        """The caller's network, for share limits against Sybils: its IPv4 /24 or IPv6 /48
        (an IPv4-mapped IPv6 address counts as IPv4); None when the address is unknown."""
        try:
            addr = ipaddress.ip_address(self.remote_addr)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        prefix = 24 if addr.version == 4 else 48
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))

    def content_length(self) -> int | None:
        raw = self.header("content-length")
        if raw is None:
            return None
        try:
            length = int(raw)
        except ValueError:
            raise BadRequest(f"Content-Length {raw[:40]!r} is not a number") from None
        if length < 0:
            raise BadRequest("Content-Length must not be negative")
        return length

    def _input(self) -> IO[bytes]:
        stream: IO[bytes] = self.environ["wsgi.input"]
        return stream

    def read_body(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (413 payload_too_large beyond)."""
        length = self.content_length()
        if length is not None and length > limit:
            raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit} bytes")
        stream = self._input()
        if length is not None:
            return stream.read(length) if length else b""
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        return data

    def json_object(self, *, required: bool = True) -> dict[str, Any]:
        """The body as a JSON object (application/json, at most 64 KiB), parsed strictly:
        no duplicate keys, NaN or Infinity (``federated.protocol.parse_json``)."""
        ctype = (self.header("content-type") or "").split(";")[0].strip().lower()
        length = self.content_length()
        if not required and not length:
            return {}  # an empty body, with or without a content type, means "no arguments"
        if ctype != "application/json":
            raise UnsupportedMediaType(
                f"send this request as application/json, not {ctype or 'no content type'!r}"
            )
        raw = self.read_body(JSON_BODY_LIMIT)
        try:
            return protocol.parse_json(raw, what="the body")
        except protocol.ProtocolError as exc:
            raise refusal(exc) from None

    def message(self, type_: type[T]) -> T:
        """The body as a protocol message: unknown fields, wrong types and out-of-range
        values are 400 ``bad_request`` naming the field."""
        try:
            return protocol.convert(self.json_object(), type_, what="the body")
        except protocol.ProtocolError as exc:
            raise refusal(exc) from None

    def stream_to_file(self, fd: int, limit: int) -> tuple[str, int]:
        """Copy the body into ``fd`` (closed afterwards), hashing as it goes; 413 past ``limit``.

        Returns (sha256 hex, size). Nothing beyond ``limit`` + one chunk is ever read.
        """
        length = self.content_length()
        if length is not None and length > limit:
            os.close(fd)
            raise PayloadTooLarge(
                f"the update is {length} bytes; this project accepts at most {limit}"
            )
        h = hashlib.sha256()
        size = 0
        stream = self._input()
        remaining = length
        with os.fdopen(fd, "wb") as out:
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = stream.read(want)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the update exceeds this project's limit of {limit} bytes"
                    )
                h.update(chunk)
                out.write(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
        if remaining:
            raise BadRequest(
                f"the body ended {remaining} bytes short of its Content-Length (the "
                "connection was cut?); send it again",
                code="incomplete_body",
            )
        return h.hexdigest(), size


@dataclass
class Response:
    """What a handler returns. ``body`` is bytes, or an iterable of chunks for large files."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"

    @classmethod
    def json(
        cls, data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return cls(status, body.encode("utf-8"), list(headers or []), "application/json")

    @classmethod
    def empty(cls, status: int = 204, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, b"", list(headers or []), None)

    @classmethod
    def text(cls, text: str, content_type: str, status: int = 200) -> Response:
        return cls(status, text.encode("utf-8"), [], content_type)


def file_chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``path`` from ``start``, in chunks."""
    with open(path, "rb") as f:
        f.seek(start)
        remaining = length
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


HTTP_REASONS: dict[int, str] = {
    200: "OK",
    201: "Created",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}
