"""Resumable uploads: the received prefix of a cut upload is kept, and only the rest is sent.

An upload is first sent whole (``PUT …/update``). When its body is cut short, the prefix
that arrived is kept as the task's partial upload if the request was signed by the owner
of the live lease (``keep_prefix``). The contributor asks how much is held (``GET
…/update`` with the same signed manifest: ``progress``) and sends the rest in chunks, each
a ``PUT`` with ``Content-Range: bytes FIRST-LAST/TOTAL`` and ``Content-Digest:
sha-256=:B64:`` (RFC 9530) of that chunk (``chunk``). A chunk is written straight into the
partial file at its offset and checked against its digest; a chunk refused or cut short
is cut off again (the file is truncated to where it started), so the partial only ever
holds a prefix of what the contributor sent. When the last chunk arrives, the whole file
is hashed and goes through the normal verification pipeline (``UploadService.accept``)
once: the manifest's payload digest is still what decides, and the receipt and credit are
given once.

Bounded, whoever sends: a partial is only for the owner of a live lease (the manifest's
signature is checked before a byte is written), one per task (a new one replaces the
task's others), never over the project's ``max_payload_bytes``, and nothing of a chunk is
held in memory (it streams to the file). The state is the file itself, in the shared data
folder (``BlobStore.partial_path``: its size is the offset), and a ``flock`` on it keeps
two requests (two coordinator processes) from writing one upload at once, so a resume
that reaches another process behind the same load balancer works. Partials of tasks no
longer live (answered, rejected, expired, released) are removed: at once where this
process ends the task, otherwise by ``sweep`` (at start-up and whenever a new one is made).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backend.errors import HTTPError, api_error, refusal
from backend.services.context import ServiceContext
from backend.services.inputs import b64decode_field
from backend.services.standings import receipt
from backend.services.tasks import check_live, owned_task
from backend.store import ClientRecord, ProjectRecord, TaskRecord
from federated import protocol
from federated.errors import SignatureError
from federated.protocol import limits
from federated.signing import verify_bytes

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$")
_CONTENT_DIGEST = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/]{43}=):\s*(?:,|$)")
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ContentRange:
    """``bytes FIRST-LAST/TOTAL``: this request's body is bytes FIRST..LAST (inclusive)."""

    first: int
    last: int
    total: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def parse_content_range(header: str) -> ContentRange:
    """The chunk a resumed upload's ``Content-Range`` names; 400 ``bad_content_range``."""
    if len(header) > limits.MAX_CONTENT_RANGE_CHARS:
        raise api_error(
            "bad_content_range",
            f"Content-Range is {len(header)} characters; send bytes FIRST-LAST/TOTAL",
        )
    m = _CONTENT_RANGE.match(header.strip())
    if m is None:
        raise api_error(
            "bad_content_range",
            "Content-Range must be bytes FIRST-LAST/TOTAL (decimal byte positions, the "
            "total known); ask GET …/update where to start",
        )
    first, last, total = (int(g) for g in m.groups())
    if not first <= last < total:
        raise api_error(
            "bad_content_range",
            f"Content-Range bytes {first}-{last}/{total} is not a range within the payload",
        )
    return ContentRange(first, last, total)


def parse_content_digest(header: str | None) -> bytes:
    """The sha-256 a resumed chunk's ``Content-Digest`` names (RFC 9530); 400
    ``bad_content_digest`` when missing, too long or without a sha-256 of 32 bytes."""
    if not header:
        raise api_error(
            "bad_content_digest",
            "a resumed chunk needs Content-Digest: sha-256=:<base64 of its sha256>:",
        )
    if len(header) > limits.MAX_CONTENT_DIGEST_CHARS:
        raise api_error("bad_content_digest", f"Content-Digest is {len(header)} characters")
    m = _CONTENT_DIGEST.search(header)
    if m is None:
        raise api_error(
            "bad_content_digest", "Content-Digest must hold sha-256=:<base64 of 32 bytes>:"
        )
    try:
        raw = base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise api_error("bad_content_digest", "Content-Digest is not valid base64") from None
    if len(raw) != 32:
        raise api_error("bad_content_digest", "Content-Digest's sha-256 must be 32 bytes")
    return raw


