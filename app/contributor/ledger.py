"""The local record of contributions: per project (keyed by server and project, since two
coordinators may both host a "digits"), every finished task and its credit.

One SQLite file in the data folder (WAL, so a reader never blocks the engine). Recording a
task is idempotent: the same task id twice (an upload retried after a restart) is one row.
Every connection is opened per call, so the ledger is safe from any thread or process.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Contribution", "Ledger", "ProjectTotals"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contributions (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    finished_at REAL NOT NULL,
    examples INTEGER NOT NULL,
    compute_seconds REAL NOT NULL,
    credit REAL NOT NULL,
    credit_unit TEXT NOT NULL DEFAULT '',
    update_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (project, task_id)
);
"""


@dataclass(frozen=True)
class Contribution:
    project: str
    task_id: str
    examples: int
    compute_seconds: float
    credit: float
    credit_unit: str = ""
    update_id: str = ""
    finished_at: float = 0.0


@dataclass(frozen=True)
class ProjectTotals:
    project: str
    tasks: int
    examples: int
    compute_seconds: float
    credit: float
    credit_unit: str
    last_at: float | None


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def record(self, c: Contribution) -> bool:
        """Record a finished task; False if it was already recorded."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO contributions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.project,
                    c.task_id,
                    c.finished_at or time.time(),
                    c.examples,
                    c.compute_seconds,
                    c.credit,
                    c.credit_unit,
                    c.update_id,
                ),
            )
            return cursor.rowcount == 1

    def totals(self, project: str) -> ProjectTotals:
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(examples), 0), COALESCE(SUM(compute_seconds), 0),"
                " COALESCE(SUM(credit), 0), COALESCE(MAX(credit_unit), ''), MAX(finished_at)"
                " FROM contributions WHERE project = ?",
                (project,),
            ).fetchone()
        return ProjectTotals(
            project, int(row[0]), int(row[1]), float(row[2]), float(row[3]), row[4], row[5]
        )

    def projects(self) -> list[str]:
        with self._connect() as db:
            return [
                r[0] for r in db.execute("SELECT DISTINCT project FROM contributions ORDER BY 1")
            ]

    def recent(self, project: str, limit: int = 20) -> list[Contribution]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT project, task_id, examples, compute_seconds, credit, credit_unit, update_id,"
                " finished_at FROM contributions WHERE project = ? ORDER BY finished_at DESC LIMIT ?",
                (project, limit),
            ).fetchall()
        return [Contribution(*row) for row in rows]
