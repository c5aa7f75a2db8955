"""Scale-out mode of ``bench/backend_load.py`` (``--stores``, ``--processes``): the same
active phases against SQLite and against several coordinator processes sharing one
PostgreSQL, in one invocation, ending with one comparison table.

Configurations, in this order, each with a fresh data folder (and a fresh database)::

    sqlite/1            one `serve` on SQLite, reached directly: the default mode's server
                        and the baseline of the ratios. SQLite is one process by design
                        (its writer lock is a file lock in one data folder), so it is
                        never run as several, nor behind nginx.
    postgres/1 direct   one `serve --database-url`, reached directly: the store's cost
    postgres/N nginx    for each N of --processes: N processes on one database and one
                        data folder behind a real nginx; postgres/1 nginx against
                        postgres/1 direct is nginx's own cost

nginx is ``tests/support/nginx.py``'s: the deployed ``deploy/nginx/barnraise-proxy.conf``
with a round-robin upstream. Behind it the processes run as the deployed unit runs them
(``--trusted-proxy 127.0.0.1``), so per-address logic sees the bench's 127.0.0.x and not
nginx (whose own connections the per-address cap does not count). Each process runs its own aggregation worker;
they coordinate through PostgreSQL. PostgreSQL is one throwaway cluster for the whole
invocation (``tests/support/postgres.py``, fsync on, over its Unix socket), a database
per configuration.

Over each phase's measured seconds, besides active_load's numbers
(``bench/scale_out_probe.py``): each coordinator process's CPU (% of one core) and its
largest RSS; PostgreSQL's CPU (its whole process tree: backends, WAL writer,
checkpointer, autovacuum) and nginx's; how busy the server's CPUs were, whoever ran there
(on a shared machine, others' jobs show up there and not in the processes' columns); and
PostgreSQL's one writer lock: the share of time it is held, how many write transactions
queue for it, and the share of the held time PostgreSQL sat idle waiting for the
coordinator's next statement. ``--server-cpus`` pins the coordinators, PostgreSQL and
nginx (the last two after they start), ``--client-cpus`` the load generator. With 0 and
1 on a two-core machine the whole server side shares one core: "server %" near 100 says
that core is spent; "lock busy %" near 100 says more processes can only queue behind the
writer lock, however many cores they had.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import active_load
from bench.backend_load import create_project, free_port, spawn_server, wait_healthy
from bench.scale_out_probe import (
    ClusterProbe,
    WriterLockSampler,
    pin_tree,
    postmaster_pid,
)
from tests.support.nginx import Nginx
from tests.support.postgres import PostgresCluster

SQLITE = "sqlite"
POSTGRES = "postgres"
STORES = (SQLITE, POSTGRES)
BEHIND_NGINX_FLAGS = ("--trusted-proxy", "127.0.0.1")
"""As deploy/systemd/barnraise-coordinator@.service runs each process: every connection
comes from nginx, so the per-address cap is nginx's (limit_conn) and not the process's."""
STOP_TIMEOUT_S = 45.0
"""A process's SIGTERM may wait for its aggregation worker (the unit's TimeoutStopSec)."""
DEFAULT_THREADS = 64
"""The active mode's ``--threads`` for every process, as ``backend_load.py`` starts one."""


@dataclass(frozen=True)
class Config:
    store: str
    processes: int
    nginx: bool

    @property
    def name(self) -> str:
        if self.store == SQLITE:
            return "sqlite/1"
        return f"postgres/{self.processes} {'nginx' if self.nginx else 'direct'}"


def plan(stores: Sequence[str], processes: Sequence[int]) -> list[Config]:
    """The configurations to run, baseline first."""
    configs = []
    if SQLITE in stores:
        configs.append(Config(SQLITE, 1, nginx=False))
    if POSTGRES in stores:
        configs.append(Config(POSTGRES, 1, nginx=False))
        configs += [Config(POSTGRES, n, nginx=True) for n in processes]
    return configs


