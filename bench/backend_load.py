"""Load on the coordinator: many simulated contributors leasing and uploading over loopback.

Each simulated client is a thread with one keep-alive HTTP/1.1 connection. It joins with
proof of possession (federated.signing), then loops: lease a task, upload a signed update
(a small random delta encoded with the task's codec via federated.codec), or release the
task instead for a share of tasks. It prints, per phase: requests/s, leases/s, uploads/s,
p50/p99 latency per operation, the statuses seen, and the server's RSS over time.

By default it starts its own server on a free port with a fresh data folder. On a
two-core machine, give the server one core and this load generator the other, so the
clients' own CPU does not count against the server::

    .venv/bin/python bench/backend_load.py --clients 16,64,256 --seconds 15 \
        --server-cpus 0 --client-cpus 1

Every upload carries its own payload bytes (so its own blob, written and fsynced like a
real contributor's); ``--same-payload`` sends one payload per codec instead. The load is a
closed loop without think time: each client sends its next request as soon as the last
one is answered, so with N clients the latency is about N / throughput (Little's law) and
grows with N even when the server's throughput does not fall; real contributors lease
once per task, seconds or minutes apart.

``--think-ms MS`` makes it closer to an open loop: after each task (lease, then upload or
release) a client pauses for a random think time, exponentially distributed with mean MS
(so arrivals are roughly Poisson). N clients then offer about N / (MS + service time)
tasks per second, and p99 is the latency at that offered load, not a queue the bench
builds itself. Report both: the closed loop for capacity, a think time for latency::

    .venv/bin/python bench/backend_load.py --clients 256 --think-ms 500 --seconds 15 \
        --server-cpus 0 --client-cpus 1

Phases run one after another on the same server with growing client counts, so the RSS
column shows whether memory grows with the number of clients. ``--url`` (and
``--server-pid`` for RSS) aims it at a server you started yourself instead; the project
(``--project``) must then exist and be open.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from federated.codec import decode_model, encode_update  # noqa: E402
from federated.signing import SigningKey, canonical_json  # noqa: E402

CLI = [sys.executable, "-m", "backend.cli"]


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    data: Path, project: str, threads: int, cpus: str | None, buffer_size: int = 32
) -> tuple[subprocess.Popen[bytes], str]:
    subprocess.run(
        [
            *CLI,
            "project",
            "create",
            project,
            "--data",
            str(data),
            "--recipe",
            "digits-mlp",
            "--mode",
            "async",
            "--buffer-size",
            str(buffer_size),
            "--max-staleness",
            "1000",
            "--max-concurrent-leases",
            "1000000",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    config = data / "bench.toml"
    config.write_text("rate = 0\n", encoding="utf-8")  # no rate limit: measure the server
    port = free_port()
    command = [*CLI, "serve", "--data", str(data), "--port", str(port), "--config", str(config)]
    command += ["--threads", str(threads)]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not answer /healthz within 60 s")


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- client


class Conn:
    """One keep-alive connection; reconnects after errors or when the server closes it.

    ``opened`` counts TCP connections made: with keep-alive working it stays at one per
    client, so a count close to the number of requests means the server closes connections.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.conn: http.client.HTTPConnection | None = None
        self.opened = 0

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                self.opened += 1
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:  # the server said Connection: close
                    self.conn.close()
                    self.conn = None
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, exc: BaseException) -> None:
        kind = f"{type(exc).__name__}: {str(exc)[:80]}"
        with self.lock:
            self.errors += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def record(self, op: str, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies.setdefault(op, []).append(seconds)
            key = f"{op} {status}"
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.latencies.values())


