"""Store throughput, SQLite against PostgreSQL: leases per second from a few threads.

    .venv/bin/python -m bench.store_throughput [--threads 4] [--seconds 5]
        [--database-url URL]   # default: a throwaway PostgreSQL cluster, fsync on

Each thread leases for its own contributors in a loop, the store-level shape of
``services.leasing``: read the project, expire leases, look for the contributor's live
task, count the live leases, take the next shard, insert the task, and give the previous
one back (so the live count stays flat). Three ways: through ``write(durable=False)`` (one
transaction each), through ``write_batched`` (the lease path's), and durable writes (an
upload's commit, flushed before it returns). Prints one line per store and way.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.store import ClientRecord, NameKeys, SQLiteStore, TaskRecord
from backend.store.postgres import PostgresStore
from backend.testing import bare_project_record

NOW = 1_764_000_000.0
CLIENTS_PER_THREAD = 16


def _setup(store: Any, threads: int, tag: str) -> int:
    """A project ``bench-TAG`` and its contributors ``TAG-cN`` (one database may hold
    several runs' projects)."""
    with store.write() as tx:
        pid = int(tx.insert_project(bare_project_record(f"bench-{tag}")))
        for i in range(threads * CLIENTS_PER_THREAD):
            client = ClientRecord(
                id=f"{tag}-c{i}",
                project_id=pid,
                display_name=f"n{i}",
                team=None,
                public_key=f"{tag}-k{i}",
                token_hash="h",
                created_at=NOW,
                last_seen=NOW,
            )
            tx.insert_client(client, NameKeys(f"n{i}", None))
    return pid


def _lease(tx: Any, *, pid: int, client_id: str, previous: str | None) -> str:
    tx.project_by_id(pid)
    tx.expire_leases(NOW)
    tx.live_task_for_client(pid, client_id, NOW)
    tx.live_leases(pid, NOW)
    shard = tx.next_shard(pid, 64)
    task_id = uuid.uuid4().hex
    tx.insert_task(
        TaskRecord(
            id=task_id,
            project_id=pid,
            client_id=client_id,
            base_version=0,
            shard_index=shard,
            status="leased",
            issued_at=NOW,
            deadline=NOW + 3600,
            max_examples=1,
            manifest={"task_id": task_id, "hparams": {"lr": 0.1, "local_epochs": 1}},
            signature="s" * 88,
        )
    )
    if previous is not None:
        tx.set_task_status(previous, "released")
    return task_id


def _run(store: Any, pid: int, tag: str, way: str, threads: int, seconds: float) -> float:
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        previous: dict[str, str] = {}
        clients = [f"{tag}-c{k * CLIENTS_PER_THREAD + i}" for i in range(CLIENTS_PER_THREAD)]
        barrier.wait()
        n = 0
        while not stop.is_set():
            cid = clients[n % len(clients)]
            prev = previous.get(cid)
            lease: Callable[[Any], str] = functools.partial(
                _lease, pid=pid, client_id=cid, previous=prev
            )
            if way == "write_batched":
                previous[cid] = store.write_batched(lease)
            else:
                with store.write(durable=way == "durable write") as tx:
                    previous[cid] = lease(tx)
            n += 1
        counts[k] = n

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--database-url", help="PostgreSQL to use (its database is written)")
    args = parser.parse_args()
    cluster = None
    url = args.database_url
    if url is None:
        from tests.support.postgres import PostgresCluster

        cluster = PostgresCluster(durable=True).start()
    ways = ["write", "write_batched", "durable write"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("sqlite", "postgres"):
                for way in ways:
                    if name == "sqlite":
                        store: Any = SQLiteStore(Path(tmp) / f"{way}.sqlite3")
                    else:
                        if cluster is not None:
                            url = cluster.url(cluster.create_database("bench"))
                        store = PostgresStore(url)
                    try:
                        tag = f"{way.replace(' ', '-')}-{uuid.uuid4().hex[:6]}"
                        pid = _setup(store, args.threads, tag)
                        rate = _run(store, pid, tag, way, args.threads, args.seconds)
                    finally:
                        store.close()
                    print(f"{name:9} {way:14} {args.threads} threads: {rate:8.0f} leases/s")
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
