"""The active mode of ``bench/backend_load.py``: contributors that lease and upload.

Each simulated contributor is an asyncio task on one keep-alive connection
(``bench/loadgen.HttpConn``, from a source address in 127.0.0.2 … 127.0.0.254), joined
for real with proof of possession before its phase. It loops: lease (``?wait=0``), then
upload a signed update for ``upload_share`` of the tasks and release the rest. What an
upload costs the generator is kept small and real: the payload is a precomputed encoding
made distinct by a tag (``bench/load_payloads.py``), and the manifest is signed with the
contributor's Ed25519 key per upload, as a real client does.

A phase: join its new contributors (not timed), start them, wait until each has leased
once, then measure for ``seconds``. It prints a line per interval (req/s, the server's
and the generator's CPU as % of a core, server RSS) and then per phase: req/s, leases/s,
uploads/s, p50/p99 per operation, statuses, client errors, TCP connections opened, RSS,
and the CPU both sides used over the phase (/proc/PID/stat), so a reader sees which side
is the limit: the side near 100 % of its core is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from bench.load_payloads import Payloads
from bench.loadgen import (
    API,
    NET_ERRORS,
    CpuMeter,
    HttpConn,
    Member,
    Reply,
    bearer,
    join_many,
    kind,
    percentile,
    rss_mib,
    source_for,
)
from federated.codec import decode_model
from federated.signing import canonical_json

REQUEST_TIMEOUT_S = 120.0
WARMUP_TIMEOUT_S = 120.0
"""Until every contributor of a phase has leased once (joins are not measured)."""
STOP_TIMEOUT_S = 10.0
"""After a phase: how long contributors may take to finish the request they are in."""
ERROR_PAUSE_S = 0.05

METRICS = {"loss_before": 2.3, "loss_after": 2.2, "seconds": 0.1, "examples_per_second": 1000.0}


class PhaseProbe(Protocol):
    """More to measure over each phase's measured seconds (``options["probe"]``): the
    processes behind a proxy, say. ``start`` as measuring begins, ``tick`` once per
    progress line, ``finish`` as it ends; what ``finish`` returns joins the phase's result."""

    def start(self) -> None: ...

    def tick(self) -> None: ...

    def finish(self) -> dict[str, Any]: ...


@dataclass
class Target:
    host: str
    port: int
    project: str

    @classmethod
    def of(cls, url: str, project: str) -> Target:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, project)

    @property
    def api(self) -> str:
        return f"{API}/{self.project}"


@dataclass
class Stats:
    """What a phase's contributors saw; only requests completed while ``measuring``."""

    measuring: bool = False
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    count: int = 0
    connections: int = 0  # TCP connections the contributors opened (1 each with keep-alive)
    leased_once: set[int] = field(default_factory=set)

    def record(self, op: str, status: int, seconds: float) -> None:
        if self.measuring:
            self.latencies.setdefault(op, []).append(seconds)
            self.statuses[f"{op} {status}"] += 1
            self.count += 1

    def error(self, where: str, exc: BaseException) -> None:
        if self.measuring:
            self.errors[f"{where}: {kind(exc)}: {str(exc)[:60]}"] += 1


