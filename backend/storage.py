"""The data folder's disk: a full disk recognised and reported, and the folder kept private.

A write that fails for want of space (``ENOSPC``/``EDQUOT`` from the blob store, SQLite's
"database or disk is full") is answered ``507 insufficient_storage`` with ``Retry-After``
by the router, and ``StorageHealth`` remembers it: ``/healthz`` reports ``degraded`` (503,
``storage_full``) until a probe write of ``PROBE_BYTES`` succeeds again. Nothing that was
acknowledged is lost meanwhile: a failed write is a write that did not happen (a blob
lands whole or not at all; a SQLite transaction commits or rolls back), and a contributor
sends its update again after ``Retry-After``.

``private_folder`` and ``private_file`` make the data folder 0700 and the database 0600,
tightening them when they exist already (SQLite gives its ``-wal`` and ``-shm`` files the
database file's mode).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

STORAGE_RETRY_AFTER_S = 60
"""What a ``507`` tells a client to wait before sending its request again."""

PROBE_BYTES = 1024 * 1024
"""Once a write failed for want of space, the disk counts as full until this much can be
written (and synced) again."""

PROBE_PREFIX = "probe-"

_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


POSTGRES_DISK_FULL = "53100"
"""PostgreSQL's SQLSTATE disk_full (on psycopg errors as ``sqlstate``)."""


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a write that failed for want of space."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if isinstance(seen, sqlite3.OperationalError) and (
            getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(seen)
        ):
            return True
        if getattr(seen, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
        seen = seen.__cause__
    return False


class StorageHealth:
    """Whether writes to the data folder fail for want of space. Thread-safe.

    ``failed()`` marks the disk full; ``degraded()`` answers True while it is, trying a
    probe write in ``folder`` (the blob store's temp folder) each time it is asked, and
    clears the mark once the probe succeeds."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._full = False

    def failed(self) -> None:
        with self._lock:
            self._full = True

    def degraded(self) -> bool:
        with self._lock:
            if not self._full:
                return False
        if not self._probe():
            return True
        with self._lock:
            self._full = False
        log.warning("the data folder's disk has room again")
        return False

    def _probe(self) -> bool:
        fd, name = -1, ""
        try:
            fd, name = tempfile.mkstemp(dir=self._folder, prefix=f"{PROBE_PREFIX}{os.getpid()}-")
            block = bytes(64 * 1024)
            for _ in range(PROBE_BYTES // len(block)):
                os.write(fd, block)
            os.fsync(fd)
            return True
        except OSError as exc:
            if is_storage_full(exc):
                return False
            raise
        finally:
            if fd >= 0:
                os.close(fd)
            if name:
                os.unlink(name)


def private_folder(path: Path) -> None:
    """``path`` exists and only its owner may enter it (0700; an existing one is tightened)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """``path`` exists (empty if new) and only its owner may read it (0600, tightened)."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    _tighten(path, 0o600)


def _tighten(path: Path, allowed: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~allowed:
        try:
            os.chmod(path, mode & allowed)
        except PermissionError:
            log.warning("could not make %s private (mode %o): not its owner", path, mode)
