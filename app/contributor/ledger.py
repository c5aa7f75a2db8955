"""The local record of contributions: per project (keyed by server and project, since two
coordinators may both host a "digits"), every finished task, its credit, and every update
the coordinator refused, with its reason.

One SQLite file in the data folder (WAL, so a reader never blocks the engine). Recording a
task is idempotent: the same task id twice (an upload retried after a restart) is one row.
Every connection is opened per call, so the ledger is safe from any thread or process.

Durability: a new ledger is built in a temporary file in the same folder, synced, and moved
into place, so a zero-byte or half-created ledger never comes from us. Every write is one
transaction with ``synchronous=FULL``: with WAL, NORMAL would already keep the file whole
after a crash, but could lose the last commits on power loss; FULL syncs the WAL on each
commit, and the ledger commits once per task, so a recorded credit is never lost for the
price of one fsync a task. A ledger that is not a database, or an empty file where a ledger
should be, raises ``LedgerError`` naming the file and what to do; it is never wiped.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from federated.files import fsync_dir

__all__ = ["SCHEMA_VERSION", "Contribution", "Ledger", "LedgerError", "ProjectTotals"]

SCHEMA_VERSION = 3
"""``PRAGMA user_version`` of the current schema, older ones upgraded in place when opened.
0: the first one (no ``accepted`` and ``reason`` columns, no version); 2: no energy
columns (``energy_joules``, ``energy_method``: NULL and '' for the tasks before)."""

BUSY_TIMEOUT_S = 10.0
"""Seconds a call waits for another writer (the engine, ``barnraise status``) to finish."""

_SQLITE_HEADER = b"SQLite format 3\x00"
_DAMAGED_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

_TABLE = """
CREATE TABLE contributions (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    finished_at REAL NOT NULL,
    examples INTEGER NOT NULL,
    compute_seconds REAL NOT NULL,
    credit REAL NOT NULL,
    credit_unit TEXT NOT NULL DEFAULT '',
    update_id TEXT NOT NULL DEFAULT '',
    accepted INTEGER NOT NULL DEFAULT 1,
    reason TEXT NOT NULL DEFAULT '',
    energy_joules REAL,
    energy_method TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (project, task_id)
)
"""


class LedgerError(Exception):
    """The ledger file cannot be used (not a database, empty, damaged). The message names
    the file and says what to do; the credit on the coordinator is not affected."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"the contribution ledger {path} {problem}. Move it aside (for example rename it "
            f"to {path.name}.damaged) and start Barnraise again: it will start a new, empty "
            "ledger. Your credit on the server is not affected; only this machine's own "
            "history of past tasks is in that file."
        )
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Contribution:
    """One task: an accepted update (with its credit) or, with ``accepted=False``, an update
    the coordinator refused, ``reason`` being its error code (``wrong_base``, ...)."""

    project: str
    task_id: str
    examples: int
    compute_seconds: float
    credit: float
    credit_unit: str = ""
    update_id: str = ""
    finished_at: float = 0.0
    accepted: bool = True
    reason: str = ""
    # What training it took on this computer (app.contributor.energy; None: unknown) and
    # how it was known: rapl, nvml, rapl+nvml or estimated.
    energy_joules: float | None = None
    energy_method: str = ""


@dataclass(frozen=True)
class ProjectTotals:
    """Accepted tasks only (``tasks`` .. ``last_at``); ``rejected`` counts refused updates."""

    project: str
    tasks: int
    examples: int
    compute_seconds: float
    credit: float
    credit_unit: str
    last_at: float | None
    rejected: int = 0
    energy_joules: float = 0.0  # of the accepted tasks that reported it
    energy_measured_joules: float = 0.0  # the part of it measured, not estimated


