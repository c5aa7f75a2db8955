"""Idle volunteers: N contributors each holding a long poll for work, while a probe times
``/healthz``. Run it through ``bench/backend_load.py --idle 0,1000,10000`` (usage and
pinning in that file's docstring); this module holds the idle mode's code, on the client,
joins and /proc statistics of ``bench/loadgen.py``.

How a phase of N goes:

1. Joins happen once, before the first phase, for the largest N: real joins with proof of
   possession, ``loadgen.JOIN_WORKERS`` at once, each worker on its own keep-alive
   connection.
2. A holder (one more bench contributor) leases the project's only task and keeps it with
   a heartbeat (the bench creates the project in async mode with
   ``max_concurrent_leases=1`` and a day-long ``lease_s``), so there is no work and every
   long poll waits its full ``wait``.
3. N contributors, each on one keep-alive connection from a source address in
   127.0.0.2 … 127.0.0.254 (a server may cap connections per address), send
   ``POST /tasks/lease?wait=W`` and poll again as soon as they get 204. A task, if one
   ever comes, is released and counted. They are asyncio tasks with a minimal HTTP/1.1
   client, not threads, so 10,000 of them cost the load generator little.
4. Once all N polls are in flight (or the establishing time box ends), a probe thread on
   its own connection GETs ``/healthz`` every 50 ms for the hold time; a request with no
   answer within 2 s is a failure with latency 2 s.
5. All client sockets are closed, and the next phase waits (time-boxed) until the server
   answers ``/healthz`` quickly and has closed their connections.

Every phase is time-boxed, so a server that cannot hold N polls makes the bench report
failure instead of hanging. The exit status is 1 when a phase misses an aim
(``bench/idle_report.py``: ``AIM_P99_MS``, ``AIM_RSS_MIB``, every poll held).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from bench.idle_report import AIM_P99_MS, IdlePhase, print_phase, print_summary
from bench.loadgen import (
    API,
    NET_ERRORS,
    PROBE_SOURCE,
    HttpConn,
    Reply,
    bearer,
    cpu_s,
    join_many,
    join_one,
    kind,
    percentile,
    server_sample,
    source_for,
)

PROBE_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10.0
CONNECTS_AT_ONCE = 256
"""Connections being opened at once: enough to be quick, few enough not to overflow a backlog."""
POLL_GRACE_S = 15.0
"""A poll with no answer within wait + this is counted as an error and its socket closed."""
ESTABLISH_S = 10.0
ESTABLISH_PER_S = 500.0
"""Establishing N polls is time-boxed to ESTABLISH_S + N / ESTABLISH_PER_S seconds."""
DIGEST_WINDOW_S = 0.5
DIGESTED_CPU = 0.9
"""The probe starts once the server spends less than this share of a core (over
DIGEST_WINDOW_S) after all polls went out: the first burst of N leases is behind it."""
SETTLE_FDS = 16
"""Between phases: the server's open fds must come back within this of the first phase's."""


class Holder:
    """One bench contributor that leases the project's only task and keeps it."""

    def __init__(self, host: str, port: int, project: str) -> None:
        self.conn = HttpConn(host, port, PROBE_SOURCE)
        self.project = project
        self.token = ""
        self.task_id: str | None = None

    async def keep(self) -> str:
        """Lease (first time, or after losing it) or heartbeat the task; a line saying which."""
        api = f"{API}/{self.project}"
        try:
            if not self.token:
                member = await asyncio.wait_for(
                    join_one(self.conn, self.project, "idle-holder"), 30
                )
                self.token = member.token
            if self.task_id is not None:
                beat = await asyncio.wait_for(
                    self.conn.request(
                        "POST", f"{api}/tasks/{self.task_id}/heartbeat", headers=bearer(self.token)
                    ),
                    10,
                )
                if beat.status == 200:
                    return f"holder heartbeat on task {self.task_id}"
                self.task_id = None
            reply = await asyncio.wait_for(
                self.conn.request("POST", f"{api}/tasks/lease?wait=0", headers=bearer(self.token)),
                10,
            )
            if reply.status != 200:
                return f"holder got no task ({reply.error_code()}): tasks may be handed to idle contributors"
            self.task_id = str(json.loads(reply.body)["manifest"]["task_id"])
            return f"holder leased task {self.task_id}: no work is left for the others"
        except (*NET_ERRORS, RuntimeError) as exc:
            return f"holder failed: {kind(exc)}"
        finally:
            self.conn.close()


