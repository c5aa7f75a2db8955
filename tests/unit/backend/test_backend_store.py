"""The SQLite store and the blob folder: migrations, WAL, atomic leasing, atomic blobs."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.services.aggregation import claim_ready
from backend.services.aggregation_worker import AggregationWorker
from backend.store import BlobStore, SQLiteStore
from backend.store.migrations import LATEST_VERSION, MIGRATIONS
from backend.testing import IN_PROCESS_URL, bare_project_record, small_delta, upload_request
from federated.codec import encode_update

EXPECTED_TABLES = {
    "projects",
    "versions",
    "challenges",
    "invites",
    "clients",
    "tasks",
    "aggregations",
    "updates",
}


def test_migrations_from_empty_reach_latest_and_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    assert store.schema_version() == LATEST_VERSION == MIGRATIONS[-1][0]
    store.close()
    again = SQLiteStore(path)  # reopening applies nothing twice
    assert again.schema_version() == LATEST_VERSION
    again.close()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables >= EXPECTED_TABLES


def test_migration_numbers_increase() -> None:
    numbers = [n for n, _ in MIGRATIONS]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1


def test_wal_mode_is_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        assert store.journal_mode() == "wal"
    finally:
        store.close()


def test_failed_write_transaction_rolls_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        record = bare_project_record("p")
        with pytest.raises(RuntimeError), store.write() as tx:
            tx.insert_project(record)
            raise RuntimeError("boom")
        with store.read() as rtx:
            assert rtx.project_by_name("p") is None
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_concurrent_leases_never_hand_out_a_task_twice(
    coordinator: Coordinator, make_project: Any, join: Any, mode: str
) -> None:
    make_project(
        "race",
        mode=mode,
        clients_per_round=5,
        min_updates=5,
        overprovision=2.0,
        max_concurrent_leases=7,
    )
    clients = [join("race", f"c{i}") for i in range(24)]
    got: dict[str, str] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients))
    project = coordinator.project("race")

    def lease(client_id: str) -> None:
        with coordinator.store.read() as tx:
            client = tx.client(client_id)
        assert client is not None
        barrier.wait()
        signed = coordinator.lease(project, client, 0)
        if signed is not None:
            with lock:
                got[client_id] = signed["manifest"]["task_id"]

    threads = [threading.Thread(target=lease, args=(c.client_id,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    task_ids = list(got.values())
    assert len(task_ids) == len(set(task_ids)), "a task was handed out twice"
    cap = 10 if mode == "sync" else 7  # ceil(5 x 2.0) leases per round; max_concurrent_leases
    assert len(task_ids) == cap


def test_blob_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    digest = blobs.put(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert blobs.put(b"hello") == digest
    assert blobs.read(digest) == b"hello" and blobs.verify(digest)
    assert list(blobs.digests()) == [digest]
    assert list(blobs.tmp_dir.iterdir()) == []


def test_blob_write_is_atomic_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = BlobStore(tmp_path / "blobs")

    def crash(*_args: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        blobs.put(b"x" * 100_000)
    digest = hashlib.sha256(b"x" * 100_000).hexdigest()
    assert not blobs.exists(digest)  # no partial blob under its final name
    assert list(blobs.tmp_dir.iterdir()) == []  # and the temp file is gone


def test_concurrent_puts_of_one_blob_leave_one_complete_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = os.urandom(2_000_000)
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        blobs.put(data)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    digest = hashlib.sha256(data).hexdigest()
    assert blobs.read(digest) == data
    assert list(blobs.digests()) == [digest]


@pytest.mark.parametrize("bad", ["../etc/passwd", "AB" * 32, "", "a" * 63])
def test_blob_paths_refuse_non_digests(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path / "blobs").path(bad)


def test_an_abandoned_aggregation_claim_is_released_and_rerun(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    """A claim left by a dead process (same host, pid gone) is taken over at start-up."""
    make_project("crash")
    project = coordinator.project("crash")
    spec = coordinator.runtime(project).spec
    for name in ("a", "b"):
        c = join("crash", name)
        task = c.lease(0)
        assert task is not None
        r = upload_request(
            http,
            IN_PROCESS_URL,
            project="crash",
            token=c.token,
            key=c.key,
            task=task,
            client_id=c.client_id,
            payload=encode_update(small_delta(spec), "int8").payload,
        )
        assert r.status_code == 201
    claim = claim_ready(coordinator.context, project)
    assert claim is not None and len(claim.updates) == 2
    # Pretend the claim belonged to a process that died (pid 2**22+1 is never alive here).
    with coordinator.store.write() as tx:
        tx._c.execute(
            "UPDATE aggregations SET owner = ? WHERE id = ?",
            (f"{os.uname().nodename}:4194305:dead", claim.id),
        )  # type: ignore[attr-defined]
    assert claim_ready(coordinator.context, project) is None  # still claimed
    worker = AggregationWorker(coordinator.context)
    assert worker.release_stale_claims() == 1
    assert worker.run_once()
    assert coordinator.project("crash").current_version == 1


@pytest.mark.skipif(os.name != "posix", reason="group commit fsyncs the WAL on POSIX only")
def test_group_commit_syncs_durable_writes_and_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable write returns only after a WAL fsync that started after its commit; a
    non-durable one never waits for the disk; concurrent durable writes share fsyncs."""
    real = getattr(os, "fdatasync", None) or os.fsync
    calls: list[int] = []

    def counting_sync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting_sync, raising=False)
    monkeypatch.setattr(os, "fsync", counting_sync)
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        sync = store._wal_sync
        assert sync is not None
        calls.clear()
        with store.write(durable=False) as tx:
            tx.insert_project(bare_project_record("fast"))
        assert calls == [] and sync._synced < sync._committed
        with store.write() as tx:
            tx.insert_project(bare_project_record("safe"))
        assert len(calls) == 1 and sync._synced == sync._committed  # covers "fast" too

        calls.clear()
        errors: list[BaseException] = []

        def durable_insert(i: int) -> None:
            try:
                with store.write() as tx:
                    tx.insert_project(bare_project_record(f"p{i}"))
                assert sync._synced >= 1
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=durable_insert, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert 1 <= len(calls) <= 24 and sync._synced == sync._committed
        with store.read() as rtx:
            assert len(rtx.projects()) == 26
    finally:
        store.close()
