"""Content-addressed blobs in a folder: ``blobs/ab/abcdef...`` named by their sha256.

A blob is written to a temp file in the same folder tree, fsynced, renamed into place and
the directory fsynced, so a blob either exists complete or not at all; writing the same
content twice is a no-op. Digests are validated by regex before they touch a path.

Temp files (``tmp/incoming-PID-HOST-…``, an upload being verified) carry the pid of the
process that writes them and a tag of its host; opening the store removes those that a
process of this host no longer alive (or an earlier life of this pid) left behind, such as
an upload cut short by a crash. Where several hosts share the folder (a network
filesystem under coordinators on several machines), another host's pids mean nothing
here: its files are left to it, or removed once older than ``ORPHAN_AGE_S``.

Partial uploads (``partials/TASK.DIGEST.TOTAL``, beside ``tmp/``, the received prefix of a resumable
upload, ``backend.services.upload_resume``) live in the shared folder, not in one process,
so a resume that reaches another coordinator process finds them; their size is the offset
held. The orphan sweep leaves them (the upload service removes those of tasks no longer
live), except once older than ``ORPHAN_AGE_S``.

Update payloads are deleted by retention (``delete``), once the database no longer
promises them; models and strategy states never are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from federated.files import fsync_dir
from federated.protocol import is_digest, is_server_id

CHUNK = 1024 * 1024
ORPHAN_AGE_S = 24 * 3600.0
"""A temp file this old is an orphan whoever wrote it: no upload or model write lasts a day."""
HOST_TAG = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
"""This host in temp file names: eight hex digits, so names split on "-" unambiguously."""


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.partials_dir = self.root / "partials"
        self.partials_dir.mkdir(exist_ok=True)
        self.orphans_removed = self.remove_orphans()

    def remove_orphans(self) -> int:
        """Remove the temp files no live process is writing; how many were removed."""
        removed = 0
        now = time.time()
        for f in self.tmp_dir.iterdir():
            if not _orphan(f.name) and not _older(f, now - ORPHAN_AGE_S):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                f.unlink()
                removed += 1
        for f in self.partials_dir.iterdir():
            if _older(f, now - ORPHAN_AGE_S):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    f.unlink()
                    removed += 1
        return removed

    def partial_path(self, task_id: str, digest: str, total: int) -> Path:
        """Where the received prefix of ``task_id``'s upload of payload ``digest`` (``total``
        bytes) is kept. The task id is a server id (no dots), so the name splits back."""
        if not is_digest(digest) or not is_server_id(task_id) or total < 0:
            raise ValueError(f"not a partial upload: {task_id[:80]!r} {digest[:80]!r} {total}")
        return self.partials_dir / f"{task_id}.{digest}.{total}"

    def partials(self, task_id: str | None = None) -> list[tuple[str, str, int, Path]]:
        """The partial uploads held (of ``task_id`` only, if given): (task id, digest,
        total, path); a file of another name is not one of them."""
        found = []
        for f in self.partials_dir.iterdir():
            task, _, rest = f.name.partition(".")
            digest, _, total = rest.partition(".")
            if task_id is not None and task != task_id:
                continue
            if is_server_id(task) and is_digest(digest) and total.isdigit():
                found.append((task, digest, int(total), f))
        return found

    def discard_partials(self, task_id: str, keep: Path | None = None) -> int:
        """Remove ``task_id``'s partial uploads (but ``keep``); how many were removed."""
        removed = 0
        for _, _, _, path in self.partials(task_id):
            if path != keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a sha256 hex digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def temp_file(self) -> tuple[int, Path]:
        """An open descriptor and path of a new temp file on the blob filesystem."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"incoming-{os.getpid()}-{HOST_TAG}-")
        return fd, Path(name)

    def put(self, data: bytes) -> str:
        """Store ``data``; return its digest."""
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest
        fd, tmp = self.temp_file()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.adopt(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def adopt(self, tmp: Path, digest: str) -> Path:
        """Move a complete temp file whose sha256 is ``digest`` into place, durably."""
        final = self.path(digest)
        if final.is_file():
            tmp.unlink(missing_ok=True)
            return final
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return final

    def delete(self, digests: Iterable[str]) -> int:
        """Remove these blobs (those missing are skipped), durably: each folder a blob left
        is fsynced, so a deletion is not undone by a power cut. How many were removed.

        Only retention (``backend.services.retention``) deletes, and only blobs that the
        database has already stopped promising."""
        removed = 0
        folders: set[Path] = set()
        for digest in digests:
            path = self.path(digest)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            folders.add(path.parent)
        for folder in sorted(folders):
            fsync_dir(folder)
        return removed

    def digests(self) -> Iterator[str]:
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    if is_digest(f.name):
                        yield f.name

    def verify(self, digest: str) -> bool:
        """Whether the stored bytes still hash to ``digest``."""
        h = hashlib.sha256()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest() == digest


def _orphan(name: str) -> bool:
    """Whether the temp file ``name`` was left by a process of this host that is gone."""
    parts = name.split("-")
    pid = parts[1] if len(parts) >= 3 else ""
    if len(parts) >= 4 and len(parts[2]) == len(HOST_TAG) and parts[2] != HOST_TAG:
        return False  # another host's: its pid says nothing here
    return not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)))


def _older(path: Path, than: float) -> bool:
    try:
        return path.stat().st_mtime < than
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would end the process there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's, or cannot tell: keep its files
    return True