# --------------------------------------------------------------------------- idle contributors


@dataclass
class PollState:
    """What the idle contributors of one phase did, counted client-side."""

    in_flight: int = 0
    established: int = 0
    no_work: int = 0
    tasks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    answered_after: list[float] = field(default_factory=list)  # seconds from send to 204


async def idle_client(
    conn: HttpConn,
    token: str,
    project: str,
    waits: tuple[float, float],
    state: PollState,
    gate: asyncio.Semaphore,
) -> None:
    """Long-poll for work for ever (until cancelled): re-poll on 204, release any task.

    ``waits``: the first poll's wait, then every other's; a random first wait spreads the
    re-polls evenly over time, as with volunteers who did not all start at once."""
    api = f"{API}/{project}"
    auth = bearer(token)
    first = True
    while True:
        wait = waits[0] if first else waits[1]
        if not conn.is_open:
            try:
                async with gate:
                    await asyncio.wait_for(conn.connect(), CONNECT_TIMEOUT_S)
            except NET_ERRORS as exc:
                state.errors[f"connect: {kind(exc)}"] += 1
                conn.close()
                await asyncio.sleep(1.0)
                continue
        try:
            sent = time.monotonic()
            await conn.send("POST", f"{api}/tasks/lease?wait={wait:g}", headers=auth)
            state.established += first
            first = False
            state.in_flight += 1
            try:
                reply = await asyncio.wait_for(conn.receive(), wait + POLL_GRACE_S)
            finally:
                state.in_flight -= 1
        except NET_ERRORS as exc:
            state.errors[f"poll: {kind(exc)}"] += 1
            conn.close()
            await asyncio.sleep(1.0)
            continue
        if reply.status == 204:
            state.no_work += 1
            if wait == waits[1]:
                state.answered_after.append(time.monotonic() - sent)
        elif reply.status == 200:
            state.tasks += 1
            await release(conn, api, auth, reply, state)
        else:
            state.errors[f"poll: {reply.error_code()}"] += 1
            await asyncio.sleep(reply.retry_after())


async def release(
    conn: HttpConn, api: str, auth: dict[str, str], reply: Reply, state: PollState
) -> None:
    try:
        task_id = json.loads(reply.body)["manifest"]["task_id"]
        answer = await asyncio.wait_for(
            conn.request("POST", f"{api}/tasks/{task_id}/release", headers=auth), 10
        )
        if answer.status != 204:
            state.errors[f"release: {answer.error_code()}"] += 1
    except (*NET_ERRORS, KeyError, TypeError) as exc:
        state.errors[f"release: {kind(exc)}"] += 1
        conn.close()


# --------------------------------------------------------------------------- probe and server