def timed(
    conn: Conn, stats: Stats, op: str, method: str, path: str, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    start = time.perf_counter()
    status, headers, data = conn.request(method, path, **kw)
    stats.record(op, status, time.perf_counter() - start)
    return status, headers, data


def join(conn: Conn, project: str, name: str) -> tuple[str, SigningKey]:
    api = f"/api/v1/projects/{project}"
    key = SigningKey.generate()
    for _ in range(50):
        status, headers, data = conn.request(
            "POST", f"{api}/challenge", body=b"{}", headers={"Content-Type": "application/json"}
        )
        if status == 429:
            time.sleep(float(headers.get("retry-after", "1")))
            continue
        if status != 200:
            raise RuntimeError(f"challenge: {status} {data[:300]!r}")
        challenge = json.loads(data)["challenge"]
        statement = {
            "challenge": challenge,
            "project": project,
            "public_key": key.public_key_b64,
            "purpose": "join",
        }
        body = {
            "display_name": name,
            "team": f"team-{hash(name) % 8}",
            "public_key": key.public_key_b64,
            "challenge": challenge,
            "signature": key.sign(statement),
            "invite": None,
        }
        status, headers, data = conn.request(
            "POST",
            f"{api}/join",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status == 429:
            time.sleep(float(headers.get("retry-after", "1")))
            continue
        if status != 201:
            raise RuntimeError(f"join: {status} {data[:300]!r}")
        return json.loads(data)["token"], key
    raise RuntimeError("join kept being rate limited")


class Payloads:
    """Real encoded updates: one random delta per codec, made distinct per upload.

    By default every upload gets its own bytes (so its own digest and blob: the server
    writes and fsyncs each one, as with real contributors): a counter is written into
    the int8 values of the first quantised tensor, which keeps the payload valid (finite,
    within the norm bound). ``same=True`` sends one payload per codec instead (the server
    then stores one blob and only checks the others against it).
    """

    def __init__(self, url: str, project: str, *, same: bool = False) -> None:
        conn = Conn(url)
        status, _, data = conn.request("GET", f"/api/v1/projects/{project}/models/current")
        assert status == 200, (status, data[:300])
        digest = json.loads(data)["manifest"]["digest"]
        status, _, data = conn.request("GET", f"/api/v1/projects/{project}/models/{digest}")
        assert status == 200, status
        state = decode_model(data)
        generator = torch.Generator().manual_seed(0)
        self.delta = {k: torch.randn(v.shape, generator=generator) * 1e-3 for k, v in state.items()}
        self.same = same
        self._cache: dict[str, tuple[bytes, str, int | None]] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, codec: str) -> tuple[bytes, str]:
        with self._lock:
            if codec not in self._cache:
                encoded = encode_update(self.delta, codec)
                self._cache[codec] = (
                    encoded.payload,
                    encoded.digest,
                    _int8_offset(encoded.payload),
                )
            payload, digest, offset = self._cache[codec]
            n = next(self._counter)
        if self.same or offset is None:
            return payload, digest
        varied = bytearray(payload)
        varied[offset : offset + 8] = n.to_bytes(8, "little")
        return bytes(varied), hashlib.sha256(varied).hexdigest()


def _int8_offset(payload: bytes) -> int | None:
    """Where 8 int8 values of a quantised tensor start in a safetensors payload (None: none)."""
    size = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + size])
    for name, entry in header.items():
        if name != "__metadata__" and entry["dtype"] == "I8":
            start, end = entry["data_offsets"]
            if end - start >= 8:
                return 8 + size + int(start)
    return None


