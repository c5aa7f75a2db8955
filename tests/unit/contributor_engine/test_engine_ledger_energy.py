"""The ledger's energy columns (schema 3, issue 16): a ledger of schema 2 is upgraded in
place keeping its rows (their energy unknown), and the totals sum what the accepted tasks
reported, with the measured part apart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.contributor.ledger import SCHEMA_VERSION, Contribution, Ledger

SCHEMA_2 = """
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
    PRIMARY KEY (project, task_id)
);
PRAGMA user_version=2;
"""


def task(task_id: str, joules: float | None, method: str, accepted: bool = True) -> Contribution:
    return Contribution(
        "digits",
        task_id,
        10,
        1.0,
        2.0 if accepted else 0.0,
        "GFLOP",
        f"u-{task_id}",
        50.0,
        accepted=accepted,
        reason="" if accepted else "wrong_base",
        energy_joules=joules,
        energy_method=method,
    )


def test_a_ledger_of_schema_2_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 3
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA_2)
        db.execute(
            "INSERT INTO contributions VALUES"
            " ('digits', 'old-1', 5.0, 50, 1.0, 2.5, 'GFLOP', 'u1', 1, '')"
        )
    db.close()
    ledger = Ledger(path)
    [old] = ledger.recent("digits")
    assert (old.task_id, old.credit, old.energy_joules, old.energy_method) == (
        "old-1",
        2.5,
        None,
        "",
    )
    assert ledger.totals("digits").energy_joules == 0.0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = {r[1] for r in db.execute("PRAGMA table_info(contributions)")}
    db.close()
    assert {"energy_joules", "energy_method"} <= columns
    Ledger(path)  # opening it again is a no-op


def test_totals_sum_the_energy_of_accepted_tasks_measured_apart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record(task("t1", 3600.0, "rapl"))
    ledger.record(task("t2", 1800.0, "estimated"))
    ledger.record(task("t3", 900.0, "rapl+nvml"))
    ledger.record(task("t4", None, ""))  # a task that reported none
    ledger.record(task("t5", 5000.0, "rapl", accepted=False))  # refused: not given
    totals = ledger.totals("digits")
    assert totals.energy_joules == pytest.approx(6300.0)
    assert totals.energy_measured_joules == pytest.approx(4500.0)
    by_id = {c.task_id: c for c in ledger.recent("digits")}
    assert (by_id["t1"].energy_joules, by_id["t1"].energy_method) == (3600.0, "rapl")
    assert by_id["t4"].energy_joules is None
    # An acceptance after a refusal of the same task takes its energy too.
    ledger.record(task("t5", 5000.0, "rapl"))
    assert ledger.totals("digits").energy_measured_joules == pytest.approx(9500.0)
