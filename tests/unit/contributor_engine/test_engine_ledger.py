"""The local ledger: rejections are recorded, older ledgers are upgraded, a damaged or empty
file is reported (never wiped), and a new ledger appears whole or not at all."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from app.contributor import ledger as ledger_module
from app.contributor.client import ClientError
from app.contributor.ledger import SCHEMA_VERSION, Contribution, Ledger, LedgerError


def accepted(task_id: str, credit: float = 1.0, project: str = "digits") -> Contribution:
    return Contribution(project, task_id, 100, 2.0, credit, "GFLOP", f"u-{task_id}", 10.0)


def rejected(task_id: str, reason: str = "wrong_base") -> Contribution:
    return Contribution("digits", task_id, 100, 2.0, 0.0, accepted=False, reason=reason)


# --- rejections ----------------------------------------------------------------------------
def test_rejections_are_recorded_with_their_reason_but_not_counted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.record(accepted("t1", 1.5))
    assert ledger.record(accepted("t2", 2.0))
    assert ledger.record(rejected("t3", "norm_too_large"))
    assert not ledger.record(rejected("t3", "norm_too_large"))  # once
    totals = ledger.totals("digits")
    assert (totals.tasks, totals.examples, totals.credit) == (2, 200, 3.5)
    assert totals.compute_seconds == 4.0 and totals.credit_unit == "GFLOP"
    assert totals.rejected == 1 == ledger.rejections("digits")
    [refused] = ledger.recent("digits", accepted=False)
    assert (refused.task_id, refused.accepted, refused.reason) == ("t3", False, "norm_too_large")
    assert {c.task_id for c in ledger.recent("digits", accepted=True)} == {"t1", "t2"}
    assert len(ledger.recent("digits")) == 3


def test_only_rejections_give_empty_totals(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record(rejected("t1"))
    totals = ledger.totals("digits")
    assert (totals.tasks, totals.credit, totals.last_at, totals.rejected) == (0, 0.0, None, 1)


def test_an_acceptance_replaces_a_rejection_never_the_reverse(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.record(rejected("t1"))
    assert ledger.record(accepted("t1", 3.0))  # e.g. the rejection was a lost answer's retry
    assert not ledger.record(rejected("t1"))
    [row] = ledger.recent("digits")
    assert (row.accepted, row.reason, row.credit) == (True, "", 3.0)
    assert ledger.totals("digits").rejected == 0


def test_positional_contributions_still_work(tmp_path: Path) -> None:
    c = Contribution("digits", "t1", 5, 0.5, 0.25, "GFLOP", "u1", 42.0)
    assert (c.accepted, c.reason) == (True, "")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record(c)
    assert ledger.recent("digits") == [c]


# --- upgrading an older ledger -------------------------------------------------------------
OLD_SCHEMA = """
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


def test_a_ledger_of_the_first_schema_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO contributions VALUES ('digits', 'old-1', 5.0, 50, 1.0, 2.5, 'GFLOP', 'u1')"
    )
    db.commit()
    db.close()
    ledger = Ledger(path)
    [old] = ledger.recent("digits")
    assert (old.task_id, old.credit, old.accepted, old.reason) == ("old-1", 2.5, True, "")
    ledger.record(rejected("new-1"))
    assert ledger.totals("digits").tasks == 1 and ledger.totals("digits").rejected == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    Ledger(path)  # opening it again is a no-op


def test_two_openers_of_an_old_ledger_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Ledger(path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- damaged files -------------------------------------------------------------------------
def test_a_file_that_is_not_a_database_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"\x00garbage, not a database" * 100)
    with pytest.raises(LedgerError) as info:
        Ledger(path)
    message = str(info.value)
    assert str(path) in message and "Move it aside" in message
    assert "credit on the server is not affected" in message
    assert info.value.path == path
    assert path.read_bytes().startswith(b"\x00garbage")  # left as it was
    assert not isinstance(info.value, ClientError)


def test_a_zero_byte_ledger_is_reported_not_wiped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"")
    with pytest.raises(LedgerError, match="empty"):
        Ledger(path)
    assert path.stat().st_size == 0


def test_a_ledger_damaged_past_its_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for i in range(200):
        ledger.record(accepted(f"t{i}"))
    data = bytearray(path.read_bytes())
    data[100:] = os.urandom(len(data) - 100)  # keep the 100-byte header, ruin the pages
    path.write_bytes(bytes(data))
    for name in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(LedgerError, match="damaged|not a Barnraise ledger"):
        Ledger(path)


def test_damage_found_later_is_a_ledger_error_too(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    path.write_bytes(b"not a database any more" * 200)
    for name in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(LedgerError):
        ledger.totals("digits")


# --- creating and writing ------------------------------------------------------------------
def test_a_new_ledger_is_created_whole_with_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "data" / "ledger.sqlite"
    ledger = Ledger(path)
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    with ledger._connect() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_crash_while_creating_leaves_no_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def power_cut(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ledger_module.os, "fsync", power_cut)
    path = tmp_path / "ledger.sqlite"
    with pytest.raises(OSError):
        Ledger(path)
    assert list(tmp_path.iterdir()) == []  # neither a ledger nor a temp file
    monkeypatch.undo()
    assert Ledger(path).totals("digits").tasks == 0


def test_many_first_openers_make_one_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    errors: list[BaseException] = []

    def open_and_record(i: int) -> None:
        try:
            Ledger(path).record(accepted(f"t{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Ledger(path).totals("digits").tasks == 8


def test_a_ledger_moved_aside_while_running_is_started_anew(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.record(accepted("t1"))
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
        p = tmp_path / name
        if p.exists():
            p.rename(tmp_path / f"{name}.damaged")
    assert ledger.record(accepted("t2"))
    assert [c.task_id for c in ledger.recent("digits")] == ["t2"]
