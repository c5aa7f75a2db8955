"""One writer on either store: leases from two stores at once never overfill a round, an
aggregation is claimed once, and batched writes keep each item atomic (as
``test_backend_write_batch.py`` holds SQLite to). ``opener`` gives stores of one kind on
one database, each another "process". Needs PostgreSQL installed; fails if it is not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.store import ClaimConflict, ClientRecord, NameKeys, Store, TaskRecord
from backend.testing import bare_project_record
from tests.support.store_cycle import NOW, StoreOpener


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreOpener]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    opener = StoreOpener(tmp_path / "db.sqlite3", url)
    yield opener
    opener.close_all()


@pytest.fixture
def store(opener: StoreOpener) -> Any:
    return opener()


CAP = 10


def _project_with_clients(store: Store, n: int) -> int:
    with store.write() as tx:
        pid = tx.insert_project(bare_project_record("race"))
        for i in range(n):
            client = ClientRecord(
                id=f"c{i}",
                project_id=pid,
                display_name=f"n{i}",
                team=None,
                public_key=f"k{i}",
                token_hash="h",
                created_at=NOW,
                last_seen=NOW,
            )
            tx.insert_client(client, NameKeys(f"n{i}", None))
    return pid


def _lease(tx: Any, pid: int, client_id: str) -> int | None:
    """A lease's check-then-act: the round's capacity and the client's one task, then the
    next shard; the sleep widens the gap a second writer would need to slip into."""
    if tx.round_counts(pid, 0, NOW).live_leases >= CAP or tx.client_has_task(pid, client_id, 0):
        return None
    time.sleep(0.001)
    shard: int = tx.next_shard(pid, CAP)
    tx.insert_task(
        TaskRecord(
            id=f"t-{client_id}",
            project_id=pid,
            client_id=client_id,
            base_version=0,
            shard_index=shard,
            status="leased",
            issued_at=NOW,
            deadline=NOW + 60,
            max_examples=1,
            manifest={},
            signature="s",
        )
    )
    return shard


@pytest.mark.parametrize("how", ["write", "write_batched"])
def test_concurrent_leases_from_two_stores_never_overfill_a_round(
    opener: StoreOpener, how: str
) -> None:
    """24 contributors leasing at once from 8 threads over two stores on one database (two
    processes' worth of connections): exactly CAP leases, each shard once."""
    stores = [opener(), opener()]
    pid = _project_with_clients(stores[0], 24)
    barrier = threading.Barrier(8)
    shards: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        store = stores[k % 2]
        barrier.wait()
        for i in range(k, 24, 8):
            client_id = f"c{i}"
            if how == "write":
                with store.write(durable=False) as tx:
                    shard = _lease(tx, pid, client_id)
            else:
                shard = store.write_batched(lambda tx, c=client_id: _lease(tx, pid, c))
            if shard is not None:
                with lock:
                    shards.append(shard)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(shards) == list(range(CAP))
    with stores[1].read() as rtx:
        assert rtx.live_leases(pid, NOW) == CAP


def test_an_aggregation_is_claimed_once_across_stores(opener: StoreOpener) -> None:
    stores = [opener(), opener()]
    with stores[0].write() as tx:
        pid = tx.insert_project(bare_project_record("p"))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def claim(k: int) -> None:
        barrier.wait()
        try:
            with stores[k % 2].write() as tx:
                tx.claim_aggregation(pid, 0, f"owner{k}", NOW, [])
            outcomes.append("claimed")
        except ClaimConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["claimed"] + ["conflict"] * 7
    with stores[1].read() as rtx:
        assert len(rtx.running_claims()) == 1


# --- batched writes (as test_backend_write_batch.py holds SQLite to) -----------------------


def _record_batch_sizes(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    run_batch = store._run_batch

    def recording(batch: list[Any]) -> None:
        sizes.append(len(batch))
        run_batch(batch)

    monkeypatch.setattr(store, "_run_batch", recording)
    return sizes


def test_batched_writes_never_act_on_the_same_check(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _record_batch_sizes(store, monkeypatch)
    threads_n, per_thread = 16, 10
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)

    def take_slot(tx: Any) -> int:
        slot = len(tx.projects())
        tx.insert_project(bare_project_record(f"slot-{slot}"))
        return slot

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            try:
                slot = store.write_batched(take_slot)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                continue
            with lock:
                got.append(slot)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got) == list(range(threads_n * per_thread))
    assert sum(sizes) == threads_n * per_thread
    assert max(sizes) > 1  # some did share a transaction


def test_a_failing_batched_item_does_not_undo_the_others(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _record_batch_sizes(store, monkeypatch)
    in_first = threading.Event()
    let_first_go = threading.Event()
    outcomes: dict[str, Any] = {}

    def blocking(tx: Any) -> str:
        tx.insert_project(bare_project_record("first"))
        in_first.set()
        assert let_first_go.wait(10)
        return "first"

    def ok(name: str) -> Any:
        return lambda tx: (tx.insert_project(bare_project_record(name)), name)[1]

    def failing(tx: Any) -> str:
        tx.insert_project(bare_project_record("failed"))
        raise RuntimeError("this item fails after writing")

    def database_error(tx: Any) -> str:
        tx.insert_project(bare_project_record("first"))  # the unique name: the server refuses
        return "never"

    def call(key: str, work: Any) -> None:
        try:
            outcomes[key] = store.write_batched(work)
        except Exception as exc:
            outcomes[key] = exc

    leader = threading.Thread(target=call, args=("first", blocking))
    leader.start()
    assert in_first.wait(10)
    queued = [
        threading.Thread(target=call, args=(key, work))
        for key, work in (("b", ok("b")), ("c", failing), ("e", database_error), ("d", ok("d")))
    ]
    for t in queued:
        t.start()
        while len(store._batch_queue) < queued.index(t) + 1:  # queue them in this order
            threading.Event().wait(0.005)
    let_first_go.set()
    for t in [leader, *queued]:
        t.join(10)
    assert sizes == [1, 4]
    assert outcomes["first"] == "first" and outcomes["b"] == "b" and outcomes["d"] == "d"
    assert isinstance(outcomes["c"], RuntimeError)
    assert "UNIQUE" in str(outcomes["e"]).upper()  # sqlite3 and psycopg both say so
    with store.read() as tx:
        assert {p.name for p in tx.projects()} == {"first", "b", "d"}