@dataclass(frozen=True)
class Options:
    stores: tuple[str, ...]
    processes: tuple[int, ...]
    project: str
    clients: tuple[int, ...]
    seconds: float
    think_s: float
    upload_share: float
    interval: float
    buffer_size: int
    threads: int
    server_cpus: str
    client_cpus: str | None
    same_payload: bool
    as_json: bool

    @classmethod
    def of(cls, args: argparse.Namespace) -> Options:
        """From backend_load's arguments; SystemExit saying what to change if they do not fit."""
        stores = tuple((args.stores or ",".join(STORES)).split(","))
        unknown = set(stores) - set(STORES)
        if unknown:
            raise SystemExit(f"--stores: unknown {sorted(unknown)}; use {','.join(STORES)}")
        processes = tuple(int(n) for n in (args.processes or "1").split(","))
        if min(processes) < 1:
            raise SystemExit("--processes: each count must be at least 1, e.g. 1,2,3")
        if args.processes and POSTGRES not in stores:
            raise SystemExit("--processes counts PostgreSQL's processes: add postgres to --stores")
        everything = ",".join(str(c) for c in range(os.cpu_count() or 1))
        return cls(
            stores=stores,
            processes=processes,
            project=args.project,
            clients=tuple(int(c) for c in args.clients.split(",")),
            seconds=args.seconds,
            think_s=args.think_ms / 1000,
            upload_share=args.upload_share,
            interval=args.interval,
            buffer_size=args.buffer_size,
            threads=args.server_threads or DEFAULT_THREADS,
            # Explicit even when not asked: children inherit the generator's own pinning.
            server_cpus=args.server_cpus or everything,
            client_cpus=args.client_cpus,
            same_payload=args.same_payload,
            as_json=args.json,
        )


# --------------------------------------------------------------------------- deployments


@dataclass
class Deployment:
    """What one configuration started; ``teardown`` ends all of it."""

    config: Config
    data: Path
    url: str = ""
    coordinators: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nginx: Nginx | None = None
    database: str | None = None


def serve_flags(
    data: Path, config_file: Path, database_url: str | None, nginx_url: str | None
) -> list[str]:
    flags = ["--data", str(data), "--config", str(config_file)]
    if database_url is not None:
        flags += ["--database-url", database_url]
    if nginx_url is not None:
        flags += [*BEHIND_NGINX_FLAGS, "--public-url", nginx_url]
    return flags


def deploy(config: Config, cluster: PostgresCluster | None, options: Options) -> Deployment:
    """Start ``config``'s processes on a fresh project and wait until they answer."""
    deployment = Deployment(config, Path(tempfile.mkdtemp(prefix="barnraise-scale-")))
    data = deployment.data
    try:
        database_url = None
        if config.store == POSTGRES:
            assert cluster is not None
            deployment.database = cluster.create_database("scale")
            database_url = cluster.url(deployment.database)
        config_file = create_project(data, options.project, options.buffer_size, (), database_url)
        ports = [free_port() for _ in range(config.processes)]
        nginx_port = free_port() if config.nginx else None
        nginx_url = f"http://127.0.0.1:{nginx_port}" if nginx_port else None
        flags = serve_flags(data, config_file, database_url, nginx_url)
        deployment.url = start_coordinators(deployment, flags, ports, options)
        if nginx_port is not None:
            deployment.nginx = start_nginx(data / "nginx", nginx_port, ports, options.server_cpus)
            deployment.url = deployment.nginx.url
    except BaseException:
        teardown(deployment, cluster)
        raise
    return deployment


def start_coordinators(
    deployment: Deployment, flags: list[str], ports: list[int], options: Options
) -> str:
    """One ``serve`` per port, all started before any is waited for (each takes seconds);
    the first one's URL once every one answers."""
    logs = [deployment.data / f"coordinator-{port}.log" for port in ports]
    for port, log in zip(ports, logs, strict=True):
        proc = spawn_server(flags, port, options.threads, options.server_cpus, log)
        deployment.coordinators.append(proc)
    urls = [
        wait_healthy(proc, port, log)
        for proc, port, log in zip(deployment.coordinators, ports, logs, strict=True)
    ]
    return urls[0]


def start_nginx(root: Path, port: int, upstream_ports: list[int], cpus: str) -> Nginx:
    root.mkdir()
    nginx = Nginx(root, port, upstream_ports).start()
    assert nginx.process is not None
    pin_tree(nginx.process.pid, cpus)  # its worker is forked already: the whole tree
    return nginx


def teardown(deployment: Deployment, cluster: PostgresCluster | None) -> None:
    if deployment.nginx is not None:
        deployment.nginx.stop()
    for proc in deployment.coordinators:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # all at once: each may wait for its worker
    for proc in deployment.coordinators:
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if cluster is not None and deployment.database is not None:
        cluster.drop_database(deployment.database)
    shutil.rmtree(deployment.data, ignore_errors=True)


def measure(
    deployment: Deployment, cluster: PostgresCluster | None, options: Options
) -> list[dict[str, Any]]:
    """active_load's phases against ``deployment``, with its processes' numbers in each."""
    pids = [proc.pid for proc in deployment.coordinators]
    postgres = lock = None
    if cluster is not None and deployment.database is not None:
        postgres = postmaster_pid(cluster)
        lock = WriterLockSampler(cluster, deployment.database)
    nginx = deployment.nginx.process.pid if deployment.nginx and deployment.nginx.process else None
    print(
        f"\n######## {deployment.config.name}: {deployment.url}, coordinator pids {pids}, "
        f"postgres {postgres or '-'}, nginx {nginx or '-'}, server cpus {options.server_cpus}"
    )
    try:
        results = active_load.run_active(
            deployment.url,
            options.project,
            list(options.clients),
            options.seconds,
            pids[0] if len(pids) == 1 else None,
            think_s=options.think_s,
            upload_share=options.upload_share,
            interval=options.interval,
            same_payload=options.same_payload,
            probe=ClusterProbe(pids, postgres, nginx, options.server_cpus, lock),
        )
    finally:
        if lock is not None:
            lock.close()
    for result in results:
        result["config"] = deployment.config.name
    return results


