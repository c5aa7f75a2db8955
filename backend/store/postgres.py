"""The PostgreSQL store: ``Store`` for several coordinator processes on one database.

Split by job as the SQLite store is:

    postgres             PostgresStore: connections, the writer lock, durability, batching
    postgres_reads       PostgresReads: ``sqlite_reads``' queries on psycopg (``?`` to ``%s``),
                         and the reads whose SQL differs
    postgres_writes      PostgresTx: ``SQLiteTx``'s statements through PostgresReads, and
                         the writes whose SQL differs (expiry order, claims, retention)
    postgres_rows        rows that read as ``sqlite3.Row``, for ``sqlite_rows``' converters
    postgres_migrations  the schema, numbered as ``migrations.py``, and applying it

**One writer, across processes.** Every ``write()`` holds one transaction-scoped advisory
lock (``pg_advisory_xact_lock(WRITER_LOCK_KEY)``) from its first statement to its commit,
so write transactions run one at a time in every process on the database, as SQLite's
``BEGIN IMMEDIATE`` makes them; inside a process a lock queues the threads first, so
each process has one writer connection and one waiter on the database's lock. The
transaction is READ COMMITTED: each statement after the lock sees every earlier writer's
commit, and no other writer commits until this one does, so what it reads stays true
until it commits (REPEATABLE READ would take its snapshot before the lock is granted).
Why not row locks or SERIALIZABLE:

- ``SELECT … FOR UPDATE SKIP LOCKED`` picks existing rows, and a lease picks none: it
  counts a round's leases and the contributor's, checks the share limits, and inserts a
  task; the same goes for an aggregation claim (which pending updates), settling credit and
  the organiser's actions. Locking "the count" means locking the project row in every
  transaction that could change it, an audit of every service that nothing enforces.
- SERIALIZABLE would abort one of two conflicting transactions, and every lease of a
  project conflicts with every other on the project row (the shard counter): the loser
  must run again, and the body of a ``with store.write()`` block is the caller's code,
  which a context manager cannot re-run. Only ``write_batched`` could retry.

So every check-then-act the services do inside ``write()`` is atomic here exactly as on
SQLite: a lease is never handed out twice, an aggregation is claimed once (the unique
partial index ``one_running_aggregation`` stays as the backstop, ``ClaimConflict`` as on
SQLite) and credit settles once (its state changes in the statement that reads it). What
PostgreSQL adds is many processes on many machines, and reads that never wait (a
REPEATABLE READ READ ONLY snapshot per ``read()``, from a connection pool).

**Durability (group commit).** Writes commit with ``synchronous_commit = off``, so a
commit returns without waiting for the disk and the writer lock is free at once. A durable
``write()`` then waits, after releasing the lock, for a WAL flush that covers its commit:
a one-statement transaction on a pooled connection writes a WAL record
(``pg_logical_emit_message``) and commits with ``synchronous_commit = on``, which flushes
the WAL up to that record, and so every commit before it, ours included (and waits for
synchronous standbys where there are any). PostgreSQL flushes concurrent waiters' WAL in
one fsync, so uploads arriving together share one, and leases never queue behind one; as
on SQLite, other transactions may read a durable write during its flush. A non-durable
write survives a crash of the coordinator (the server has it) but not one of the database
server before its WAL writer flushes it (within ``wal_writer_delay``, 200 ms by default);
a later durable write makes it durable too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.abc import Buffer
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg.types.numeric import FloatBinaryDumper, FloatDumper
from psycopg_pool import ConnectionPool

from backend.store.base import StoreOpenError
from backend.store.batching import BatchedWrite, WriteBatcher
from backend.store.postgres_migrations import LOCK_WRITER, apply_migrations, schema_version
from backend.store.postgres_notify import PeerLink, live_owners
from backend.store.postgres_writes import PostgresTx
from backend.store.sqlite_writer import BUSY_TIMEOUT_MS

T = TypeVar("T")

POOL_SIZE = 16
"""Read connections per process at most: one per thread of the embedded server's pool
(``backend.serving``, 16) reading at once. Writes use one more, their own; flushes share
this pool, and a serving process holds one more to listen to the others
(``postgres_notify``). Each is a server process: several coordinators x (``POOL_SIZE`` + 2)
must fit the server's ``max_connections`` (100 by default)."""

