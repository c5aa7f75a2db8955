"""Load on the coordinator: many simulated contributors leasing and uploading over loopback.

Active mode (the default; ``bench/active_load.py``). Each simulated contributor is an
asyncio task with one keep-alive HTTP/1.1 connection (the minimal client of
``bench/loadgen.py``, from source addresses 127.0.0.2 … 127.0.0.254). It joins with proof
of possession (federated.signing), then loops: lease a task, upload a signed update, or
release the task instead for a share of tasks. The generator is cheap per request, so
the server, not the bench, is what saturates first: the upload payload is encoded once
per codec before the phases and made distinct per upload by an 8-byte tag
(``bench/load_payloads.py``); each upload's manifest is signed (Ed25519) for real. It
prints, per phase: requests/s, leases/s, uploads/s, p50/p99 latency per operation, the
statuses seen, the server's RSS over time, and the CPU the server and the load generator
each used (% of one core, from /proc/PID/stat): whichever is near 100 % is the limit.

By default it starts its own server on a free port with a fresh data folder (the project
created with ``--spot-check-rate 0``: the bench uploads made-up deltas, which
re-execution would rightly ban). On a two-core machine, give the server one core and this
load generator the other, so the clients' own CPU does not count against the server::

    .venv/bin/python bench/backend_load.py --clients 16,64,256 --seconds 10 \
        --server-cpus 0 --client-cpus 1

Every upload carries its own payload bytes (so its own blob, written and fsynced like a
real contributor's; the server refuses a repeated payload as ``duplicate_payload``);
``--same-payload`` sends one payload per codec instead (the server refuses every repeat
as ``duplicate_payload`` and ends that task: the refusal path, not accepted uploads,
is then measured). The load is a closed loop without
think time: each client sends its next request as soon as the last one is answered, so
with N clients the latency is about N / throughput (Little's law) and grows with N even
when the server's throughput does not fall; real contributors lease once per task,
seconds or minutes apart.

``--think-ms MS`` makes it closer to an open loop: after each task (lease, then upload or
release) a client pauses for a random think time, exponentially distributed with mean MS
(so arrivals are roughly Poisson). N clients then offer about N / (MS + service time)
tasks per second, and p99 is the latency at that offered load, not a queue the bench
builds itself. Report both: the closed loop for capacity, a think time for latency::

    .venv/bin/python bench/backend_load.py --clients 256 --think-ms 500 --seconds 10 \
        --server-cpus 0 --client-cpus 1

Phases run one after another on the same server with growing client counts (new
contributors each phase, joined before it and not timed), so the RSS column shows whether
memory grows with the number of clients. ``--url`` (and ``--server-pid`` for RSS and CPU)
aims it at a server you started yourself instead; the project (``--project``) must then
exist and be open.

Scale-out mode (``bench/scale_out.py``): ``--stores sqlite,postgres --processes 1,2,3``
runs, in one invocation, the same active phases against one SQLite server (always one
process, reached directly), one coordinator on a throwaway PostgreSQL reached directly,
and 1, 2, 3 coordinator processes sharing that PostgreSQL behind a real nginx, each with a
fresh data folder and database; then one table: leases/s, uploads/s, p99 per operation,
RSS and CPU per coordinator process, PostgreSQL's and nginx's CPU, the generator's, and
ratios against SQLite. ``--server-cpus`` pins all of the server side (coordinators,
PostgreSQL, nginx), ``--client-cpus`` the generator::

    .venv/bin/python bench/backend_load.py --stores sqlite,postgres --processes 1,2,3 \
        --clients 64 --seconds 10 --server-cpus 0 --client-cpus 1

Idle mode (``bench/idle_load.py``): ``--idle N,N,...`` runs, instead of the leasing load,
one phase per count of contributors that only wait for work. Each joins for real and holds
one long poll (``POST .../tasks/lease?wait=30``, again at once on 204) on its own
keep-alive connection, from addresses 127.0.0.2 … 127.0.0.254; the project is created
with no work left once one bench contributor holds its only task. Once all N polls are
in flight, a probe GETs ``/healthz`` every 50 ms for ``--idle-seconds`` (2 s without an
answer: a failure). Each phase prints the polls held, 204s/s, tasks seen, client errors,
/healthz p50/p99/max and failures, the server's RSS, threads and open fds, and ratios
against the N=0 phase; the exit status is 1 if a phase misses the aims (every poll held
and answered, /healthz p99 under 100 ms, server RSS under 1 GiB). Pin the server to one
core and the generator to the other, as above::

    .venv/bin/python bench/backend_load.py --idle 0,1000,10000 --idle-seconds 40 \
        --server-cpus 0 --client-cpus 1

It raises the open-files limit to its hard limit first (the server it starts inherits it).
Every step is time-boxed (joins, establishing the polls, each phase, the wait for the
server to drop the last phase's connections), so a server that cannot hold N polls makes
it report failure rather than hang. With ``--url``, create the project so that one held
task leaves no work (async, ``--max-concurrent-leases 1``, a long ``--lease-s``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import active_load, idle_load  # noqa: E402
from bench.loadgen import raise_fd_limit  # noqa: E402

CLI = [sys.executable, "-m", "backend.cli"]


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_project(
    data: Path,
    project: str,
    buffer_size: int = 32,
    settings: Sequence[str] = (),
    database_url: str | None = None,
) -> Path:
    """The bench's project in ``data`` (its store in ``database_url`` when given); the
    server configuration file to serve it with (no rate limit: measure the server).
    ``settings``: more ``project create`` flags, after (so overriding) the bench's own."""
    database = ["--database-url", database_url] if database_url else []
    subprocess.run(
        [
            *CLI,
            "project",
            "create",
            project,
            "--data",
            str(data),
            *database,
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
            # The bench uploads made-up deltas, which re-execution (rightly) catches and
            # bans; spot checks are measured by bench/adversaries.py instead.
            "--spot-check-rate",
            "0",
            *settings,
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    config = data / "bench.toml"
    config.write_text("rate = 0\n", encoding="utf-8")
    return config


def spawn_server(
    command_tail: Sequence[str], port: int, threads: int | None, cpus: str | None, log: Path
) -> subprocess.Popen[bytes]:
    """``serve`` on ``port`` with ``command_tail`` (``--data``, ``--config``, …), its
    output to ``log``; not waited for (``wait_healthy``)."""
    command = [*CLI, "serve", *command_tail, "--port", str(port)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    # A file, not a pipe nobody reads: a chatty server must not block.
    with log.open("wb") as stderr:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> str:
    """The server's URL once ``/healthz`` answers 200; exits if it dies or takes 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text(errors='replace')[-4000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not answer /healthz within 60 s")


def start_server(
    data: Path,
    project: str,
    threads: int | None,
    cpus: str | None,
    buffer_size: int = 32,
    settings: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """``threads`` None: the server's default. ``settings``: more ``project create`` flags,
    after (so overriding) the bench's own."""
    config = create_project(data, project, buffer_size, settings)
    port = free_port()
    log = data / "server.log"
    tail = ["--data", str(data), "--config", str(config)]
    proc = spawn_server(tail, port, threads, cpus, log)
    return proc, wait_healthy(proc, port, log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="an already running backend (default: start one)")
    p.add_argument("--server-pid", type=int, help="its process id, to sample RSS and CPU")
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
    p.add_argument(
        "--server-threads", type=int, help="default 64; idle mode: the server's own default"
    )
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
        help="send one payload per codec, so repeats are refused as duplicate_payload "
        "(default: distinct bytes per upload, a blob each)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with every phase at the end"
    )
    p.add_argument(
        "--idle",
        help="idle mode instead: comma-separated counts of contributors that only long-poll "
        "for work while a probe times /healthz, one phase each (bench/idle_load.py)",
    )
    p.add_argument("--idle-seconds", type=float, default=40.0, help="probe time per idle phase")
    p.add_argument("--idle-wait", type=float, default=30.0, help="the idle polls' ?wait= seconds")
    p.add_argument(
        "--stores",
        help="scale-out mode instead (bench/scale_out.py): comma-separated sqlite,postgres; "
        "the active phases against each, fresh each time, and one table at the end",
    )
    p.add_argument(
        "--processes",
        help="scale-out mode: comma-separated counts of coordinator processes on one "
        "PostgreSQL, each behind nginx (postgres/1 also runs direct; sqlite is always one "
        "process, direct); default 1; alone, it implies --stores sqlite,postgres",
    )
    args = p.parse_args(argv)
    scale_out_mode = args.stores is not None or args.processes is not None
    if scale_out_mode and (args.url or args.server_pid or args.idle is not None):
        p.error("--stores/--processes start their own servers: drop --url, --server-pid, --idle")
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    raise_fd_limit()  # before the server starts: it inherits the limit
    if scale_out_mode:
        from bench import scale_out  # here, not above: it uses this module's server helpers

        return scale_out.run(args)

    proc: subprocess.Popen[bytes] | None = None
    data: Path | None = None
    pid = args.server_pid
    url = args.url
    if url is None:
        data = Path(tempfile.mkdtemp(prefix="barnraise-bench-"))
        idle = args.idle is not None
        settings = idle_load.idle_setting_flags() if idle else ()
        threads = args.server_threads or (None if idle else 64)
        proc, url = start_server(
            data, args.project, threads, args.server_cpus, args.buffer_size, settings
        )
        pid = proc.pid
        print(
            f"server {url} (pid {pid}, cpus {args.server_cpus or 'all'}, "
            f"threads {threads or 'default'}, data {data})"
        )
    if args.idle is not None:
        try:
            counts = [int(c) for c in args.idle.split(",")]
            return idle_load.run_idle(
                url, args.project, counts, args.idle_seconds, args.idle_wait, pid, as_json=args.json
            )
        finally:
            stop_server(proc, data)
    print(
        f"load: {args.clients} clients as asyncio tasks of this process (pid {os.getpid()}), "
        f"cpus {args.client_cpus or 'all'}"
    )
    try:
        results = active_load.run_active(
            url,
            args.project,
            [int(c) for c in args.clients.split(",")],
            args.seconds,
            pid,
            think_s=args.think_ms / 1000,
            upload_share=args.upload_share,
            interval=args.interval,
            same_payload=args.same_payload,
        )
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
        stop_server(proc, data)
    return 0


def stop_server(proc: subprocess.Popen[bytes] | None, data: Path | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if data is not None:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
