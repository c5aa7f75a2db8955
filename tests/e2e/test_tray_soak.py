"""Soak: the real tray process trains for 3 minutes against a real coordinator on loopback.

The tray (`python -m app.tray --show`, Qt offscreen) is joined to a coordinator served from
this process (``backend.wsgi.create_app`` + ``backend.server.make_server``) whose project
closes a round on every update, so a single contributor gets task after task. The window
stays open and its charts repaint while the loss and credit series grow with every task.

What it proves (issue 9, section 1): the process stays alive (PySide6 6.12.0 aborted it
within seconds, in ``LineChart.paintEvent``), the coordinator accepts a steady stream of its
updates, its charts really repaint with hundreds of points, and the tray process's RSS (the
tray only, not the training child) grows by at most RSS_GROWTH_LIMIT_MB after the first
minute. The UI tests use a fake engine and a handful of points; this is the real thing.

Nothing here sleeps to pass: the loop waits on the tray process itself (``Popen.wait`` with a
timeout), so it notices a crash within a sample interval. The measured numbers are written
to tests/e2e/artifacts/tray-soak.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from backend.cli import DEMO_HPARAMS
from backend.demo_headless import DEMO_CONTRIBUTOR_SETTINGS
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app
from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
PROJECT = "soak"

SOAK_S = 180.0  # training time under watch, from the first accepted update
BASELINE_AT_S = 60.0  # RSS growth is measured from here: start-up allocations are done
RSS_GROWTH_LIMIT_MB = 20.0
SAMPLE_S = 1.0
# The longest stretch without an accepted update that still counts as a steady stream. A
# task takes well under a second here; the margin is for a loaded 2-core CI machine.
MAX_GAP_S = 45.0
# Enough points that a broken PySide6 (one None reference lost per void call) runs out
# within the first paints, and that a chart whose history grew without bound would show.
MIN_CHART_POINTS = 100
START_TIMEOUT_S = 120.0  # tray up, trainer child started, first update accepted
STOP_TIMEOUT_S = 60.0

pytestmark = [pytest.mark.soak, pytest.mark.timeout(SOAK_S + 2 * START_TIMEOUT_S + 60)]


@dataclass
class Coordinator:
    app: Any
    url: str

    def accepted(self) -> int:
        co = self.app.coordinator
        return int(co.stats(co.project(PROJECT))["updates_accepted"])


@dataclass
class Sample:
    at: float  # seconds since the first accepted update
    rss_mb: float  # the tray process only
    accepted: int  # updates the coordinator accepted so far
    loss_paints: int
    loss_points: int


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    app = create_app(tmp_path / "backend", rate=None)
    # One update closes a round: a lone contributor is never kept waiting for others.
    app.coordinator.create_project(
        PROJECT,
        recipe="digits-mlp",
        strategy="fedavg",
        hparams=DEMO_HPARAMS,
        settings={"mode": "sync", "clients_per_round": 1, "min_updates": 1, "codec": "int8"},
    )
    server = make_server(app, "127.0.0.1", 0, threads=8)
    start_in_thread(server)
    yield Coordinator(app=app, url=f"http://127.0.0.1:{bound_port(server)}")
    server.stop()
    app.close()


def _volunteer_env(root: Path) -> dict[str, str]:
    config = root / "config"
    config.mkdir(parents=True)
    # The engine's policy: compute at once, whatever else the CI machine is doing.
    (config / "settings.json").write_text(json.dumps(DEMO_CONTRIBUTOR_SETTINGS))
    os.chmod(config / "settings.json", 0o600)
    (root / "run").mkdir(mode=0o700)
    return dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        BARNRAISE_CONFIG_DIR=str(config),
        BARNRAISE_DATA_DIR=str(root / "data"),
        BARNRAISE_CREDENTIALS=str(root / "credentials.json"),
        BARNRAISE_TRAY_READY_FILE=str(root / "ready.json"),
        BARNRAISE_TRAY_STATS_FILE=str(root / "stats.json"),
        XDG_CONFIG_HOME=str(root / "xdg"),
        XDG_RUNTIME_DIR=str(root / "run"),
        PYTHONUNBUFFERED="1",
    )


def _tail(log: Path, lines: int = 40) -> str:
    """The end of the tray's log, led by CPython's fatal-error report when there is one
    (its thread dumps would push the "Fatal Python error" line out of a plain tail)."""
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    fatal = next((i for i, line in enumerate(text) if "Fatal Python error" in line), None)
    head = [*text[fatal : fatal + 12], "[...]"] if fatal is not None else []
    return "\n".join(head + text[-lines:])


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def _read_stats(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _wait_alive(
    proc: subprocess.Popen[bytes],
    log: Path,
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
) -> None:
    """Wait for ``predicate`` while the tray lives; fail at once, with its log, if it dies."""

    def watch_the_tray(seconds: float) -> None:
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return
        pytest.fail(
            f"the tray died ({_describe_exit(proc.returncode)}) waiting for {what}:\n{_tail(log)}"
        )

    wait_until(
        predicate, timeout, what, interval=0.2, pause=watch_the_tray, details=lambda: _tail(log)
    )


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None
    return proc.returncode


def _per_minute(samples: list[Sample], value: Callable[[Sample], int]) -> list[int]:
    """How much ``value`` grew in each whole minute of the soak."""
    counts = []
    for minute in range(int(SOAK_S // 60)):
        inside = [s for s in samples if minute * 60 <= s.at <= (minute + 1) * 60]
        counts.append(value(inside[-1]) - value(inside[0]) if inside else 0)
    return counts


def _longest_gap(samples: list[Sample]) -> float:
    gap, last_change, last = 0.0, 0.0, samples[0].accepted
    for sample in samples:
        if sample.accepted != last:
            last, last_change = sample.accepted, sample.at
        gap = max(gap, sample.at - last_change)
    return gap


def test_tray_trains_for_three_minutes_with_charts_open(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    root = tmp_path / "volunteer"
    env = _volunteer_env(root)
    joined = subprocess.run(
        [sys.executable, "-m", "app.cli", "join", f"{coordinator.url}/p/{PROJECT}", "--yes",
         "--name", "soak-volunteer"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stdout + joined.stderr

    log = root / "tray.log"
    ready, stats_file = root / "ready.json", root / "stats.json"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.tray", "--show"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_alive(proc, log, ready.exists, START_TIMEOUT_S, "ready file")
        _wait_alive(proc, log, lambda: coordinator.accepted() > 0, START_TIMEOUT_S, "update")
        _wait_alive(proc, log, stats_file.exists, START_TIMEOUT_S, "stats file")
        assert json.loads(ready.read_text())["window_visible"] is True, "the window is not open"
        tray = psutil.Process(proc.pid)
        cpu_before = tray.cpu_times()
        started = time.monotonic()
        samples: list[Sample] = []
        while (elapsed := time.monotonic() - started) < SOAK_S:
            try:
                proc.wait(SAMPLE_S)  # returns only if the tray died
            except subprocess.TimeoutExpired:
                pass
            else:
                pytest.fail(
                    f"the tray died after {elapsed:.0f} s of training "
                    f"({_describe_exit(proc.returncode)}):\n{_tail(log)}"
                )
            charts = _read_stats(stats_file).get("charts", {})
            samples.append(
                Sample(
                    at=time.monotonic() - started,
                    rss_mb=tray.memory_info().rss / 2**20,
                    accepted=coordinator.accepted(),
                    loss_paints=int(charts.get("loss", {}).get("paints", 0)),
                    loss_points=int(charts.get("loss", {}).get("painted_points", 0)),
                )
            )
        cpu_after = tray.cpu_times()
        final = _read_stats(stats_file)
    finally:
        returncode = _stop(proc)

    wall = samples[-1].at
    cpu_percent = (
        100 * ((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)) / wall
    )
    baseline = next(s for s in samples if s.at >= BASELINE_AT_S)
    growth = samples[-1].rss_mb - baseline.rss_mb
    updates = _per_minute(samples, lambda s: s.accepted)
    paints = _per_minute(samples, lambda s: s.loss_paints)
    report = {
        "soak_s": round(wall, 1),
        "updates_accepted_per_minute": updates,
        "longest_gap_s": round(_longest_gap(samples), 1),
        "tray_rss_mb": {
            "at_start": round(samples[0].rss_mb, 1),
            "at_1_min": round(baseline.rss_mb, 1),
            "at_end": round(samples[-1].rss_mb, 1),
            "peak": round(max(s.rss_mb for s in samples), 1),
            "growth_after_1_min": round(growth, 1),
        },
        "tray_cpu_percent": round(cpu_percent, 1),
        "loss_chart_paints_per_minute": paints,
        "loss_chart_points_at_end": samples[-1].loss_points,
        "tray_stats_at_end": final,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "tray-soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    assert all(count > 0 for count in updates), f"a minute without accepted updates: {report}"
    assert _longest_gap(samples) <= MAX_GAP_S, f"the updates stalled: {report}"
    assert final.get("window_visible") is True, f"the window closed: {report}"
    assert all(count > 0 for count in paints), f"the loss chart stopped repainting: {report}"
    assert samples[-1].loss_points >= MIN_CHART_POINTS, f"too few points drawn: {report}"
    assert growth <= RSS_GROWTH_LIMIT_MB, (
        f"the tray's RSS grew by {growth:.1f} MB after the first minute "
        f"(limit {RSS_GROWTH_LIMIT_MB:g} MB): {report}"
    )
    assert returncode == 0, f"the tray did not quit cleanly on SIGTERM:\n{_tail(log)}"