CONNECT_TIMEOUT_S = 10
"""How long opening the store waits for the server before saying it cannot be reached."""

_BEGIN_WRITE = f"BEGIN ISOLATION LEVEL READ COMMITTED; {LOCK_WRITER}"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_FLUSH = (
    "BEGIN; SET LOCAL synchronous_commit = on;"
    " SELECT pg_logical_emit_message(true, 'barnraise', 'flush'); COMMIT"
)
_WRITER_SESSION = f"SET synchronous_commit = off; SET lock_timeout = {int(BUSY_TIMEOUT_MS)}"
"""The writer's session: commits that do not wait for the disk (durable writes wait after
the lock, see the module docstring); a wait for another process's writer lock as long as
SQLite's busy timeout."""


class _NanAsNull(FloatDumper):
    """NaN is NULL, as SQLite stores it: a float column never holds a NaN on either store."""

    def dump(self, obj: float) -> Buffer | None:
        return None if obj != obj else super().dump(obj)


class _NanAsNullBinary(FloatBinaryDumper):
    def dump(self, obj: float) -> Buffer | None:
        return None if obj != obj else super().dump(obj)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_dumper(float, _NanAsNull)
    conn.adapters.register_dumper(float, _NanAsNullBinary)


def _configure_writer(conn: psycopg.Connection[Any]) -> None:
    _configure(conn)
    conn.execute(_WRITER_SESSION)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unreadable database URL)"
    params.pop("password", None)
    return make_conninfo("", **params)


