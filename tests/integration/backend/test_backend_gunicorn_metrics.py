"""Two gunicorn workers in prometheus_client's multiprocess mode: one ``/metrics`` answer
counts the requests of both, and a worker that exits stops reporting its live gauges."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from backend.cli import main as backend_cli
from backend.testing import wait_until_healthy
from tests.support import wait_until

GUNICORN = Path(sys.executable).with_name("gunicorn")

GUNICORN_CONF = """\
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""
"""The config file backend/metrics.py documents."""

ROUTE = "list_projects"
BATCH = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counts_by_worker(prom: Path) -> dict[int, float]:
    """pid -> list_projects requests that worker counted, read from its own value file."""
    counts: dict[int, float] = {}
    for path in prom.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "barnraise_http_requests_total" and (
                    sample.labels.get("route") == ROUTE
                ):
                    total += sample.value
        counts[pid] = total
    return counts


def live_gauge_pids(prom: Path) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in prom.glob("gauge_livemax_*.db")}


def scraped_requests(base: str) -> tuple[float, str]:
    """(list_projects requests in one /metrics answer, the answer)."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("barnraise_http_requests_total{") and f'route="{ROUTE}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total, text


def one_request(base: str) -> None:
    # A new connection each time, so the kernel hands them to whichever worker accepts.
    answer = requests.get(f"{base}/api/v1/projects", headers={"Connection": "close"}, timeout=10)
    assert answer.status_code == 200


@pytest.mark.skipif(os.name != "posix", reason="gunicorn runs on POSIX only")
def test_two_workers_are_counted_in_one_metrics_answer(tmp_path: Path) -> None:
    assert GUNICORN.exists(), "gunicorn is a dev dependency; run `make test` to install it"
    data = tmp_path / "data"
    assert (
        backend_cli(["project", "create", "digits", "--recipe", "digits-mlp", "--data", str(data)])
        == 0
    )
    prom = tmp_path / "prometheus"
    prom.mkdir()  # empty at start, as the multiprocess mode requires
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF)
    port = free_port()
    server = subprocess.Popen(
        [
            str(GUNICORN),
            "--config",
            str(conf),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "backend.wsgi:app_from_env()",
        ],
        env={**os.environ, "BARNRAISE_DATA": str(data), "PROMETHEUS_MULTIPROC_DIR": str(prom)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, timeout=60)
        # Each worker sets the model version gauge as its app starts, just before it accepts.
        wait_until(lambda: len(live_gauge_pids(prom)) == 2, 60, "both workers to load the app")

        sent = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(40):
                list(pool.map(lambda _: one_request(base), range(BATCH)))
                sent += BATCH
                by_worker = counts_by_worker(prom)
                if len(by_worker) == 2 and all(by_worker.values()):
                    break
        by_worker = counts_by_worker(prom)
        assert len(by_worker) == 2 and all(by_worker.values()), (
            f"one worker served all {sent} requests: {by_worker}"
        )
        assert sum(by_worker.values()) == sent

        total, text = scraped_requests(base)
        assert total == sent, text
        # "livemax": the live workers' newest version, once per project (no pid label).
        assert re.findall(r'^barnraise_model_version\{project="digits"\} (\S+)$', text, re.M) == [
            "0.0"
        ], text

        # A worker that exits: gunicorn's child_exit hook drops its live gauge, its
        # counts stay counted, and its replacement reports as it starts.
        gone = sorted(by_worker)[0]
        assert gone in {p.pid for p in psutil.Process(server.pid).children()}
        os.kill(gone, signal.SIGTERM)
        wait_until(
            lambda: gone not in live_gauge_pids(prom) and len(live_gauge_pids(prom)) == 2,
            60,
            "the exited worker's gauge to go and its replacement's to come",
        )
        assert scraped_requests(base)[0] == sent
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert "Traceback" not in err, err
