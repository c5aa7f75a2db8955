"""The daily exports: ``users.json.gz`` and ``teams.json.gz``, cacheable (ETag, 304)."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import formatdate
from typing import TYPE_CHECKING, BinaryIO

from backend.http import CHUNK, Request, Response
from backend.services.exports import EXPORT_INTERVAL_S, ExportKind

if TYPE_CHECKING:
    from backend.wsgi import App

EXPORT_MEDIA_TYPE = "application/gzip"
"""The file itself is gzip (no Content-Encoding: a client keeps it as it came)."""


def users_export(app: App, req: Request, project: str) -> Response:
    return _export(app, req, project, "users")


def teams_export(app: App, req: Request, project: str) -> Response:
    return _export(app, req, project, "teams")


def _export(app: App, req: Request, project: str, kind: ExportKind) -> Response:
    coordinator = app.coordinator
    record = coordinator.project(project)
    export = coordinator.services.exports.open(record, kind)
    # Cacheable until the next one is due (a minute at least, so caches still help).
    fresh_for = int(max(60.0, export.generated_at + EXPORT_INTERVAL_S - coordinator.clock()))
    headers = [
        ("ETag", export.etag),
        ("Last-Modified", formatdate(export.generated_at, usegmt=True)),
        ("Cache-Control", f"public, max-age={fresh_for}"),
        ("Content-Disposition", f'attachment; filename="{record.name}-{kind}.json.gz"'),
    ]
    inm = req.header("if-none-match")
    if inm is not None and (
        inm.strip() == "*" or export.etag in [t.strip() for t in inm.split(",")]
    ):
        export.file.close()
        return Response(304, b"", headers, None)
    headers.append(("Content-Length", str(export.size)))
    return Response(200, _FileBody(export.file, export.size), headers, EXPORT_MEDIA_TYPE)


class _FileBody:
    """The open file's ``size`` bytes in chunks; ``close`` (the server's, or after the last
    chunk) closes the file, also when nothing was read (HEAD, a client gone)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        try:
            remaining = self._size
            while remaining > 0:
                chunk = self._f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            self._f.close()

    def close(self) -> None:
        self._f.close()