def client_loop(
    url: str,
    project: str,
    index: int,
    stop: threading.Event,
    stats: Stats,
    payloads: Payloads,
    upload_share: float,
    think_s: float,
) -> None:
    conn = Conn(url)
    rng = random.Random(index)
    try:
        token, key = join(conn, project, f"bench-{index}")
    except Exception as exc:  # one failed join should not stop the run
        print(f"client {index}: {exc}", file=sys.stderr)
        stats.error(exc)
        return
    auth = {"Authorization": f"Bearer {token}"}
    api = f"/api/v1/projects/{project}"
    while not stop.is_set():
        if think_s > 0 and stop.wait(rng.expovariate(1.0 / think_s)):
            break
        try:
            status, headers, data = timed(
                conn, stats, "lease", "POST", f"{api}/tasks/lease?wait=0", headers=auth
            )
            if status != 200:
                time.sleep(min(1.0, float(headers.get("retry-after", "0.1"))))
                continue
            task = json.loads(data)["manifest"]
            if rng.random() >= upload_share:
                timed(
                    conn,
                    stats,
                    "release",
                    "POST",
                    f"{api}/tasks/{task['task_id']}/release",
                    headers=auth,
                )
                continue
            payload, digest = payloads.get(task["codec"])
            manifest = {
                "project": project,
                "task_id": task["task_id"],
                "client_id": task["client_id"],
                "base_digest": task["base_digest"],
                "payload_digest": digest,
                "codec": task["codec"],
                "num_examples": int(task["max_examples"]),
                "metrics": {
                    "loss_before": 2.3,
                    "loss_after": 2.2,
                    "seconds": 0.1,
                    "examples_per_second": 1000.0,
                },
            }
            raw = canonical_json(manifest)
            headers = {
                **auth,
                "Content-Type": "application/octet-stream",
                "X-Barnraise-Manifest": base64.b64encode(raw).decode(),
                "X-Barnraise-Signature": key.sign_bytes(raw),
            }
            timed(
                conn,
                stats,
                "upload",
                "PUT",
                f"{api}/tasks/{task['task_id']}/update",
                body=payload,
                headers=headers,
            )
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            stats.error(exc)
            time.sleep(0.05)
    with stats.lock:
        stats.connections += conn.opened


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_phase(
    url: str,
    project: str,
    clients: int,
    seconds: float,
    pid: int | None,
    payloads: Payloads,
    upload_share: float,
    interval: float,
    first_index: int,
    think_s: float = 0.0,
) -> dict[str, Any]:
    stats = Stats()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client_loop,
            args=(url, project, first_index + i, stop, stats, payloads, upload_share, think_s),
            daemon=True,
        )
        for i in range(clients)
    ]
    rss_start = rss_mb(pid)
    for t in threads:
        t.start()
    # Joins are not part of the measurement: wait until every client has leased once.
    deadline = time.monotonic() + 120
    while stats.count() < clients and time.monotonic() < deadline:
        time.sleep(0.05)
    with stats.lock:
        stats.latencies.clear()
        stats.statuses.clear()
    start = time.monotonic()
    last_count, last_t = 0, start
    rss_samples: list[float] = []
    think = f", think time {think_s * 1000:.0f} ms (mean)" if think_s > 0 else ", closed loop"
    print(f"\n== {clients} clients, {seconds:.0f} s{think} ==")
    print(f"{'t s':>6} {'req/s':>8} {'server RSS MiB':>15}")
    while time.monotonic() - start < seconds:
        time.sleep(interval)
        now, count = time.monotonic(), stats.count()
        rss = rss_mb(pid)
        if rss is not None:
            rss_samples.append(rss)
        rss_text = f"{rss:15.1f}" if rss is not None else f"{'-':>15}"
        print(
            f"{now - start:6.1f} {(count - last_count) / (now - last_t):8.0f} {rss_text}",
            flush=True,
        )
        last_count, last_t = count, now
    elapsed = time.monotonic() - start
    with stats.lock:
        latencies = {k: list(v) for k, v in stats.latencies.items()}
        statuses = dict(stats.statuses)
    stop.set()
    for t in threads:
        t.join(timeout=130)
    everything = [x for v in latencies.values() for x in v]
    leases = sum(n for k, n in statuses.items() if k == "lease 200")
    uploads = sum(n for k, n in statuses.items() if k in ("upload 200", "upload 201"))
    result = {
        "clients": clients,
        "think_ms": round(think_s * 1000, 1),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(everything) / elapsed, 1),
        "leases_per_s": round(leases / elapsed, 1),
        "uploads_per_s": round(uploads / elapsed, 1),
        "p50_ms": round(percentile(everything, 0.50) * 1000, 2),
        "p99_ms": round(percentile(everything, 0.99) * 1000, 2),
        "by_op": {
            op: {
                "n": len(v),
                "p50_ms": round(percentile(v, 0.5) * 1000, 2),
                "p99_ms": round(percentile(v, 0.99) * 1000, 2),
            }
            for op, v in sorted(latencies.items())
        },
        "statuses": dict(sorted(statuses.items())),
        "client_errors": stats.errors,
        "client_error_kinds": dict(sorted(stats.error_kinds.items())),
        "connections_opened": stats.connections,
        "rss_mib_start": rss_start,
        "rss_mib_max": max(rss_samples) if rss_samples else None,
        "rss_mib_end": rss_samples[-1] if rss_samples else None,
    }
    print(
        f"-> {result['requests_per_s']} req/s, {result['leases_per_s']} leases/s, "
        f"{result['uploads_per_s']} uploads/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
    )
    for op, row in result["by_op"].items():
        print(f"   {op:8} n={row['n']:<7} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms")
    print(f"   statuses {result['statuses']}  client errors {stats.errors}")
    for kind, n in result["client_error_kinds"].items():
        print(f"     {n} x {kind}")
    print(f"   TCP connections opened by the clients (joins included): {stats.connections}")
    if rss_samples:
        print(
            f"   server RSS MiB: start {rss_start:.1f}, max {max(rss_samples):.1f}, end {rss_samples[-1]:.1f}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="an already running backend (default: start one)")
    p.add_argument("--server-pid", type=int, help="its process id, to sample RSS")
    p.add_argument("--project", default="bench")
    p.add_argument(
        "--clients", default="16,64,256", help="comma-separated client counts, one phase each"
    )
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    p.add_argument(
        "--upload-share",
        type=float,
        default=0.5,
        help="share of leased tasks uploaded (else released)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between progress lines")
    p.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean think time per client between tasks (exponential); 0: closed loop",
    )
    p.add_argument("--server-threads", type=int, default=64)
    p.add_argument(
        "--buffer-size",
        type=int,
        default=32,
        help="async aggregation every this many updates (the server aggregates during the run)",
    )
    p.add_argument("--server-cpus", help="taskset CPU list for the spawned server, e.g. 0,1")
    p.add_argument(
        "--client-cpus",
        help="CPU list this load-generating process is pinned to (os.sched_setaffinity), e.g. 1",
    )
    p.add_argument(
        "--same-payload",
        action="store_true",
        help="send one payload per codec (default: distinct bytes per upload, a blob each)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with every phase at the end"
    )
    args = p.parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})

    proc: subprocess.Popen[bytes] | None = None
    data: Path | None = None
    pid = args.server_pid
    url = args.url
    if url is None:
        data = Path(tempfile.mkdtemp(prefix="barnraise-bench-"))
        proc, url = start_server(
            data, args.project, args.server_threads, args.server_cpus, args.buffer_size
        )
        pid = proc.pid
        print(f"server {url} (pid {pid}, cpus {args.server_cpus or 'all'}, data {data})")
    print(
        f"load: {args.clients} clients as threads of this process (pid {os.getpid()}), "
        f"cpus {args.client_cpus or 'all'}; "
        f"{'one payload per codec' if args.same_payload else 'distinct payload per upload'}"
    )
    try:
        payloads = Payloads(url, args.project, same=args.same_payload)
        results = []
        first = 0
        for clients in (int(c) for c in args.clients.split(",")):
            results.append(
                run_phase(
                    url,
                    args.project,
                    clients,
                    args.seconds,
                    pid,
                    payloads,
                    args.upload_share,
                    args.interval,
                    first,
                    args.think_ms / 1000,
                )
            )
            first += clients
        if args.json:
            print(
                json.dumps(
                    {
                        "url": url,
                        "server_cpus": args.server_cpus,
                        "client_cpus": args.client_cpus,
                        "same_payload": args.same_payload,
                        "phases": results,
                    }
                )
            )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