def probe_healthz(host: str, port: int, seconds: float) -> tuple[list[float], Counter[str]]:
    """GET /healthz every PROBE_INTERVAL_S for ``seconds`` on one keep-alive connection (a
    thread, so the idle contributors' event loop does not delay it): latencies, failures."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    conn: http.client.HTTPConnection | None = None
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        start = time.perf_counter()
        failure = None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(
                    host, port, timeout=PROBE_TIMEOUT_S, source_address=(PROBE_SOURCE, 0)
                )
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failure = f"HTTP {response.status}"
            if response.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            failure = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            if conn is not None:
                conn.close()
            conn = None
        latency = time.perf_counter() - start
        if latency > PROBE_TIMEOUT_S:
            failure, latency = failure or "timeout", PROBE_TIMEOUT_S
        latencies.append(PROBE_TIMEOUT_S if failure == "timeout" else latency)
        if failure:
            failures[failure] += 1
        next_at = max(next_at + PROBE_INTERVAL_S, time.monotonic())
    if conn is not None:
        conn.close()
    return latencies, failures


async def settle(
    host: str, port: int, pid: int | None, fds: int | None, box: float
) -> float | None:
    """Seconds until /healthz answers within AIM_P99_MS and the server's fds are back near
    ``fds`` (the old connections closed); None if that did not happen within ``box``."""
    start = time.monotonic()
    while time.monotonic() - start < box:
        latencies, failures = await asyncio.to_thread(probe_healthz, host, port, 0.01)
        now_fds = server_sample(pid).fds
        fds_back = fds is None or now_fds is None or now_fds <= fds + SETTLE_FDS
        if not failures and latencies[0] * 1000 < AIM_P99_MS and fds_back:
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    return None


# --------------------------------------------------------------------------- phases


async def establish(
    state: PollState, n: int, pid: int | None, box: float
) -> tuple[float | None, float | None]:
    """Seconds until all n polls are in flight, then until the server has digested them
    (its CPU below DIGESTED_CPU over DIGEST_WINDOW_S); None where the time box ran out."""
    start = time.monotonic()
    while state.in_flight < n:
        if time.monotonic() - start > box:
            return None, None
        await asyncio.sleep(0.05)
    sent = time.monotonic() - start
    while time.monotonic() - start <= box:
        busy = await server_cpu_share(pid, DIGEST_WINDOW_S)
        if busy is None or busy < DIGESTED_CPU:
            return sent, time.monotonic() - start
    return sent, None


async def server_cpu_share(pid: int | None, seconds: float) -> float | None:
    """The server's CPU time over the next ``seconds``, as a share of one core."""
    before = cpu_s(pid)
    await asyncio.sleep(seconds)
    after = cpu_s(pid)
    return None if before is None or after is None else (after - before) / seconds


async def hold(
    host: str, port: int, pid: int | None, seconds: float, phase: IdlePhase, state: PollState
) -> None:
    """Probe /healthz for ``seconds`` while sampling the server once a second."""
    cpu, wall, no_work = time.process_time(), time.monotonic(), state.no_work
    server_cpu = cpu_s(pid)
    probe = asyncio.ensure_future(asyncio.to_thread(probe_healthz, host, port, seconds))
    rss: list[float] = []
    while not probe.done():
        sample = server_sample(pid)
        if sample.rss_mib is not None:
            rss.append(sample.rss_mib)
        await asyncio.wait({probe}, timeout=1.0)
    latencies, failures = probe.result()
    elapsed = time.monotonic() - wall
    end = server_sample(pid)
    phase.held_at_end = state.in_flight
    phase.hold_s = round(elapsed, 1)
    phase.no_work_per_s = round((state.no_work - no_work) / elapsed, 1)
    phase.generator_cpu_pct = round(100 * (time.process_time() - cpu) / elapsed, 1)
    server_cpu_end = cpu_s(pid)
    if server_cpu is not None and server_cpu_end is not None:
        phase.server_cpu_pct = round(100 * (server_cpu_end - server_cpu) / elapsed, 1)
    phase.healthz_n = len(latencies)
    phase.healthz_p50_ms = round(percentile(latencies, 0.50) * 1000, 2)
    phase.healthz_p99_ms = round(percentile(latencies, 0.99) * 1000, 2)
    phase.healthz_max_ms = round(max(latencies, default=float("nan")) * 1000, 2)
    phase.healthz_failures = dict(failures)
    phase.rss_mib, phase.threads, phase.fds = end.rss_mib, end.threads, end.fds
    phase.rss_max_mib = max([*rss, end.rss_mib or 0.0]) if rss else end.rss_mib