async def timed(
    conn: HttpConn,
    stats: Stats,
    op: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Reply:
    start = time.perf_counter()
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        reply = await conn.request(method, path, body, headers)
    stats.record(op, reply.status, time.perf_counter() - start)
    return reply


def upload_headers(
    target: Target, member: Member, task: dict[str, Any], digest: str
) -> dict[str, str]:
    """The upload's headers: a manifest for ``task`` and its signature by ``member``."""
    manifest = {
        "project": target.project,
        "task_id": task["task_id"],
        "client_id": task["client_id"],
        "base_digest": task["base_digest"],
        "payload_digest": digest,
        "codec": task["codec"],
        "num_examples": int(task["max_examples"]),
        "metrics": METRICS,
    }
    raw = canonical_json(manifest)
    return {
        "Authorization": f"Bearer {member.token}",
        "Content-Type": "application/octet-stream",
        "X-Barnraise-Manifest": base64.b64encode(raw).decode(),
        "X-Barnraise-Signature": member.key.sign_bytes(raw),
    }


async def contributor(
    target: Target,
    index: int,
    member: Member,
    stats: Stats,
    payloads: Payloads,
    upload_share: float,
    think_s: float,
    stop: asyncio.Event,
) -> None:
    """Lease, then upload or release, until ``stop``."""
    conn = HttpConn(target.host, target.port, source_for(index))
    rng = random.Random(index)
    auth = bearer(member.token)
    api = target.api
    try:
        while not stop.is_set():
            if think_s > 0:
                await asyncio.sleep(rng.expovariate(1.0 / think_s))
                if stop.is_set():
                    break
            try:
                reply = await timed(
                    conn, stats, "lease", "POST", f"{api}/tasks/lease?wait=0", headers=auth
                )
                if reply.status != 200:
                    await asyncio.sleep(min(1.0, reply.retry_after(0.1)))
                    continue
                stats.leased_once.add(index)
                task = json.loads(reply.body)["manifest"]
                task_path = f"{api}/tasks/{task['task_id']}"
                if rng.random() >= upload_share:
                    await timed(
                        conn, stats, "release", "POST", f"{task_path}/release", headers=auth
                    )
                    continue
                payload, digest = payloads.get(task["codec"])
                headers = upload_headers(target, member, task, digest)
                await timed(
                    conn, stats, "upload", "PUT", f"{task_path}/update", payload, headers=headers
                )
            except (*NET_ERRORS, KeyError, TypeError) as exc:
                stats.error("request", exc)
                conn.close()
                await asyncio.sleep(ERROR_PAUSE_S)
    finally:
        conn.close()
        stats.connections += conn.opened


async def prime(target: Target, member: Member, same: bool) -> tuple[Payloads, str]:
    """Payloads for the current model's shapes, with the project's codec encoded before any
    phase (learnt by leasing one task with ``member``, then released); and a line on them."""
    conn = HttpConn(target.host, target.port, source_for(0))
    auth = bearer(member.token)
    try:
        reply = await conn.request("GET", f"{target.api}/models/current")
        digest = json.loads(reply.body)["manifest"]["digest"]
        model = await conn.request("GET", f"{target.api}/models/{digest}")
        payloads = Payloads(decode_model(model.body), same=same)
        reply = await conn.request("POST", f"{target.api}/tasks/lease?wait=0", headers=auth)
        if reply.status != 200:
            return (
                payloads,
                f"no task to learn the codec ({reply.error_code()}): encoded on first use",
            )
        task = json.loads(reply.body)["manifest"]
        distinct = payloads.prepare(task["codec"])
        await conn.request("POST", f"{target.api}/tasks/{task['task_id']}/release", headers=auth)
    finally:
        conn.close()
    if same:
        how = "one payload for every upload (--same-payload)"
    elif distinct:
        how = "distinct bytes per upload (a tag each)"
    else:
        how = "NO room for a tag: uploads repeat"
    return payloads, f"codec {task['codec']} encoded before the phases; {how}"


# --------------------------------------------------------------------------- phases


async def sample(
    stats: Stats,
    meter: CpuMeter,
    pid: int | None,
    seconds: float,
    interval: float,
    probe: PhaseProbe | None = None,
) -> list[float]:
    """Print a line per interval until ``seconds`` have passed; the server RSS samples."""
    print(
        f"{'t s':>6} {'req/s':>8} {'server CPU %':>13} {'generator CPU %':>16} {'server RSS MiB':>15}"
    )
    start = last_t = time.monotonic()
    last_count = stats.count
    rss_samples: list[float] = []
    tick = CpuMeter(meter.server_pid)
    while (now := time.monotonic()) - start < seconds:
        await asyncio.sleep(max(0.0, min(interval, seconds - (now - start))))
        now, count = time.monotonic(), stats.count
        server_pct, own_pct = tick.shares()
        tick.start()
        rss = rss_mib(pid)
        if rss is not None:
            rss_samples.append(rss)
        if probe is not None:
            probe.tick()
        print(
            f"{now - start:6.1f} {(count - last_count) / max(now - last_t, 1e-9):8.0f} "
            f"{_num(server_pct, 13)} {_num(own_pct, 16)} {_num(rss, 15)}",
            flush=True,
        )
        last_count, last_t = count, now
    return rss_samples


def _num(value: float | None, width: int) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


async def run_phase(
    target: Target,
    clients: int,
    seconds: float,
    pid: int | None,
    payloads: Payloads,
    options: dict[str, Any],
    first_index: int,
) -> dict[str, Any]:
    """One phase of ``clients`` new contributors (``bench-{first_index}`` on)."""
    think_s, upload_share = options["think_s"], options["upload_share"]
    members, join_errors = await join_many(
        target.host, target.port, target.project, clients, first_index
    )
    stats = Stats()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            contributor(target, first_index + i, m, stats, payloads, upload_share, think_s, stop)
        )
        for i, m in enumerate(members)
    ]
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while len(stats.leased_once) < len(members) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    think = f", think time {think_s * 1000:.0f} ms (mean)" if think_s > 0 else ", closed loop"
    print(f"\n== {clients} clients, {seconds:.0f} s{think} ==")
    for what, n in join_errors.items():
        print(f"   {n} x {what}")
    probe: PhaseProbe | None = options.get("probe")
    rss_start = rss_mib(pid)
    meter = CpuMeter(pid)
    if probe is not None:
        probe.start()
    stats.measuring = True
    start = time.monotonic()
    rss_samples = await sample(stats, meter, pid, seconds, options["interval"], probe)
    stats.measuring = False
    elapsed = time.monotonic() - start
    server_pct, own_pct = meter.shares()
    probed = probe.finish() if probe is not None else {}
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
    for task in pending:
        task.cancel()  # one still in a think time, or a request the server does not answer
    await asyncio.gather(*tasks, return_exceptions=True)
    result = summarise(stats, clients, think_s, elapsed)
    result.update(
        joined=len(members),
        join_errors=dict(join_errors),
        connections_opened=stats.connections,
        server_cpu_pct=server_pct,
        generator_cpu_pct=own_pct,
        rss_mib_start=rss_start,
        rss_mib_max=max(rss_samples) if rss_samples else None,
        rss_mib_end=rss_samples[-1] if rss_samples else None,
        **probed,
    )
    print_phase(result)
    return result