@dataclass(frozen=True)
class UploadTarget:
    """A signed upload of a task the caller may send: the task, the payload digest its
    manifest names, and the receipt if the task already has that update."""

    task: TaskRecord
    digest: str
    previous: protocol.Receipt | None = None


def signed_manifest(client: ClientRecord, manifest_header: str, signature: str) -> dict:
    """The manifest header's fields: strict, canonical, and signed by ``client``."""
    manifest_bytes = b64decode_field(manifest_header, "X-Barnraise-Manifest")
    try:
        fields = protocol.parse_json(manifest_bytes, what="X-Barnraise-Manifest", canonical=True)
    except protocol.ProtocolError as exc:
        raise refusal(exc) from None
    try:
        verify_bytes(client.public_key, manifest_bytes, signature)
    except SignatureError as exc:
        raise api_error("bad_signature", f"the update signature does not verify: {exc}") from None
    return fields


class PartialChunk:
    """One chunk being written into a partial upload, under its lock."""

    def __init__(self, fd: int, path: Path, rng: ContentRange) -> None:
        self.fd, self.path, self.range = fd, path, rng
        self.stored = False

    @property
    def complete(self) -> bool:
        return self.range.last + 1 == self.range.total

    def writer(self) -> int:
        """A descriptor at the chunk's offset, for the body (the caller closes it)."""
        fd = os.dup(self.fd)
        os.lseek(fd, self.range.first, os.SEEK_SET)
        return fd

    def check(self, sha256_hex: str, size: int, expected: bytes) -> None:
        """The chunk arrived whole and is what ``Content-Digest`` says, else 400."""
        if size != self.range.length or bytes.fromhex(sha256_hex) != expected:
            raise api_error(
                "chunk_digest_mismatch",
                "the chunk is not what its Content-Digest names (it was not stored); send it again",
            )
        self.stored = True

    def whole_digest(self) -> str:
        """The sha256 hex of the assembled payload, read back in chunks."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(_HASH_CHUNK):
                h.update(block)
        return h.hexdigest()


class ResumableUploads:
    """Partial uploads in the blob store's ``partials/`` folder (see the module doc)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        try:
            self.sweep()
        except Exception:  # the store may be read-only or unreachable for a command
            log.exception("could not sweep partial uploads at start-up")

    def target(
        self,
        project: ProjectRecord,
        client: ClientRecord,
        task_id: str,
        manifest_header: str,
        signature: str,
    ) -> UploadTarget:
        """Who may hold a partial: the signature verifies, the caller owns the task, and
        the task is live (or already answered with this very payload)."""
        ctx = self._ctx
        fields = signed_manifest(client, manifest_header, signature)
        digest = fields.get("payload_digest")
        if not isinstance(digest, str) or not protocol.is_digest(digest):
            raise api_error(
                "manifest_mismatch", "the manifest's payload_digest must be a sha256 hex digest"
            )
        task = owned_task(ctx, project, client, task_id)
        with ctx.store.read() as tx:
            previous = tx.update_for_task(task_id)
        if previous is not None:
            if previous.payload_digest == digest:
                return UploadTarget(task, digest, receipt(previous))
            raise api_error(
                "task_already_answered", f"task {task_id!r} already has an accepted update"
            )
        check_live(task, ctx.clock())
        return UploadTarget(task, digest)

    def progress(self, target: UploadTarget) -> protocol.UploadProgress:
        """How much of ``target``'s payload is held."""
        if target.previous is not None:
            return protocol.UploadProgress(
                payload_digest=target.digest, offset=0, receipt=target.previous
            )
        for _, digest, total, path in self._ctx.blobs.partials(target.task.id):
            if digest == target.digest:
                with contextlib.suppress(FileNotFoundError):
                    held = path.stat().st_size
                    return protocol.UploadProgress(
                        payload_digest=digest, offset=min(held, total), length=total
                    )
        return protocol.UploadProgress(payload_digest=target.digest, offset=0)

    def keep_prefix(
        self,
        project: ProjectRecord,
        client: ClientRecord,
        task_id: str,
        manifest_header: str | None,
        signature: str | None,
        tmp: Path,
        total: int | None,
        limit: int,
    ) -> None:
        """After a whole upload was cut short: keep what arrived of it in ``tmp`` as the
        task's partial, if the request may hold one (else nothing; ``tmp`` is the
        caller's to remove)."""
        if not manifest_header or not signature or total is None or total > limit:
            return
        try:
            target = self.target(project, client, task_id, manifest_header, signature)
            size = tmp.stat().st_size
        except (HTTPError, OSError):
            return  # not the owner of a live lease, or nothing arrived: nothing is kept
        if target.previous is not None or not 0 < size < total:
            return
        blobs = self._ctx.blobs
        path = blobs.partial_path(task_id, target.digest, total)
        self.sweep()
        blobs.discard_partials(task_id, keep=path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_size < size:  # keep the longer prefix
                os.replace(tmp, path)
        except OSError:  # another request writes it now (BlockingIOError), or no space
            return
        finally:
            os.close(fd)

    @contextmanager
    def chunk(
        self, target: UploadTarget, rng: ContentRange, content_length: int | None, limit: int
    ) -> Iterator[PartialChunk]:
        """Lock the partial and check that ``rng`` continues it; the block writes the chunk
        (``PartialChunk.writer``) and checks it. On any error in the block the partial is
        cut back to where the chunk started; once the last chunk was stored, an error (the
        pipeline refused the update) removes the partial."""
        if rng.total > limit:
            raise api_error(
                "payload_too_large",
                f"the update is {rng.total} bytes; this project accepts at most {limit}",
            )
        if content_length != rng.length:
            raise api_error(
                "bad_content_range",
                f"Content-Range names {rng.length} bytes but the body is "
                f"{content_length if content_length is not None else 'of unknown length'}",
            )
        blobs = self._ctx.blobs
        task_id = target.task.id
        path = blobs.partial_path(task_id, target.digest, rng.total)
        if rng.first == 0:
            self.sweep()
            blobs.discard_partials(task_id, keep=path)
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if rng.first == 0 else 0), 0o600)
        except FileNotFoundError:
            others = [t for _, d, t, _ in blobs.partials(task_id) if d == target.digest]
            if others:
                raise api_error(
                    "bad_content_range",
                    f"Content-Range says the payload is {rng.total} bytes; the upload "
                    f"held is of {others[0]}",
                ) from None
            raise self._offset_mismatch(rng, 0) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise api_error(
                    "upload_in_progress",
                    "another request is still sending this upload; ask GET …/update how "
                    "much is held after Retry-After",
                    retry_after=limits.UPLOAD_BUSY_RETRY_S,
                ) from None
            stat = os.fstat(fd)
            if stat.st_nlink == 0:  # finished or replaced while we waited for it
                raise api_error(
                    "upload_in_progress",
                    "this upload was just finished or replaced; ask GET …/update again",
                    retry_after=limits.UPLOAD_BUSY_RETRY_S,
                )
            held = stat.st_size
            try:
                if rng.first != held:
                    raise self._offset_mismatch(rng, held)
                part = PartialChunk(fd, path, rng)
                try:
                    yield part
                except BaseException:
                    if part.stored and part.complete:
                        path.unlink(missing_ok=True)  # refused as a whole: the task is over
                    else:
                        os.ftruncate(fd, held)
                    raise
            finally:
                if held == 0 and os.fstat(fd).st_size == 0:
                    path.unlink(missing_ok=True)  # an empty partial is never left behind
        finally:
            os.close(fd)

    @staticmethod
    def _offset_mismatch(rng: ContentRange, held: int) -> HTTPError:
        error = api_error(
            "upload_offset_mismatch",
            f"the chunk starts at byte {rng.first} but {held} bytes are held; send the rest "
            f"from byte {held}",
        )
        error.extra_headers.append(("Upload-Offset", str(held)))
        return error

    def discard(self, task_id: str) -> None:
        """The task ended: its partial uploads go."""
        self._ctx.blobs.discard_partials(task_id)

    def sweep(self) -> int:
        """Remove the partial uploads of tasks that are not live; how many were removed."""
        blobs = self._ctx.blobs
        held = blobs.partials()
        if not held:
            return 0
        now = self._ctx.clock()
        removed = 0
        with self._ctx.store.read() as tx:
            tasks = {task_id: tx.task(task_id) for task_id, _, _, _ in held}
        for task_id, _, _, path in held:
            task = tasks[task_id]
            if task is None or task.status != "leased" or task.deadline < now:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed
