"""What both load modes of ``bench/backend_load.py`` share: a cheap HTTP/1.1 client,
joining with proof of possession, source-address spreading, the open-files limit, and the
server's (and this process's) /proc statistics.

The client is asyncio streams with keep-alive, not threads with ``http.client``: a request
costs the load generator tens of microseconds, so thousands of contributors fit in one
process on one core and the server, not the bench, is what a run measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from federated.signing import SigningKey

API = "/api/v1/projects"
SOURCES = [f"127.0.0.{i}" for i in range(2, 255)]
"""Source addresses of the bench contributors (a server may cap connections per address):
about 40 each at 10,000 contributors."""
PROBE_SOURCE = "127.0.0.1"
"""The idle mode's probe and holder use this address, which no contributor uses."""

JOIN_WORKERS = 64
"""Joins in flight at once, each worker on its own keep-alive connection."""
JOIN_TIMEOUT_S = 120.0
JOIN_ONE_TIMEOUT_S = 30.0

JSON = {"Content-Type": "application/json"}


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (a spawned server inherits it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def source_for(index: int) -> str:
    """The source address of contributor (or join worker) ``index``: round robin."""
    return SOURCES[index % len(SOURCES)]


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        """``HTTP 503 project_paused``: the status and, when the body says, the API error code."""
        try:
            code = json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return f"HTTP {self.status}"
        return f"HTTP {self.status} {code}"

    def retry_after(self, default: float = 1.0, most: float = 5.0) -> float:
        try:
            return min(most, float(self.headers.get("retry-after", default)))
        except ValueError:
            return default


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, bound to a source address.

    Enough for this API: Content-Length, chunked or to-the-end bodies; ``Connection:
    close`` honoured. Timeouts are the caller's (``asyncio.wait_for``); after any error the
    caller closes the connection, and the next request opens a new one. ``opened`` counts
    the TCP connections made: with keep-alive working it stays at one."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0
        self._host_line = f"Host: {host}:{port}\r\n"

    @property
    def is_open(self) -> bool:
        return self.writer is not None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=(self.source, 0)
        )
        self.opened += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()  # no lingering FIN_WAIT: the next phase starts clean
        self.reader = self.writer = None

    async def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        if self.writer is None:
            await self.connect()
        assert self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._host_line}Content-Length: {len(body)}\r\n"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write((head + "\r\n").encode("latin-1") + body)
        await self.writer.drain()

    async def receive(self) -> Reply:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body = await self._body(status, headers)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, headers, body)

    async def _body(self, status: int, headers: dict[str, str]) -> bytes:
        assert self.reader is not None
        if status in (204, 304) or status < 200:
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            while await self.reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(chunks)
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        headers["connection"] = "close"  # no length: the body runs to the end of the connection
        return await self.reader.read()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        await self.send(method, path, body, headers)
        return await self.receive()


NET_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


def kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed by the server"
    if isinstance(exc, RuntimeError):
        return str(exc)
    return type(exc).__name__


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- joins


@dataclass(frozen=True)
class Member:
    """A joined bench contributor: its bearer token and the key its uploads are signed with."""

    token: str
    key: SigningKey


async def join_one(conn: HttpConn, project: str, name: str, team: str | None = None) -> Member:
    """Join with proof of possession: a challenge, signed with a new key, then ``join``."""
    key = SigningKey.generate()
    for _ in range(20):
        reply = await conn.request("POST", f"{API}/{project}/challenge", b"{}", JSON)
        if reply.status == 429:
            await asyncio.sleep(reply.retry_after())
            continue
        if reply.status != 200:
            raise RuntimeError(f"challenge {reply.error_code()}")
        challenge = json.loads(reply.body)["challenge"]
        statement = {
            "challenge": challenge,
            "project": project,
            "public_key": key.public_key_b64,
            "purpose": "join",
        }
        body = {
            "display_name": name,
            "team": team,
            "public_key": key.public_key_b64,
            "challenge": challenge,
            "signature": key.sign(statement),
            "invite": None,
        }
        reply = await conn.request("POST", f"{API}/{project}/join", json.dumps(body).encode(), JSON)
        if reply.status == 429:
            await asyncio.sleep(reply.retry_after())
            continue
        if reply.status != 201:
            raise RuntimeError(reply.error_code())
        return Member(str(json.loads(reply.body)["token"]), key)
    raise RuntimeError("join kept being rate limited")


async def join_many(
    host: str,
    port: int,
    project: str,
    n: int,
    first: int = 0,
    prefix: str = "bench",
    teams: int = 0,
) -> tuple[list[Member], Counter[str]]:
    """Up to n new contributors (``{prefix}-{first}`` on), JOIN_WORKERS at once, time-boxed
    to JOIN_TIMEOUT_S; ``teams`` > 0 spreads them over that many teams."""
    members: list[Member] = []
    errors: Counter[str] = Counter()
    indices = iter(range(first, first + n))

    async def worker(w: int) -> None:
        conn = HttpConn(host, port, source_for(w))
        try:
            for i in indices:
                team = f"team-{i % teams}" if teams else None
                try:
                    joining = join_one(conn, project, f"{prefix}-{i}", team)
                    members.append(await asyncio.wait_for(joining, JOIN_ONE_TIMEOUT_S))
                except (*NET_ERRORS, RuntimeError) as exc:
                    errors[f"join: {kind(exc)}"] += 1
                    conn.close()
        finally:
            conn.close()

    workers = [asyncio.create_task(worker(w)) for w in range(min(n, JOIN_WORKERS))]
    if workers:
        _, pending = await asyncio.wait(workers, timeout=JOIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if pending:
            errors[f"join: time box of {JOIN_TIMEOUT_S:.0f} s"] += n - len(members)
    return members, errors


# --------------------------------------------------------------------------- /proc


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_s(pid: int | None) -> float | None:
    """A process's user + system CPU seconds so far (/proc/PID/stat), None if unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU use of the server and of this process over an interval, as % of one core.

    Both from /proc/PID/stat utime + stime (clock ticks), so the two columns are measured
    the same way; None for a server whose pid is unknown."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.start()

    def start(self) -> None:
        self._wall = time.monotonic()
        self._server = cpu_s(self.server_pid)
        self._self = cpu_s(os.getpid())

    def shares(self) -> tuple[float | None, float | None]:
        """(server %, load generator %) since ``start``."""
        elapsed = max(time.monotonic() - self._wall, 1e-9)
        server, own = cpu_s(self.server_pid), cpu_s(os.getpid())
        server_pct = None
        if server is not None and self._server is not None:
            server_pct = round(100 * (server - self._server) / elapsed, 1)
        own_pct = None
        if own is not None and self._self is not None:
            own_pct = round(100 * (own - self._self) / elapsed, 1)
        return server_pct, own_pct


@dataclass
class ServerSample:
    rss_mib: float | None = None
    threads: int | None = None
    fds: int | None = None


def server_sample(pid: int | None) -> ServerSample:
    """The server's RSS, threads and open fds from /proc (None where it cannot be read)."""
    sample = ServerSample()
    if pid is None:
        return sample
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sample.rss_mib = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                sample.threads = int(line.split()[1])
        sample.fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        pass
    return sample


def rss_mib(pid: int | None) -> float | None:
    return server_sample(pid).rss_mib if pid is not None else None
