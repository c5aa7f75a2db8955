"""Lease, heartbeat, release, and update upload."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from backend.errors import FINAL_UPLOAD_CODES, BadRequest, HTTPError, UnsupportedMediaType
from backend.http import Request, Response
from backend.ids import check_server_id
from backend.services.upload_resume import parse_content_digest, parse_content_range
from backend.services.uploads import UploadAttempt
from backend.serving.parking import PARK, POLL_DEADLINE
from backend.settings import LONG_POLL_MAX_S, RETRY_AFTER_NO_WORK_S
from backend.store import ClientRecord, ProjectRecord
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App


def lease_task(app: App, req: Request, project: str) -> Response:
    with app.coordinator.snapshot():  # project and token in one read transaction
        record = app.coordinator.project(project)
        client = app.authenticate(req, record)
    req.json_object(required=False)
    raw_wait = req.query_value("wait") or "0"
    try:
        wait = float(raw_wait)
    except ValueError:
        raise BadRequest(f"wait={raw_wait[:20]!r} is not a number of seconds") from None
    if wait != wait:  # NaN
        raise BadRequest("wait must be a number of seconds")
    signed = lease_or_park(app, req, record, client, wait)
    if signed is None:
        return Response.empty(204, [("Retry-After", str(RETRY_AFTER_NO_WORK_S))])
    return Response.json(protocol.to_wire(signed))


def lease_or_park(
    app: App, req: Request, record: ProjectRecord, client: ClientRecord, wait: float
) -> protocol.SignedTask | None:
    """A task, or None. Under the embedded server a long poll with nothing to lease parks
    its connection (``backend.serving.parking``) instead of holding a thread: the 204
    returned then is sent only at the deadline, and a wake-up runs this request again."""
    leasing = app.coordinator.services.leasing
    park = req.environ.get(PARK)
    if park is None or wait <= 0:
        return leasing.lease(record, client, wait)
    notifier = app.coordinator.notifier
    deadline = req.environ.get(POLL_DEADLINE) or time.monotonic() + min(wait, LONG_POLL_MAX_S)
    seen = notifier.generation(record.name)
    signed = leasing.lease(record, client, 0)
    if signed is None and deadline > time.monotonic() and not notifier.closed:
        park(notifier, record.name, seen, deadline, client.id)
    return signed


def heartbeat_task(app: App, req: Request, project: str, task_id: str) -> Response:
    check_server_id(task_id, "task id")
    with app.coordinator.snapshot():  # project and token in one read transaction
        record = app.coordinator.project(project)
        client = app.authenticate(req, record)
    beat = app.coordinator.services.leasing.heartbeat(record, client, task_id)
    return Response.json(protocol.to_wire(beat))


def release_task(app: App, req: Request, project: str, task_id: str) -> Response:
    check_server_id(task_id, "task id")
    with app.coordinator.snapshot():  # project and token in one read transaction
        record = app.coordinator.project(project)
        client = app.authenticate(req, record)
    app.coordinator.release(record, client, task_id)
    app.coordinator.services.uploads.resume.discard(task_id)  # its partial upload goes too
    return Response.empty(204)


def upload_update(app: App, req: Request, project: str, task_id: str) -> Response:
    """Verify and store one update: (201, receipt), or (200, the first receipt) on retry;
    with ``Content-Range``, one chunk of a resumed upload (202 and the progress, until the
    last chunk completes it).

    The HTTP half of ``UploadService``: inside its ``attempt()`` block, so a refusal here
    (content type, missing headers, body too large) counts and, if final, ends the task
    like one found in the manifest or payload."""
    check_server_id(task_id, "task id")
    with app.coordinator.snapshot():  # project and token in one read transaction
        record = app.coordinator.project(project)
        client = app.authenticate(req, record)
    uploads = app.coordinator.services.uploads
    attempt: UploadAttempt | None = None
    try:
        with uploads.attempt(record, client, task_id) as attempt:
            attempt.source_net = req.remote_network
            limit = uploads.admit(attempt)  # project open: before anything of the body is read
            ctype = (req.header("content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/octet-stream":
                raise UnsupportedMediaType(
                    "send the update payload as application/octet-stream, not "
                    f"{ctype or 'no content type'!r}"
                )
            manifest_header = req.header("X-Barnraise-Manifest")
            signature = req.header("X-Barnraise-Signature")
            if not manifest_header or not signature:
                raise BadRequest("send the X-Barnraise-Manifest and X-Barnraise-Signature headers")
            content_range = req.header("content-range")
            if content_range is not None:
                return _upload_chunk(
                    app, req, attempt, manifest_header, signature, content_range, limit
                )
            fd, tmp = uploads.temp_file()
            try:
                try:
                    digest, size = req.stream_to_file(fd, limit)
                except HTTPError as exc:
                    if exc.code == "incomplete_body":  # cut: keep what arrived, for a resume
                        uploads.resume.keep_prefix(
                            record, client, task_id, manifest_header, signature, tmp,
                            req.content_length(), limit,
                        )  # fmt: skip
                    raise
                status, receipt = uploads.accept(
                    attempt, manifest_header, signature, tmp, digest, size
                )
            finally:
                tmp.unlink(missing_ok=True)
    except HTTPError as exc:
        if exc.code in FINAL_UPLOAD_CODES and attempt is not None and attempt.task is not None:
            uploads.resume.discard(task_id)  # the task is over: so is any partial of it
        raise
    uploads.resume.discard(task_id)
    return Response.json(protocol.to_wire(receipt), status=status)


def _upload_chunk(
    app: App,
    req: Request,
    attempt: UploadAttempt,
    manifest_header: str,
    signature: str,
    content_range: str,
    limit: int,
) -> Response:
    """One chunk of a resumed upload (``backend.services.upload_resume``)."""
    uploads = app.coordinator.services.uploads
    resume = uploads.resume
    rng = parse_content_range(content_range)
    expected = parse_content_digest(req.header("content-digest"))
    target = resume.target(
        attempt.project, attempt.client, attempt.task_id, manifest_header, signature
    )
    attempt.task = target.task
    if target.previous is not None:
        return Response.json(protocol.to_wire(target.previous), status=200)
    with resume.chunk(target, rng, req.content_length(), limit) as part:
        sha256_hex, size = req.stream_to_file(part.writer(), rng.length)
        part.check(sha256_hex, size, expected)
        if not part.complete:
            held = protocol.UploadProgress(
                payload_digest=target.digest, offset=rng.last + 1, length=rng.total
            )
            return Response.json(
                protocol.to_wire(held), status=202, headers=_progress_headers(held)
            )
        status, receipt = uploads.accept(
            attempt, manifest_header, signature, part.path, part.whole_digest(), rng.total
        )
    resume.discard(attempt.task_id)
    return Response.json(protocol.to_wire(receipt), status=status)


def upload_progress(app: App, req: Request, project: str, task_id: str) -> Response:
    """How much of a cut upload the coordinator holds, for the signed manifest sent."""
    check_server_id(task_id, "task id")
    with app.coordinator.snapshot():  # project and token in one read transaction
        record = app.coordinator.project(project)
        client = app.authenticate(req, record)
    manifest_header = req.header("X-Barnraise-Manifest")
    signature = req.header("X-Barnraise-Signature")
    if not manifest_header or not signature:
        raise BadRequest("send the upload's X-Barnraise-Manifest and X-Barnraise-Signature headers")
    resume = app.coordinator.services.uploads.resume
    target = resume.target(record, client, task_id, manifest_header, signature)
    held = resume.progress(target)
    return Response.json(protocol.to_wire(held), headers=_progress_headers(held))


def _progress_headers(held: protocol.UploadProgress) -> list[tuple[str, str]]:
    headers = [("Upload-Offset", str(held.offset)), ("Cache-Control", "no-store")]
    if held.length is not None:
        headers.append(("Upload-Length", str(held.length)))
    return headers