def summarise(stats: Stats, clients: int, think_s: float, elapsed: float) -> dict[str, Any]:
    everything = [x for v in stats.latencies.values() for x in v]
    statuses = stats.statuses
    uploads = statuses["upload 200"] + statuses["upload 201"]
    return {
        "clients": clients,
        "think_ms": round(think_s * 1000, 1),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(everything) / elapsed, 1),
        "leases_per_s": round(statuses["lease 200"] / elapsed, 1),
        "uploads_per_s": round(uploads / elapsed, 1),
        "p50_ms": round(percentile(everything, 0.50) * 1000, 2),
        "p99_ms": round(percentile(everything, 0.99) * 1000, 2),
        "by_op": {
            op: {
                "n": len(v),
                "p50_ms": round(percentile(v, 0.5) * 1000, 2),
                "p99_ms": round(percentile(v, 0.99) * 1000, 2),
            }
            for op, v in sorted(stats.latencies.items())
        },
        "statuses": dict(sorted(statuses.items())),
        "client_errors": sum(stats.errors.values()),
        "client_error_kinds": dict(sorted(stats.errors.items())),
    }


def print_phase(r: dict[str, Any]) -> None:
    print(
        f"-> {r['requests_per_s']} req/s, {r['leases_per_s']} leases/s, "
        f"{r['uploads_per_s']} uploads/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
    )
    for op, row in r["by_op"].items():
        print(f"   {op:8} n={row['n']:<7} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms")
    print(f"   statuses {r['statuses']}  client errors {r['client_errors']}")
    for what, n in r["client_error_kinds"].items():
        print(f"     {n} x {what}")
    print(
        f"   CPU over the phase, % of one core: server {r['server_cpu_pct']}, "
        f"load generator {r['generator_cpu_pct']}"
    )
    print(
        f"   TCP connections opened by the clients (joins not included): {r['connections_opened']}"
    )
    if r["rss_mib_max"] is not None:
        print(
            f"   server RSS MiB: start {r['rss_mib_start']:.1f}, max {r['rss_mib_max']:.1f}, "
            f"end {r['rss_mib_end']:.1f}"
        )


def print_summary(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'clients':>7} {'think ms':>8} {'req/s':>7} {'leases/s':>8} {'uploads/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'server %':>8} {'gen %':>6} {'errors':>6}"
    )
    for r in results:
        print(
            f"{r['clients']:7} {r['think_ms']:8.0f} {r['requests_per_s']:7.0f} {r['leases_per_s']:8.0f} "
            f"{r['uploads_per_s']:9.0f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} "
            f"{_num(r['server_cpu_pct'], 8)} {_num(r['generator_cpu_pct'], 6)} {r['client_errors']:6}"
        )


async def run_active_async(
    url: str,
    project: str,
    counts: list[int],
    seconds: float,
    pid: int | None,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    target = Target.of(url, project)
    primer, errors = await join_many(target.host, target.port, project, 1, prefix="bench-primer")
    if not primer:
        raise SystemExit(f"could not join the project: {dict(errors)}")
    payloads, line = await prime(target, primer[0], bool(options["same_payload"]))
    print(f"   {line}")
    results = []
    first = 0
    for clients in counts:
        results.append(await run_phase(target, clients, seconds, pid, payloads, options, first))
        first += clients
    print_summary(results)
    return results


def run_active(
    url: str, project: str, counts: list[int], seconds: float, pid: int | None, **options: Any
) -> list[dict[str, Any]]:
    """The active mode: one result dict per count of contributors.

    ``options``: think_s, upload_share, interval (seconds between progress lines),
    same_payload, and optionally probe (a ``PhaseProbe``)."""
    return asyncio.run(run_active_async(url, project, counts, seconds, pid, options))
