"""The embedded store: SQLite in WAL mode, one writer connection, a reader per thread.

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
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from backend.store.base import (
    AggregationClaim,
    ClaimConflict,
    ClientRecord,
    ProjectRecord,
    RoundCounts,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)
from backend.store.migrations import MIGRATIONS

T = TypeVar("T")

MAX_WRITE_BATCH = 64
"""Batched writes run in one transaction at most: bounds how long a batch holds the
writer (a lease is well under a millisecond of work) and so the wait of a durable write
queued behind it."""

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


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


_SELECT_PROJECTS = """SELECT id, name, description, recipe, recipe_version, hparams, strategy,
    settings, status, current_version, public_key, created_at, shard_sizes FROM projects"""
"""What a ProjectRecord holds: not next_shard, which changes with every lease (see below)."""

_PROJECT_MEMO: dict[tuple[Any, ...], ProjectRecord] = {}
_PROJECT_MEMO_MAX = 256
"""Project rows seen, by their full contents: every request reads its project, and parsing
its JSON columns each time was the largest CPU cost of a lease after SQLite itself. A row
that changed in any column is another key, so the memo can never answer stale data. The
records (and their dicts) are shared: callers treat them as read-only."""


def _project(row: sqlite3.Row) -> ProjectRecord:
    key = tuple(row)
    record = _PROJECT_MEMO.get(key)
    if record is None:
        if len(_PROJECT_MEMO) >= _PROJECT_MEMO_MAX:
            _PROJECT_MEMO.clear()
        record = _PROJECT_MEMO[key] = _parse_project(row)
    return record


def _parse_project(row: sqlite3.Row) -> ProjectRecord:
    return ProjectRecord(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        recipe=row["recipe"],
        recipe_version=row["recipe_version"],
        hparams=json.loads(row["hparams"]),
        strategy=json.loads(row["strategy"]),
        settings=json.loads(row["settings"]),
        status=row["status"],
        current_version=row["current_version"],
        public_key=row["public_key"],
        created_at=row["created_at"],
        shard_sizes=json.loads(row["shard_sizes"]) if row["shard_sizes"] else None,
    )


def _version(row: sqlite3.Row) -> VersionRecord:
    return VersionRecord(
        project_id=row["project_id"],
        version=row["version"],
        digest=row["digest"],
        created_at=row["created_at"],
        signature=row["signature"],
        metrics=json.loads(row["metrics"]),
        updates=row["updates"],
        contributors=row["contributors"],
        strategy_state_digest=row["strategy_state_digest"],
    )


def _client(row: sqlite3.Row) -> ClientRecord:
    return ClientRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - Row has no iteration of keys


def _task(row: sqlite3.Row) -> TaskRecord:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118
    values["manifest"] = json.loads(values["manifest"])
    return TaskRecord(**values)


def _update(row: sqlite3.Row) -> UpdateRecord:
    values = {k: row[k] for k in row.keys() if k != "seq"}  # noqa: SIM118
    values["metrics"] = json.loads(values["metrics"])
    return UpdateRecord(**values)


class SQLiteTx:
    """Reads and (on the writer connection) writes; implements ``ReadTx`` and ``WriteTx``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return list(self._c.execute(sql, args).fetchall())

    def _run(self, sql: str, *args: Any) -> int:
        return self._c.execute(sql, args).rowcount

    # --- reads -----------------------------------------------------------------------------
    def projects(self) -> list[ProjectRecord]:
        return [_project(r) for r in self._all(_SELECT_PROJECTS + " ORDER BY name")]

    def project_by_name(self, name: str) -> ProjectRecord | None:
        row = self._one(_SELECT_PROJECTS + " WHERE name = ?", name)
        return _project(row) if row else None

    def project_by_id(self, project_id: int) -> ProjectRecord | None:
        row = self._one(_SELECT_PROJECTS + " WHERE id = ?", project_id)
        return _project(row) if row else None

    def version(self, project_id: int, version: int) -> VersionRecord | None:
        row = self._one(
            "SELECT * FROM versions WHERE project_id = ? AND version = ?", project_id, version
        )
        return _version(row) if row else None

    def versions(self, project_id: int) -> list[VersionRecord]:
        rows = self._all("SELECT * FROM versions WHERE project_id = ? ORDER BY version", project_id)
        return [_version(r) for r in rows]

    def client(self, client_id: str) -> ClientRecord | None:
        row = self._one("SELECT * FROM clients WHERE id = ?", client_id)
        return _client(row) if row else None

    def client_by_key(self, project_id: int, public_key: str) -> ClientRecord | None:
        row = self._one(
            "SELECT * FROM clients WHERE project_id = ? AND public_key = ?", project_id, public_key
        )
        return _client(row) if row else None

    def clients(self, project_id: int) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = ? ORDER BY created_at", project_id
        )
        return [_client(r) for r in rows]

    def task(self, task_id: str) -> TaskRecord | None:
        row = self._one("SELECT * FROM tasks WHERE id = ?", task_id)
        return _task(row) if row else None

    def update_for_task(self, task_id: str) -> UpdateRecord | None:
        row = self._one("SELECT * FROM updates WHERE task_id = ?", task_id)
        return _update(row) if row else None

    def updates(self, project_id: int) -> list[UpdateRecord]:
        rows = self._all("SELECT * FROM updates WHERE project_id = ? ORDER BY seq", project_id)
        return [_update(r) for r in rows]

    def round_counts(self, project_id: int, base_version: int, now: float) -> RoundCounts:
        row = self._one(
            """SELECT
                 COALESCE(SUM(CASE WHEN status = 'leased' AND deadline >= ? THEN 1 ELSE 0 END), 0),
                 COALESCE(SUM(CASE WHEN status = 'answered' THEN 1 ELSE 0 END), 0)
               FROM tasks WHERE project_id = ? AND base_version = ?""",
            now,
            project_id,
            base_version,
        )
        assert row is not None
        return RoundCounts(live_leases=int(row[0]), answered=int(row[1]))

    def live_leases(self, project_id: int, now: float) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM tasks WHERE project_id = ? AND status = 'leased' AND deadline >= ?",
            project_id,
            now,
        )
        return int(row[0]) if row else 0

    def pending_updates(self, project_id: int) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM updates WHERE project_id = ? AND status = 'pending'", project_id
        )
        return int(row[0]) if row else 0

    def pending_update_records(
        self, project_id: int, base_version: int | None, limit: int | None
    ) -> list[UpdateRecord]:
        sql = "SELECT * FROM updates WHERE project_id = ? AND status = 'pending'"
        args: list[Any] = [project_id]
        if base_version is not None:
            sql += " AND base_version = ?"
            args.append(base_version)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_update(r) for r in self._all(sql, *args)]

    def next_deadline(self, now: float) -> float | None:
        row = self._one("SELECT MIN(deadline) FROM tasks WHERE status = 'leased'")
        return float(row[0]) if row and row[0] is not None else None

    def version_times(self, project_id: int, limit: int) -> list[float]:
        rows = self._all(
            "SELECT created_at FROM versions WHERE project_id = ? ORDER BY version DESC LIMIT ?",
            project_id,
            limit,
        )
        return [float(r[0]) for r in reversed(rows)]

    def rejected_tasks(self, project_id: int) -> int:
        row = self._one(  # the (status, deadline) index: only rejected rows are read
            "SELECT COUNT(*) FROM tasks WHERE status = 'rejected' AND project_id = ?", project_id
        )
        return int(row[0]) if row else 0

    def updates_with_status(self, project_id: int, status: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM updates WHERE project_id = ? AND status = ?", project_id, status
        )
        return int(row[0]) if row else 0

    def aggregation_running(self, project_id: int) -> bool:
        row = self._one(
            "SELECT 1 FROM aggregations WHERE project_id = ? AND status = 'running'", project_id
        )
        return row is not None

    def invite_count(self, project_id: int) -> int:
        row = self._one("SELECT COUNT(*) FROM invites WHERE project_id = ?", project_id)
        return int(row[0]) if row else 0

    # --- writes ----------------------------------------------------------------------------
    def insert_project(self, project: ProjectRecord) -> int:
        cur = self._c.execute(
            """INSERT INTO projects (name, description, recipe, recipe_version, hparams, strategy,
                 settings, status, current_version, public_key, created_at, shard_sizes)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                project.name,
                project.description,
                project.recipe,
                project.recipe_version,
                _dump(project.hparams),
                _dump(project.strategy),
                _dump(project.settings),
                project.status,
                project.current_version,
                project.public_key,
                project.created_at,
                _dump(project.shard_sizes) if project.shard_sizes is not None else None,
            ),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def set_project_status(self, project_id: int, status: str) -> None:
        self._run("UPDATE projects SET status = ? WHERE id = ?", status, project_id)

    def insert_version(self, version: VersionRecord) -> None:
        self._run(
            """INSERT INTO versions (project_id, version, digest, created_at, signature, metrics,
                 updates, contributors, strategy_state_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            version.project_id,
            version.version,
            version.digest,
            version.created_at,
            version.signature,
            _dump(version.metrics),
            version.updates,
            version.contributors,
            version.strategy_state_digest,
        )

    def insert_challenge(self, project_id: int, challenge: str, expires_at: float) -> None:
        self._run(
            "INSERT INTO challenges (challenge, project_id, expires_at) VALUES (?, ?, ?)",
            challenge,
            project_id,
            expires_at,
        )

    def consume_challenge(self, project_id: int, challenge: str, now: float) -> bool:
        return (
            self._run(
                """UPDATE challenges SET used = 1
                   WHERE challenge = ? AND project_id = ? AND used = 0 AND expires_at >= ?""",
                challenge,
                project_id,
                now,
            )
            == 1
        )

    def challenge_valid(self, project_id: int, challenge: str, now: float) -> bool:
        row = self._one(
            """SELECT 1 FROM challenges
               WHERE challenge = ? AND project_id = ? AND used = 0 AND expires_at >= ?""",
            challenge,
            project_id,
            now,
        )
        return row is not None

    def insert_invite(
        self, project_id: int, code_hash: str, created_at: float, max_uses: int
    ) -> None:
        self._run(
            "INSERT INTO invites (code_hash, project_id, created_at, max_uses) VALUES (?, ?, ?, ?)",
            code_hash,
            project_id,
            created_at,
            max_uses,
        )

    def consume_invite(self, project_id: int, code_hash: str) -> bool:
        return (
            self._run(
                """UPDATE invites SET uses = uses + 1
                   WHERE code_hash = ? AND project_id = ? AND uses < max_uses""",
                code_hash,
                project_id,
            )
            == 1
        )

    def insert_client(self, client: ClientRecord) -> None:
        self._run(
            """INSERT INTO clients (id, project_id, display_name, team, public_key, token_hash,
                 created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            client.id,
            client.project_id,
            client.display_name,
            client.team,
            client.public_key,
            client.token_hash,
            client.created_at,
            client.last_seen,
        )

    def rejoin_client(
        self, client_id: str, display_name: str, team: str | None, token_hash: str, now: float
    ) -> None:
        self._run(
            "UPDATE clients SET display_name = ?, team = ?, token_hash = ?, last_seen = ? WHERE id = ?",
            display_name,
            team,
            token_hash,
            now,
            client_id,
        )

    def touch_client(self, client_id: str, now: float) -> None:
        self._run("UPDATE clients SET last_seen = ? WHERE id = ?", now, client_id)

    def expire_leases(self, now: float) -> list[int]:
        rows = self._all(
            "SELECT DISTINCT project_id FROM tasks WHERE status = 'leased' AND deadline < ?", now
        )
        if rows:
            self._run(
                "UPDATE tasks SET status = 'expired' WHERE status = 'leased' AND deadline < ?", now
            )
        return [int(r[0]) for r in rows]

    def live_task_for_client(
        self, project_id: int, client_id: str, now: float
    ) -> TaskRecord | None:
        row = self._one(
            """SELECT * FROM tasks WHERE project_id = ? AND client_id = ? AND status = 'leased'
               AND deadline >= ? ORDER BY issued_at DESC LIMIT 1""",
            project_id,
            client_id,
            now,
        )
        return _task(row) if row else None

    def client_has_task(self, project_id: int, client_id: str, base_version: int) -> bool:
        row = self._one(
            """SELECT 1 FROM tasks WHERE project_id = ? AND client_id = ? AND base_version = ?
               AND status IN ('leased', 'answered', 'rejected') LIMIT 1""",
            project_id,
            client_id,
            base_version,
        )
        return row is not None

    def next_shard(self, project_id: int, num_shards: int) -> int:
        # One statement (the counter is only ever read here): RETURNING gives the new value.
        rows = self._all(  # fetch all: the statement must run to its end before COMMIT
            "UPDATE projects SET next_shard = next_shard % ? + 1 WHERE id = ? RETURNING next_shard",
            max(1, num_shards),
            project_id,
        )
        assert rows
        return int(rows[0][0]) - 1

    def insert_task(self, task: TaskRecord) -> None:
        self._run(
            """INSERT INTO tasks (id, project_id, client_id, base_version, shard_index, status,
                 issued_at, deadline, max_examples, manifest, signature)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            task.id,
            task.project_id,
            task.client_id,
            task.base_version,
            task.shard_index,
            task.status,
            task.issued_at,
            task.deadline,
            task.max_examples,
            _dump(task.manifest),
            task.signature,
        )

    def set_task_lease(
        self, task_id: str, deadline: float, manifest: dict[str, Any], signature: str
    ) -> None:
        self._run(
            "UPDATE tasks SET deadline = ?, manifest = ?, signature = ? WHERE id = ?",
            deadline,
            _dump(manifest),
            signature,
            task_id,
        )

    def set_task_status(self, task_id: str, status: str) -> None:
        self._run("UPDATE tasks SET status = ? WHERE id = ?", status, task_id)

    def reject_task(
        self, task_id: str, project_id: int, client_id: str, code: str, now: float
    ) -> bool:
        return (
            self._run(
                """UPDATE tasks SET status = 'rejected', rejected_code = ?, rejected_at = ?
                   WHERE id = ? AND project_id = ? AND client_id = ? AND status = 'leased'""",
                code,
                now,
                task_id,
                project_id,
                client_id,
            )
            == 1
        )

    def set_client_pace(
        self,
        client_id: str,
        s_per_step: float,
        dev: float,
        samples: int,
        at: float,
        examples: int,
    ) -> None:
        self._run(
            """UPDATE clients SET pace_s_per_step = ?, pace_dev = ?, pace_samples = ?,
                 pace_at = ?, pace_examples = ? WHERE id = ?""",
            s_per_step,
            dev,
            samples,
            at,
            examples,
            client_id,
        )

    def insert_update(self, update: UpdateRecord) -> None:
        self._run(
            """INSERT INTO updates (id, project_id, task_id, client_id, base_version, payload_digest,
                 num_examples, max_examples, credit, accepted_at, manifest_b64, signature, metrics,
                 status, aggregation_id)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            update.id,
            update.project_id,
            update.task_id,
            update.client_id,
            update.base_version,
            update.payload_digest,
            update.num_examples,
            update.max_examples,
            update.credit,
            update.accepted_at,
            update.manifest_b64,
            update.signature,
            _dump(update.metrics),
            update.status,
            update.aggregation_id,
        )

    def drop_updates(self, update_ids: list[str]) -> None:
        self._c.executemany(
            "UPDATE updates SET status = 'dropped' WHERE id = ? AND status = 'pending'",
            [(uid,) for uid in update_ids],
        )

    def credit_client(self, client_id: str, credit: float, recent_sum: float, now: float) -> None:
        self._run(
            """UPDATE clients SET credit = credit + ?, recent_sum = ?, recent_time = ?,
                 accepted = accepted + 1, last_seen = ? WHERE id = ?""",
            credit,
            recent_sum,
            now,
            now,
            client_id,
        )

    def count_rejection(self, client_id: str, now: float) -> None:
        self._run(
            "UPDATE clients SET rejected = rejected + 1, last_seen = ? WHERE id = ?", now, client_id
        )

    def claim_aggregation(
        self, project_id: int, base_version: int, owner: str, now: float, update_ids: list[str]
    ) -> AggregationClaim:
        try:
            cur = self._c.execute(
                """INSERT INTO aggregations (project_id, base_version, status, owner, claimed_at)
                   VALUES (?, ?, 'running', ?, ?)""",
                (project_id, base_version, owner, now),
            )
        except sqlite3.IntegrityError:
            raise ClaimConflict(
                f"an aggregation of project {project_id} is already running"
            ) from None
        assert cur.lastrowid is not None
        claim_id = int(cur.lastrowid)
        self._c.executemany(
            "UPDATE updates SET status = 'claimed', aggregation_id = ? WHERE id = ? AND status = 'pending'",
            [(claim_id, uid) for uid in update_ids],
        )
        rows = self._all("SELECT * FROM updates WHERE aggregation_id = ? ORDER BY seq", claim_id)
        return AggregationClaim(
            id=claim_id,
            project_id=project_id,
            base_version=base_version,
            owner=owner,
            claimed_at=now,
            updates=[_update(r) for r in rows],
        )

    def cancel_round_leases(self, project_id: int, base_version: int) -> int:
        return self._run(
            """UPDATE tasks SET status = 'cancelled'
               WHERE project_id = ? AND base_version = ? AND status = 'leased'""",
            project_id,
            base_version,
        )

    def aggregation_owner(self, aggregation_id: int) -> str | None:
        row = self._one(
            "SELECT owner FROM aggregations WHERE id = ? AND status = 'running'", aggregation_id
        )
        return str(row[0]) if row else None

    def finish_aggregation(
        self, claim: AggregationClaim, version: VersionRecord, dropped: list[str]
    ) -> None:
        self.insert_version(version)
        self._run(
            "UPDATE projects SET current_version = ? WHERE id = ?",
            version.version,
            claim.project_id,
        )
        self._run(
            "UPDATE updates SET status = 'aggregated' WHERE aggregation_id = ? AND status = 'claimed'",
            claim.id,
        )
        self._c.executemany(
            "UPDATE updates SET status = 'dropped' WHERE id = ? AND aggregation_id = ?",
            [(uid, claim.id) for uid in dropped],
        )
        self._run("UPDATE aggregations SET status = 'done' WHERE id = ?", claim.id)

    def release_stale_claims(self, is_stale: Callable[[str, float], bool]) -> int:
        rows = self._all("SELECT id, owner, claimed_at FROM aggregations WHERE status = 'running'")
        released = 0
        for row in rows:
            if not is_stale(str(row["owner"]), float(row["claimed_at"])):
                continue
            self._run(
                """UPDATE updates SET status = 'pending', aggregation_id = NULL
                   WHERE aggregation_id = ? AND status = 'claimed'""",
                row["id"],
            )
            self._run("UPDATE aggregations SET status = 'abandoned' WHERE id = ?", row["id"])
            released += 1
        return released


class _BatchedWrite:
    """One queued ``write_batched`` call: its work, then its outcome."""

    __slots__ = ("done", "error", "lead", "result", "work")

    def __init__(self, work: Callable[[SQLiteTx], Any]) -> None:
        self.work = work
        self.done = threading.Event()
        self.lead = False  # set (before done) when this waiter is to run the next batch
        self.result: Any = None
        self.error: BaseException | None = None


class SQLiteStore:
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
        self._batch_lock = threading.Lock()  # guards the two below, never held around SQL
        self._batch_queue: list[_BatchedWrite] = []
        self._batch_leader = False
        self._closed = False
        self._migrate()
        if os.name == "posix":
            self._wal_sync = _WalSync(self.path.with_name(self.path.name + "-wal"))
            self._writer.execute("PRAGMA synchronous = NORMAL")
            self._durable = False

    def _migrate(self) -> None:
        with self._write_lock:
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
        item = _BatchedWrite(work)
        with self._batch_lock:
            self._batch_queue.append(item)
            lead = not self._batch_leader
            self._batch_leader = True
        if not lead:
            item.done.wait()  # until our batch ran, or the lead is handed to us
            lead = item.lead
        if lead:
            self._lead_batch()
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def _lead_batch(self) -> None:
        """Run the oldest queued items (the leader's own first), then pass the lead on.

        The lead goes to the oldest waiter, so its work is in the next batch and no
        thread runs batches for others for longer than one."""
        with self._batch_lock:
            batch = self._batch_queue[:MAX_WRITE_BATCH]
            del self._batch_queue[:MAX_WRITE_BATCH]
        self._run_batch(batch)
        with self._batch_lock:
            successor = self._batch_queue[0] if self._batch_queue else None
            if successor is None:
                self._batch_leader = False
            else:
                successor.lead = True
        for item in batch:
            item.done.set()
        if successor is not None:
            successor.done.set()

    def _run_batch(self, batch: list[_BatchedWrite]) -> None:
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