class PostgresStore(WriteBatcher):
    """``Store`` on a PostgreSQL database; see the module docstring for the model.

    ``url`` is a libpq connection string or ``postgresql://`` URL. Opening it applies the
    migrations it lacks (``postgres_migrations``) and fails at once, with the reason, when
    the server cannot be reached."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.url = url
        self._closed = False
        self._peers: list[PeerLink] = []
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._init_batching()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": "barnraise",
            "connect_timeout": max(1, round(connect_timeout_s)),
        }
        self._kwargs = kwargs
        self._migrate(url, kwargs)
        self._writer: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=1,
            configure=_configure_writer,
            name="barnraise-writer",
            num_workers=1,
            open=True,
        )
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            configure=_configure,
            name="barnraise-readers",
            open=True,
        )
        try:
            self._writer.wait(connect_timeout_s)
            self._pool.wait(connect_timeout_s)
        except BaseException:
            self.close()  # the pools' threads and connections go with the failed open
            raise

    def _migrate(self, url: str, kwargs: dict[str, Any]) -> None:
        """On a connection of its own: the first contact says clearly what is wrong."""
        try:
            conn = psycopg.connect(url, **kwargs)
        except psycopg.OperationalError as exc:
            raise StoreOpenError(
                f"cannot connect to PostgreSQL at {redacted(url)}: {str(exc).strip()}; "
                "check the database URL and that the server is running"
            ) from exc
        with conn:
            _configure_writer(conn)
            apply_migrations(conn)
            try:
                conn.execute(_FLUSH)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise StoreOpenError(
                    "durable writes need pg_logical_emit_message: GRANT EXECUTE ON FUNCTION "
                    "pg_logical_emit_message(boolean, text, text) (PostgreSQL 17: "
                    "pg_logical_emit_message(boolean, text, text, boolean)) TO the "
                    "coordinator's role"
                ) from exc

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            return schema_version(conn)

    def connect_peers(
        self, owner: str, wake: Callable[[str], None] | None
    ) -> Callable[[str], None] | None:
        """Link this process to the others on the database (``postgres_notify``): the
        returned function sends a project's wake-up to them; with ``wake`` (a serving
        process) it also holds ``owner``'s liveness lock and calls ``wake(project)`` for
        each wake-up another process sends."""
        link = PeerLink(self._connect, self._pool.connection, owner, wake)
        link.start()
        self._peers.append(link)
        return link.send

    def _connect(self) -> psycopg.Connection[DictRow]:
        conn = psycopg.connect(self.url, **self._kwargs)
        _configure(conn)
        return conn

    def live_owners(self, owners: list[str]) -> set[str] | None:
        """Which of these claim owners' processes are running now, on any host."""
        with self._pool.connection() as conn:
            return live_owners(conn, owners)

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[PostgresTx]:
        """One serialised transaction, committed when the block ends without an exception.

        A durable write returns only once its commit is flushed (a flush shared with the
        writes committed around it); ``durable=False`` (leases, heartbeats, challenges)
        does not wait. A block that catches a database error and carries on cannot
        commit (PostgreSQL aborted the transaction): it raises instead of losing its
        writes silently."""
        with self._write_lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            with self._writer.connection() as conn:
                conn.execute(_BEGIN_WRITE)
                try:
                    yield PostgresTx(conn)
                except BaseException:
                    _rollback(conn)
                    raise
                if conn.info.transaction_status == pq.TransactionStatus.INERROR:
                    _rollback(conn)
                    raise RuntimeError(
                        "a statement failed inside this write and its error was caught: "
                        "PostgreSQL aborted the transaction and nothing of it was committed"
                    )
                conn.execute("COMMIT")
        if durable:
            self._flush()

    def write_batched(self, work: Callable[[PostgresTx], T]) -> T:
        """``work(tx)`` in a non-durable write, maybe in one transaction with other threads'.

        As ``SQLiteStore.write_batched``: threads arriving while the writer is busy queue;
        the leader runs up to ``MAX_WRITE_BATCH`` of them in one transaction, each in a
        savepoint (an exception undoes only its own changes and is raised to its caller).
        One lock, one BEGIN and one COMMIT per batch instead of per lease. ``work`` must be
        short, must not wait for other threads and must not call the store itself."""
        return self._batched(work)

    def _run_batch(self, batch: list[BatchedWrite]) -> None:
        """One transaction, a savepoint per item; each item gets its result or error."""
        try:
            with self.write(durable=False) as tx:
                conn = tx._pg
                conn.execute("SAVEPOINT batched_write")
                for i, item in enumerate(batch):
                    if i:  # one round trip between items: each is a statement's wait
                        conn.execute("RELEASE SAVEPOINT batched_write; SAVEPOINT batched_write")
                    try:
                        item.result = item.work(tx)
                    except BaseException as exc:  # the item's caller decides what it means
                        conn.execute("ROLLBACK TO SAVEPOINT batched_write")
                        item.error = exc
                conn.execute("RELEASE SAVEPOINT batched_write")
        except BaseException as exc:
            for item in batch:
                item.result, item.error = None, exc

    def wait_durable(self) -> None:
        """Block until every transaction committed so far, by any process, is flushed.

        For answers that acknowledge data another request wrote (an idempotent retry
        that finds the first upload's receipt): that request may still be in its flush."""
        if self._closed:
            raise RuntimeError("the store is closed")
        self._flush()

    def _flush(self) -> None:
        with self._pool.connection() as conn:
            conn.execute(_FLUSH)

    @contextmanager
    def read(self) -> Iterator[PostgresTx]:
        """A snapshot read; nested ``read()`` blocks in one thread share the outer snapshot.

        A read inside a ``write()`` block has its own connection and snapshot, and so does
        not see that write before it commits (as on SQLite)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        outer: PostgresTx | None = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        with self._pool.connection() as conn:
            conn.execute(_BEGIN_READ)
            tx = self._local.tx = PostgresTx(conn)
            try:
                yield tx
            finally:
                self._local.tx = None
                _rollback(conn)  # read only: nothing to commit, and it ends a failed one too

    def close(self) -> None:
        for link in self._peers:
            link.close()
        with self._write_lock:
            self._closed = True
            self._writer.close()
        self._pool.close()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """End the transaction; on a broken connection there is none left to end (the pool
    replaces the connection), and the error that broke it is the one to raise."""
    with contextlib.suppress(psycopg.OperationalError, psycopg.InterfaceError):
        conn.execute("ROLLBACK")
