"""Batched writes (``SQLiteStore.write_batched``): one writer, each item atomic on its own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from backend.store import SQLiteStore
from backend.testing import bare_project_record


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    yield store
    store.close()


def _record_batch_sizes(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    run_batch = store._run_batch

    def recording(batch: list[Any]) -> None:
        sizes.append(len(batch))
        run_batch(batch)

    monkeypatch.setattr(store, "_run_batch", recording)
    return sizes


def test_many_threads_never_act_on_the_same_check(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check-then-act (read how many slots exist, take the next) through the batcher from
    many threads at once: every thread gets a different slot, none fails."""
    sizes = _record_batch_sizes(store, monkeypatch)
    threads_n, per_thread = 32, 15
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
    with store.read() as tx:
        assert len(tx.projects()) == threads_n * per_thread
    assert sum(sizes) == threads_n * per_thread


def test_a_failing_item_does_not_undo_the_others_in_its_batch(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
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
        def work(tx: Any) -> str:
            tx.insert_project(bare_project_record(name))
            return name

        return work

    def failing(tx: Any) -> str:
        tx.insert_project(bare_project_record("failed"))
        raise RuntimeError("this item fails after writing")

    def call(key: str, work: Any) -> None:
        try:
            outcomes[key] = store.write_batched(work)
        except RuntimeError as exc:
            outcomes[key] = exc

    leader = threading.Thread(target=call, args=("first", blocking))
    leader.start()
    assert in_first.wait(10)
    # The writer is busy with the first batch: these three queue up and form the next one.
    queued = [
        threading.Thread(target=call, args=("b", ok("b"))),
        threading.Thread(target=call, args=("c", failing)),
        threading.Thread(target=call, args=("d", ok("d"))),
    ]
    for t in queued:
        t.start()
    while len(store._batch_queue) < 3:
        threading.Event().wait(0.005)
    let_first_go.set()
    for t in [leader, *queued]:
        t.join(10)
    assert sizes == [1, 3]
    assert outcomes["first"] == "first" and outcomes["b"] == "b" and outcomes["d"] == "d"
    assert isinstance(outcomes["c"], RuntimeError)
    with store.read() as tx:
        names = {p.name for p in tx.projects()}
    assert names == {"first", "b", "d"}


def test_a_batched_write_on_a_closed_store_raises(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.write_batched(lambda tx: tx.insert_project(bare_project_record("late")))
