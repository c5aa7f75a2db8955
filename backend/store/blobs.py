"""Content-addressed blobs in a folder: ``blobs/ab/abcdef...`` named by their sha256.

A blob is written to a temp file in the same folder tree, fsynced, renamed into place and
the directory fsynced, so a blob either exists complete or not at all; writing the same
content twice is a no-op. Digests are validated by regex before they touch a path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from federated.files import fsync_dir
from federated.protocol import is_digest

CHUNK = 1024 * 1024


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

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
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="incoming-")
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
