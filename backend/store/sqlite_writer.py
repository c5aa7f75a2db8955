"""The SQLite store's concurrency: WAL mode, one writer connection, a reader per thread.

Writes go through one connection, serialised by a lock and ``BEGIN IMMEDIATE`` (which also
serialises against other processes sharing the file), so a check-then-act inside
``write()`` is atomic: leasing can never hand the same task out twice. Reads use a
connection per thread and see one snapshot per ``read()`` block.

Durability (group commit): the writer commits with ``synchronous = NORMAL``, which appends
the transaction to the WAL without waiting for the disk, and a durable ``write()`` then
fsyncs the WAL *after* releasing the writer lock, before it returns. One fsync covers every
transaction committed before it, so uploads arriving together share one, and leases (which
need no fsync) never queue behind one. A durable write returns only once its transaction
is on disk, as with ``synchronous = FULL``; other transactions may read it during that
fsync (what they derive from it, such as a lease, is not durable either). SQLite syncs the
WAL before each checkpoint and the database after it, so frames checkpointed meanwhile are
on disk as well. Where the WAL file cannot be opened for fsync (not POSIX), durable writes
fall back to ``synchronous = FULL`` inside the lock.

Batched writes (``write_batched``, used by leases and releases): threads that arrive
while the writer is busy queue their work; one of them (the leader) then runs up to
``MAX_WRITE_BATCH`` queued items in one ``BEGIN IMMEDIATE`` transaction, each inside its
own savepoint, so one item's exception rolls back only that item. It is still one writer
at a time (the batch holds the same lock and transaction as ``write()``), and each item
sees every earlier item's changes, so a task is never leased twice. What it saves is
per-item commits: each COMMIT appends every page it touched to the WAL (the tasks table
and its three indexes, the project and client rows), and a batch writes a shared page
once; and one lock handoff per batch instead of one per lease.

The statements themselves are in ``sqlite_reads`` and ``sqlite_writes`` (``SQLiteTx``);
this module only decides which connection runs them, in which transaction, and when
that transaction is on disk.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from backend.store.base import refuse_newer_schema
from backend.store.batching import BatchedWrite, WriteBatcher
from backend.store.migrations import MIGRATIONS
from backend.store.sqlite_writes import SQLiteTx

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
"""How long a connection waits for another process's write lock before failing."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: a commit is on disk before the client hears "accepted", even on power loss.
    # The writer switches to NORMAL and fsyncs the WAL itself (see the module docstring).
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class _WalSync:
    """Group commit: make every transaction committed so far durable with one WAL fsync.

    ``committed()`` is called under the writer lock after each COMMIT that changed
    something and returns its sequence number; ``wait(seq)`` returns once an fsync that
    started after that commit has finished. While one thread fsyncs, the others wait for
    it, then one of them fsyncs everything committed in the meantime.
    """

    def __init__(self, wal_path: Path) -> None:
        self._path = wal_path
        self._cond = threading.Condition()
        self._committed = 0
        self._synced = 0
        self._syncing = False
        self._fd: int | None = None

    def committed(self) -> int:
        with self._cond:
            self._committed += 1
            return self._committed

    def wait(self, seq: int | None = None) -> None:
        """Block until commit ``seq`` (default: every commit so far) is on disk."""
        while True:
            with self._cond:
                if seq is None:
                    seq = self._committed
                while self._syncing and self._synced < seq:
                    self._cond.wait()
                if self._synced >= seq:
                    return
                self._syncing = True
                target = self._committed
            try:
                self._fsync()
            except BaseException:
                with self._cond:
                    self._syncing = False
                    self._cond.notify_all()
                raise
            with self._cond:
                self._synced = max(self._synced, target)
                self._syncing = False
                self._cond.notify_all()

    def _fsync(self) -> None:
        fd = self._fd
        if fd is not None and os.fstat(fd).st_ino != _inode(self._path):
            os.close(fd)  # the WAL was deleted and made anew (every connection closed once)
            fd = self._fd = None
        if fd is None:
            fd = self._fd = os.open(self._path, os.O_RDONLY)
        (getattr(os, "fdatasync", None) or os.fsync)(fd)

    def close(self) -> None:
        with self._cond:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class SQLiteStore(WriteBatcher):
    """``Store`` on one SQLite file; see the module docstring for the concurrency model."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(self.path)
        mode = self._writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        self._write_lock = threading.Lock()
        self._durable = True
        self._wal_sync: _WalSync | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._init_batching()
        self._closed = False
        self._migrate()
        if os.name == "posix":
            self._wal_sync = _WalSync(self.path.with_name(self.path.name + "-wal"))
            self._writer.execute("PRAGMA synchronous = NORMAL")
            self._durable = False

    def _migrate(self) -> None:
        with self._write_lock:
            found = int(self._writer.execute("PRAGMA user_version").fetchone()[0])
            refuse_newer_schema(found, MIGRATIONS[-1][0], str(self.path))
            for number, statements in MIGRATIONS:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    current = int(self._writer.execute("PRAGMA user_version").fetchone()[0])
                    if current >= number:
                        self._writer.execute("COMMIT")
                        continue
                    for statement in statements:
                        self._writer.execute(statement)
                    self._writer.execute(f"PRAGMA user_version = {int(number)}")
                    self._writer.execute("COMMIT")
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise

    def schema_version(self) -> int:
        return int(self._writer.execute("PRAGMA user_version").fetchone()[0])

    def journal_mode(self) -> str:
        with self.read() as tx:
            return str(tx._c.execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[SQLiteTx]:
        """One serialised transaction, committed when the block ends without an exception.

        A durable write returns only once the transaction is on disk (an fsync shared with
        the writes committed around it; see the module docstring). ``durable=False``
        (leases, heartbeats, challenges) skips the fsync: such a write survives a crash of
        the process but may be lost with the machine's power; a later durable commit makes
        it durable too."""
        sync = self._wal_sync
        seq: int | None = None
        with self._write_lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            if sync is None and durable != self._durable:
                self._writer.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            changes = self._writer.total_changes
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTx(self._writer)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")
            if sync is not None and self._writer.total_changes != changes:
                seq = sync.committed()
        if durable and sync is not None:
            # Without changes of its own, a durable write may still have read (and its
            # caller may acknowledge) what another write committed and has not synced yet.
            sync.wait(seq)

    def write_batched(self, work: Callable[[SQLiteTx], T]) -> T:
        """``work(tx)`` in a non-durable write, maybe in one transaction with other threads'.

        Returns what ``work`` returns, or raises what it raised; its changes are rolled back
        on an exception (to a savepoint: the batch's other items still commit). If the
        transaction itself fails (BEGIN or COMMIT), every item in it raises that error.
        ``work`` runs on whichever thread leads the batch, after the items queued before it
        in the batch, holding the writer: it must be short, must not wait for other
        threads and must not call the store itself (use ``tx``). Like
        ``write(durable=False)``, a later durable write makes the result durable."""
        return self._batched(work)

    def _run_batch(self, batch: list[BatchedWrite]) -> None:
        """One transaction, a savepoint per item; each item gets its result or error."""
        try:
            with self.write(durable=False) as tx:
                conn = self._writer
                for item in batch:
                    conn.execute("SAVEPOINT batched_write")
                    try:
                        item.result = item.work(tx)
                    except BaseException as exc:  # the item's caller decides what it means
                        conn.execute("ROLLBACK TO batched_write")
                        item.error = exc
                    conn.execute("RELEASE batched_write")
        except BaseException as exc:
            for item in batch:
                item.result, item.error = None, exc

    def wait_durable(self) -> None:
        """Block until every transaction committed so far is on disk.

        For answers that acknowledge data another request wrote (an idempotent retry
        that finds the first upload's receipt): that request may still be in its fsync."""
        if self._wal_sync is not None:
            self._wal_sync.wait()

    def connect_peers(
        self, owner: str, wake: Callable[[str], None] | None
    ) -> Callable[[str], None] | None:
        """None: processes on one SQLite folder do not wake each other's long polls (those
        time out and look again); PostgreSQL's store does (LISTEN/NOTIFY)."""
        return None

    def live_owners(self, owners: list[str]) -> set[str] | None:
        """None: SQLite cannot tell (the worker checks process ids on this host)."""
        return None

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def read(self) -> Iterator[SQLiteTx]:
        """A snapshot read; nested ``read()`` blocks in one thread share the outer snapshot."""
        if self._closed:
            raise RuntimeError("the store is closed")
        conn = self._reader()
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield SQLiteTx(conn)
            finally:
                self._local.depth = depth
            return
        conn.execute("BEGIN")
        self._local.depth = 1
        try:
            yield SQLiteTx(conn)
        finally:
            self._local.depth = 0
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            self._writer.close()
            if self._wal_sync is not None:
                self._wal_sync.close()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._readers.clear()
