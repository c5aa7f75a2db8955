"""Model downloads: by digest with ETag, If-None-Match and single byte ranges; current version."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from backend.errors import BadRequest, NotFound, RangeNotSatisfiable
from backend.http import Request, Response, file_chunks
from backend.ids import check_digest
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def current_model(app: App, req: Request, project: str) -> Response:
    record = app.coordinator.project(project)
    return Response.json(protocol.to_wire(app.coordinator.services.models.signed_model(record)))


def download_model(app: App, req: Request, project: str, digest: str) -> Response:
    check_digest(digest)
    record = app.coordinator.project(project)
    if not app.coordinator.model_known(record, digest):
        raise NotFound(f"project {project!r} has no model version with digest {digest}")
    etag = f'"{digest}"'
    headers = [
        ("ETag", etag),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", "public, max-age=31536000, immutable"),
    ]
    inm = req.header("if-none-match")
    if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return Response(304, b"", headers, None)
    path = app.coordinator.blobs.path(digest)
    size = path.stat().st_size
    byte_range = _parse_range(req.header("range"), size)
    if byte_range is None:
        headers.append(("Content-Length", str(size)))
        return Response(200, file_chunks(path, 0, size), headers, "application/octet-stream")
    start, end = byte_range
    headers += [
        ("Content-Range", f"bytes {start}-{end}/{size}"),
        ("Content-Length", str(end - start + 1)),
    ]
    return Response(
        206, file_chunks(path, start, end - start + 1), headers, "application/octet-stream"
    )


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single satisfiable range; None to send the whole body.

    Malformed or multi-range headers are ignored (RFC 9110 allows that); a well-formed
    range that starts past the end is 416. The header is bounded before it is read: longer
    than ``MAX_RANGE_HEADER_CHARS`` is 400, and a position of more than ``MAX_RANGE_DIGITS``
    digits is past the end of any model (416), so no huge number is ever converted.
    """
    if not header:
        return None
    if len(header) > protocol.limits.MAX_RANGE_HEADER_CHARS:
        raise BadRequest(
            f"the Range header is {len(header)} characters; at most "
            f"{protocol.limits.MAX_RANGE_HEADER_CHARS} (one range, e.g. bytes=1024-)"
        )
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = _position(m.group(1)), _position(m.group(2))
    if m.group(1) and first is None:
        raise RangeNotSatisfiable(
            f"the Range header's first byte ({len(m.group(1))} digits) is past the end; "
            f"the model is {size} bytes",
            headers=[("Content-Range", f"bytes */{size}")],
        )
    if first is not None:
        start = first
        # A last byte past the end means the end (RFC 9110 14.1.2), however many digits.
        end = last if last is not None else size - 1
        if start >= size:
            raise RangeNotSatisfiable(
                f"the range starts past the end; the model is {size} bytes",
                headers=[("Content-Range", f"bytes */{size}")],
            )
        if end < start:
            return None
    else:
        # A suffix longer than the model means all of it (RFC 9110 14.1.3).
        suffix = last if last is not None else size
        if suffix == 0:
            raise RangeNotSatisfiable(
                f"the range is empty; the model is {size} bytes",
                headers=[("Content-Range", f"bytes */{size}")],
            )
        start, end = max(0, size - suffix), size - 1
    if start >= size:
        raise RangeNotSatisfiable(
            f"the range starts past the end; the model is {size} bytes",
            headers=[("Content-Range", f"bytes */{size}")],
        )
    return start, min(end, size - 1)


def _position(digits: str) -> int | None:
    """A byte position of ``Range``; None when absent or longer than any model could be."""
    if not digits or len(digits.lstrip("0")) > protocol.limits.MAX_RANGE_DIGITS:
        return None
    return int(digits)