async def run_phase(
    target: tuple[str, int, str], tokens: list[str], seconds: float, wait: float, pid: int | None
) -> IdlePhase:
    host, port, project = target
    n = len(tokens)
    phase = IdlePhase(contributors=n)
    state = PollState()
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    conns = [HttpConn(host, port, source_for(i)) for i in range(n)]
    rng = random.Random(n)
    clients = [
        asyncio.create_task(
            idle_client(conn, token, project, (rng.uniform(1, wait), wait), state, gate)
        )
        for conn, token in zip(conns, tokens, strict=True)
    ]
    try:
        sent, digested = await establish(state, n, pid, ESTABLISH_S + n / ESTABLISH_PER_S)
        phase.established = state.established
        phase.establish_s = round(sent, 2) if sent is not None else None
        phase.digest_s = round(digested, 2) if digested is not None else None
        await hold(host, port, pid, seconds, phase, state)
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        for conn in conns:
            conn.close()
    phase.tasks_seen = state.tasks
    phase.no_work_after_p50_s = round(percentile(state.answered_after, 0.5), 1)
    phase.no_work_after_max_s = round(max(state.answered_after, default=float("nan")), 1)
    phase.errors = dict(sorted(state.errors.items()))
    return phase


async def run_idle_async(
    url: str, project: str, counts: list[int], seconds: float, wait: float, pid: int | None
) -> list[IdlePhase]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    holder = Holder(host, port, project)
    print(f"   {await holder.keep()}")
    start = time.monotonic()
    members, join_errors = await join_many(
        host, port, project, max(counts, default=0), prefix="idle"
    )
    tokens = [m.token for m in members]
    took = time.monotonic() - start
    print(
        f"   joined {len(tokens)} contributors in {took:.1f} s ({len(tokens) / max(took, 1e-9):.0f}/s)"
    )
    for what, n in join_errors.items():
        print(f"     {n} x {what}")
    phases: list[IdlePhase] = []
    base: IdlePhase | None = None
    fds: int | None = None
    for i, n in enumerate(counts):
        if i:
            settled = await settle(host, port, pid, fds, wait + POLL_GRACE_S)
            done = f"in {settled:.1f} s" if settled is not None else "NOT within the time box"
            print(f"   server settled {done}")
        fds = fds if fds is not None else server_sample(pid).fds
        print(
            f"\n== idle: {n} contributors long-polling (wait={wait:g} s), probe for {seconds:g} s =="
        )
        if n > len(tokens):
            print(f"   only {len(tokens)} joined: this phase runs with those")
        print(f"   {await holder.keep()}")
        phase = await run_phase((host, port, project), tokens[:n], seconds, wait, pid)
        phase.wanted = n
        base = phase if base is None and phase.contributors == 0 else base
        print_phase(phase, base)
        phases.append(phase)
    print_summary(phases)
    return phases


def run_idle(
    url: str,
    project: str,
    counts: list[int],
    seconds: float,
    wait: float,
    pid: int | None,
    *,
    as_json: bool = False,
) -> int:
    """The idle mode: exit status 0 if every phase met the aims, else 1."""
    print(
        f"idle load: phases {counts}, asyncio contributors in this process (pid {os.getpid()}, "
        f"cpus {sorted(os.sched_getaffinity(0))}, open files up to "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
    )
    phases = asyncio.run(run_idle_async(url, project, counts, seconds, wait, pid))
    if as_json:
        print(json.dumps({"url": url, "mode": "idle", "phases": [asdict(p) for p in phases]}))
    return 0 if all(not p.misses() for p in phases) else 1


def idle_setting_flags() -> list[str]:
    """``project create`` flags that leave no work for idle contributors once one task is held."""
    return ["--max-concurrent-leases", "1", "--lease-s", "86400"]