class Ledger:
    def __init__(self, path: Path) -> None:
        """Open the ledger at ``path``, creating it (atomically) if there is none and
        upgrading an older one. Raises LedgerError if the file is not a usable ledger."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            self._create()
        self._check_file()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent; a no-op once set
            problems = [r[0] for r in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise LedgerError(path, f"is damaged ({'; '.join(problems[:3])})")
            self._upgrade(db)

    # --- the file ------------------------------------------------------------------------
    def _create(self) -> None:
        """Build an empty ledger in a temp file beside ``path`` and link it into place: a
        crash at any moment leaves either no ledger or a whole one, never a partial file."""
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=DELETE")
                db.execute("BEGIN IMMEDIATE")
                db.execute(_TABLE)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            finally:
                db.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                # link, not replace: a ledger another process created meanwhile is kept.
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _check_file(self) -> None:
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise LedgerError(self.path, f"cannot be read ({exc.strerror or exc})") from None
        if not header:
            raise LedgerError(
                self.path, "is empty (0 bytes): it was cut short, perhaps by a full disk or a crash"
            )
        if header != _SQLITE_HEADER:
            raise LedgerError(self.path, "is not a Barnraise ledger (not an SQLite database)")

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Bring a ledger of an older schema up to SCHEMA_VERSION, in one transaction (two
        processes opening it at once: the second finds it done)."""
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in db.execute("PRAGMA table_info(contributions)")}
            if not columns:
                db.execute(_TABLE)
            if columns and "accepted" not in columns:
                db.execute(
                    "ALTER TABLE contributions ADD COLUMN accepted INTEGER NOT NULL DEFAULT 1"
                )
            if columns and "reason" not in columns:
                db.execute("ALTER TABLE contributions ADD COLUMN reason TEXT NOT NULL DEFAULT ''")
            if columns and "energy_joules" not in columns:
                db.execute("ALTER TABLE contributions ADD COLUMN energy_joules REAL")
                db.execute(
                    "ALTER TABLE contributions ADD COLUMN energy_method TEXT NOT NULL DEFAULT ''"
                )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (writes use ``_write``). It never creates the
        file: a ledger removed while we run is built again, whole, by ``_create``."""
        if not self.path.exists():
            self._create()
        uri = f"{self.path.absolute().as_uri()}?mode=rw"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        finally:
            db.close()

    def _damaged(self, exc: sqlite3.DatabaseError) -> Exception:
        """LedgerError for a damaged file; other database errors (busy, locked, disk full)
        are not the file's fault and are raised as they are."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code in _DAMAGED_CODES or (code is None and type(exc) is sqlite3.DatabaseError):
            return LedgerError(self.path, f"is damaged ({exc})")
        return exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (and synced) on success, rolled back on error."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- records -------------------------------------------------------------------------
    def record(self, c: Contribution) -> bool:
        """Record a finished task, accepted or rejected; False if it was already recorded.
        An accepted update replaces a rejection recorded earlier for the same task (never
        the other way round)."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO contributions (project, task_id, examples, compute_seconds, credit,"
                " credit_unit, update_id, finished_at, accepted, reason, energy_joules,"
                " energy_method) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (project, task_id) DO UPDATE SET"
                " examples = excluded.examples, compute_seconds = excluded.compute_seconds,"
                " credit = excluded.credit, credit_unit = excluded.credit_unit,"
                " update_id = excluded.update_id, finished_at = excluded.finished_at,"
                " accepted = 1, reason = '', energy_joules = excluded.energy_joules,"
                " energy_method = excluded.energy_method"
                " WHERE contributions.accepted = 0 AND excluded.accepted = 1",
                (
                    c.project,
                    c.task_id,
                    c.examples,
                    c.compute_seconds,
                    c.credit,
                    c.credit_unit,
                    c.update_id,
                    c.finished_at or time.time(),
                    1 if c.accepted else 0,
                    c.reason,
                    c.energy_joules,
                    c.energy_method,
                ),
            )
            return cursor.rowcount == 1

    def totals(self, project: str) -> ProjectTotals:
        with self._connect() as db:
            row = db.execute(
                # CASE, not FILTER: FILTER needs SQLite 3.30, older Pythons bundle less.
                "SELECT COALESCE(SUM(accepted), 0),"
                " COALESCE(SUM(CASE WHEN accepted THEN examples END), 0),"
                " COALESCE(SUM(CASE WHEN accepted THEN compute_seconds END), 0),"
                " COALESCE(SUM(CASE WHEN accepted THEN credit END), 0),"
                " COALESCE(MAX(CASE WHEN accepted THEN credit_unit END), ''),"
                " MAX(CASE WHEN accepted THEN finished_at END),"
                " COALESCE(SUM(1 - accepted), 0),"
                " COALESCE(SUM(CASE WHEN accepted THEN energy_joules END), 0),"
                " COALESCE(SUM(CASE WHEN accepted AND energy_method NOT IN ('', 'estimated')"
                " THEN energy_joules END), 0)"
                " FROM contributions WHERE project = ?",
                (project,),
            ).fetchone()
        return ProjectTotals(
            project,
            int(row[0]),
            int(row[1]),
            float(row[2]),
            float(row[3]),
            row[4],
            row[5],
            rejected=int(row[6]),
            energy_joules=float(row[7]),
            energy_measured_joules=float(row[8]),
        )

    def rejections(self, project: str) -> int:
        """Updates of ``project`` the coordinator refused."""
        return self.totals(project).rejected

    def projects(self) -> list[str]:
        with self._connect() as db:
            return [
                r[0] for r in db.execute("SELECT DISTINCT project FROM contributions ORDER BY 1")
            ]

    def recent(
        self, project: str, limit: int = 20, *, accepted: bool | None = None
    ) -> list[Contribution]:
        """The latest tasks, newest first: all, or only accepted (True) or rejected (False)."""
        wanted = None if accepted is None else int(accepted)
        with self._connect() as db:
            rows = db.execute(
                "SELECT project, task_id, examples, compute_seconds, credit, credit_unit,"
                " update_id, finished_at, accepted, reason, energy_joules, energy_method"
                " FROM contributions"
                " WHERE project = ? AND (? IS NULL OR accepted = ?)"
                " ORDER BY finished_at DESC LIMIT ?",
                (project, wanted, wanted, limit),
            ).fetchall()
        return [
            Contribution(
                project=row[0],
                task_id=row[1],
                examples=int(row[2]),
                compute_seconds=float(row[3]),
                credit=float(row[4]),
                credit_unit=row[5],
                update_id=row[6],
                finished_at=float(row[7]),
                accepted=bool(row[8]),
                reason=row[9],
                energy_joules=None if row[10] is None else float(row[10]),
                energy_method=row[11],
            )
            for row in rows
        ]