# --------------------------------------------------------------------------- the table


def _op_p99(result: dict[str, Any], op: str) -> float | None:
    row = result["by_op"].get(op)
    return row["p99_ms"] if row else None


def _refused(result: dict[str, Any]) -> int:
    """Answers that were not 2xx (the statuses are "op code")."""
    return sum(n for key, n in result["statuses"].items() if not key.split()[-1].startswith("2"))


def _each(values: list[float | None]) -> str:
    return "/".join(f"{v:.0f}" if v is not None else "-" for v in values)


def _cell(value: float | None, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "-"


TABLE_HEADINGS = (
    "config", "clients", "leases/s", "uploads/s", "p99 lease ms", "p99 upload ms",
    "RSS MiB/proc", "CPU %/proc", "PG %", "nginx %", "server %", "cores busy %", "gen %",
    "lock busy %", "lock waiters", "held idle %", "non-2xx", "errors", "leases x", "uploads x",
)  # fmt: skip


def table_row(result: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    """One phase as the table's cells; ratios against ``base`` (sqlite/1, same clients)."""
    cpus = result["coordinator_cpu_pct"]
    parts = [*cpus, result["postgres_cpu_pct"], result["nginx_cpu_pct"]]
    server = sum(p for p in parts if p is not None)
    return [
        result["config"],
        str(result["clients"]),
        _cell(result["leases_per_s"]),
        _cell(result["uploads_per_s"]),
        _cell(_op_p99(result, "lease"), 1),
        _cell(_op_p99(result, "upload"), 1),
        _each(result["coordinator_rss_mib_max"]),
        _each(cpus),
        _cell(result["postgres_cpu_pct"]),
        _cell(result["nginx_cpu_pct"]),
        _cell(server),
        _cell(result["server_cores_busy_pct"]),
        _cell(result["generator_cpu_pct"]),
        _cell(result["writer_lock_busy_pct"]),
        _cell(result["writer_lock_waiters_mean"], 2),
        _cell(result["writer_lock_idle_pct"]),
        str(_refused(result)),
        str(result["client_errors"]),
        _ratio(result["leases_per_s"], base["leases_per_s"] if base else None),
        _ratio(result["uploads_per_s"], base["uploads_per_s"] if base else None),
    ]


def format_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, numbers right."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def print_table(runs: list[list[dict[str, Any]]], options: Options, load: str) -> None:
    baseline = runs[0] if runs and runs[0][0]["config"] == "sqlite/1" else None
    rows: list[Sequence[str]] = [TABLE_HEADINGS]
    for results in runs:
        rows += [table_row(r, baseline[i] if baseline else None) for i, r in enumerate(results)]
    think = f"think {options.think_s * 1000:.0f} ms" if options.think_s else "closed loop"
    print(
        f"\n== scale-out: {options.seconds:.0f} s per phase, {think}; coordinators, PostgreSQL "
        f"and nginx on cpus {options.server_cpus}, the load generator on "
        f"{options.client_cpus or 'all'}; load average {load} =="
    )
    print(
        "   CPU: % of one core; server % = coordinators + PG + nginx; cores busy %: the server "
        "cpus busy, whoever ran there (others' jobs too, and softirq); lock: PostgreSQL's writer "
        "lock, share of samples held, mean write transactions queued, share of the held time "
        "PostgreSQL sat idle in the transaction waiting for the coordinator; x: against sqlite/1"
    )
    print("\n".join(format_rows(rows)))


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> int:
    """The scale-out mode, from backend_load's arguments."""
    options = Options.of(args)
    load_before = _load()
    cluster = None
    runs: list[list[dict[str, Any]]] = []
    try:
        if POSTGRES in options.stores:
            cluster = PostgresCluster(durable=True).start()
            pin_tree(postmaster_pid(cluster), options.server_cpus)
        for config in plan(options.stores, options.processes):
            deployment = deploy(config, cluster, options)
            try:
                runs.append(measure(deployment, cluster, options))
            finally:
                teardown(deployment, cluster)
    finally:
        if cluster is not None:
            cluster.stop()
    print_table(runs, options, f"{load_before} before, {_load()} after")
    if options.as_json:
        print(json.dumps({"server_cpus": options.server_cpus, "client_cpus": options.client_cpus,
                          "configs": runs}))  # fmt: skip
    return 0
