"""What ``bench/scale_out.py`` measures over a phase, beyond ``bench/active_load.py``.

``ClusterProbe`` (active_load's ``PhaseProbe``): each coordinator process's CPU (% of
one core, /proc/PID/stat) and largest RSS; PostgreSQL's and nginx's CPU as their whole
process trees (``tree_cpu_s``: live members, and children that exited through their
parent's cutime/cstime); how busy the server's CPUs were, whoever ran there
(``cores_busy_s``, /proc/stat: other jobs on a shared machine show up here and not in
the processes' columns); and, on PostgreSQL, how busy the one writer lock was
(``WriterLockSampler``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import psycopg

from backend.store.postgres_migrations import WRITER_LOCK_KEY
from bench.loadgen import cpu_s, rss_mib
from tests.support.postgres import PostgresCluster

LOCK_SAMPLE_S = 0.02
"""How often the writer lock is looked at: 50 small queries a second, about 1 % of a
core of PostgreSQL's time (counted in its CPU column), for a busy share to the percent
over a 10 s phase."""

_WRITER_LOCK = """SELECT count(*) FILTER (WHERE l.granted), count(*) FILTER (WHERE NOT l.granted),
        count(*) FILTER (WHERE l.granted AND a.state = 'idle in transaction')
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.objid = %s AND l.objsubid = 1 AND l.database =
        (SELECT oid FROM pg_database WHERE datname = current_database())"""
"""Holders, waiters, and holders whose backend waits for the coordinator's next statement."""


def parse_cpus(text: str) -> set[int]:
    """A taskset CPU list (``0``, ``0,2``, ``0-3``) as a set."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state is [0], ppid [1])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def tree_cpu_s(root: int | None) -> float | None:
    """CPU seconds of ``root``'s tree: its live members' own, and their exited children's
    (cutime + cstime, which the parent in the tree collected)."""
    if root is None or _stat(root) is None:
        return None
    ticks = 0
    for pid in tree_pids(root):
        if (fields := _stat(pid)) is not None:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def pin_tree(root: int, cpus: str) -> None:
    """Every thread of ``root``'s tree onto ``cpus``; what it forks later inherits it."""
    allowed = parse_cpus(cpus)
    for pid in tree_pids(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), allowed)
        except OSError:
            pass  # gone in the meantime


def postmaster_pid(cluster: PostgresCluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def cores_busy_s(cpus: set[int]) -> float:
    """Seconds ``cpus`` have spent busy so far (not idle nor waiting on I/O), whoever ran on
    them: /proc/stat, whose per-CPU fields are user nice system idle iowait irq softirq steal."""
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _pct(seconds: float | None, before: float | None, elapsed: float) -> float | None:
    if seconds is None or before is None:
        return None
    return round(100 * (seconds - before) / elapsed, 1)


class WriterLockSampler:
    """How busy the PostgreSQL store's one writer lock (``pg_advisory_xact_lock``, held by
    every write transaction from its first statement to its commit) is on one database,
    and how many write transactions queue for it: a thread looks at ``pg_locks`` every
    ``LOCK_SAMPLE_S`` from ``start`` to ``finish``. Busy near 100 %: write transactions
    run back to back, and more processes only queue more of them. ``idle``: the share of
    the held samples in which the holder's backend was idle in its transaction, waiting
    for the coordinator's next statement (its Python, its GIL, its CPU) rather than
    running one."""

    def __init__(self, cluster: PostgresCluster, database: str) -> None:
        self._conn = cluster.admin(database)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples = self._held = self._waiting = self._idle = 0

    def start(self) -> None:
        self._samples = self._held = self._waiting = self._idle = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="writer-lock", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        key = WRITER_LOCK_KEY & 0xFFFFFFFF  # a bigint key: its low half is objid, objsubid 1
        while not self._stop.wait(LOCK_SAMPLE_S):
            try:
                row = self._conn.execute(_WRITER_LOCK, (key,)).fetchone()
            except psycopg.Error:
                return
            held, waiting, idle = cast(tuple[int, int, int], row) if row else (0, 0, 0)
            self._samples += 1
            self._held += held > 0
            self._waiting += waiting
            self._idle += idle > 0

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self._samples:
            return {}
        return {
            "writer_lock_busy_pct": round(100 * self._held / self._samples, 1),
            "writer_lock_waiters_mean": round(self._waiting / self._samples, 2),
            "writer_lock_idle_pct": round(100 * self._idle / max(self._held, 1), 1),
        }

    def close(self) -> None:
        self._conn.close()


class ClusterProbe:
    """active_load's ``PhaseProbe`` for the processes behind the URL under load; ``lock``:
    the writer lock's sampler, on PostgreSQL."""

    def __init__(
        self,
        coordinators: list[int],
        postgres: int | None,
        nginx: int | None,
        cpus: str,
        lock: WriterLockSampler | None = None,
    ) -> None:
        self.coordinators = coordinators
        self.postgres = postgres
        self.nginx = nginx
        self.cpus = parse_cpus(cpus)
        self.lock = lock
        self._rss_max: list[float | None] = [None] * len(coordinators)

    def start(self) -> None:
        self._wall = time.monotonic()
        self._coordinator_cpu = [cpu_s(pid) for pid in self.coordinators]
        self._postgres_cpu = tree_cpu_s(self.postgres)
        self._nginx_cpu = tree_cpu_s(self.nginx)
        self._cores_busy = cores_busy_s(self.cpus)
        self._rss_max = [None] * len(self.coordinators)
        if self.lock is not None:
            self.lock.start()
        self.tick()

    def tick(self) -> None:
        for i, pid in enumerate(self.coordinators):
            rss, most = rss_mib(pid), self._rss_max[i]
            if rss is not None and (most is None or rss > most):
                self._rss_max[i] = rss

    def finish(self) -> dict[str, Any]:
        self.tick()
        elapsed = max(time.monotonic() - self._wall, 1e-9)
        locked = self.lock.finish() if self.lock is not None else {}
        return {
            "coordinator_cpu_pct": [
                _pct(cpu_s(pid), before, elapsed)
                for pid, before in zip(self.coordinators, self._coordinator_cpu, strict=True)
            ],
            "coordinator_rss_mib_max": [
                round(r, 1) if r is not None else None for r in self._rss_max
            ],
            "postgres_cpu_pct": _pct(tree_cpu_s(self.postgres), self._postgres_cpu, elapsed),
            "nginx_cpu_pct": _pct(tree_cpu_s(self.nginx), self._nginx_cpu, elapsed),
            "server_cores_busy_pct": _pct(cores_busy_s(self.cpus), self._cores_busy, elapsed),
            "writer_lock_busy_pct": locked.get("writer_lock_busy_pct"),
            "writer_lock_waiters_mean": locked.get("writer_lock_waiters_mean"),
            "writer_lock_idle_pct": locked.get("writer_lock_idle_pct"),
        }
