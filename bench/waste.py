"""Share of contributed training time that ended in an aggregate, with and without fitting.

    python -m bench.waste [--seconds 50] [--contributors 10] [--max-staleness 3]

One real coordinator (the embedded server on loopback) hosts two async (FedBuff) digits-mlp projects,
one after the other, with the same scenario: ``--contributors`` real contributor engines
(the ``Controller`` that ``barnraise --headless`` runs, each with its own training child)
of mixed speed — half at full speed, a fifth at a 50 % CPU limit, the rest throttled to
25 % — and a fifth of them leaving (``stop()``) at 30 % of the phase and coming back (a new
``Controller`` on the same folder) at 55 %. The phases differ in one project setting:

- baseline: ``fit_tasks`` off — every lease is the full task, whatever the contributor;
- fitted: ``fit_tasks`` on — tasks sized to each contributor's pace, or withheld, and
  each manifest says ``useful_until`` (what the engine does with it is its own business).

Each phase first warms up until every engine had an upload answered (its training child
started, its data loaded; tens of seconds on a small machine); only tasks begun after
that are measured. Training time is what the trainers report: each task's compute seconds (throttle sleeps
and pauses excluded), from ``TaskFinished`` when it was uploaded, else from its last
``Progress`` (given back, lost, cut by a departure). *Used* is the training time of
updates that went into a published version. At the end of a phase the project is paused
(no new leases, uploads still accepted), running tasks may finish for up to ``--drain``
seconds, then the engines stop. Left out of both sides, and printed: updates still
pending and fresh at the end (the buffer was not full yet), tasks cut by the final stop.

Prints a markdown table. Aim (issue 9): at least 95 % used with fitting.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from app.contributor.controller import Controller, EngineOptions, EnginePaths
from app.contributor.credentials import FileCredentialStore
from app.contributor.events import EngineState, Error, Progress, TaskFinished
from app.contributor.sensors import FakeSensors
from app.contributor.settings import default_settings
from backend.metrics import sample_value
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import App, create_app

HPARAMS: dict[str, Any] = {
    "hidden": 64,
    "num_shards": 10,
    "max_steps": 600,  # --steps: ~0.5 s of one core per full task
    "lr": 0.05,
    "batch_size": 32,
}
BUSY = frozenset({EngineState.DOWNLOADING, EngineState.TRAINING, EngineState.UPLOADING})
GAVE_BACK_LATE = "gave_back_late"
"""The engine's reason code for a task it gave back because it could not finish in time."""


def cpu_limits(n: int) -> list[int]:
    """CPU percent per contributor: half at 100, a fifth at 50, the rest at 25."""
    fast = n // 2
    half = max(1, n // 5)
    return [100] * fast + [50] * half + [25] * (n - fast - half)


def churners(n: int) -> list[int]:
    """A fifth of the contributors (at least one), spread over the speeds."""
    count = max(1, n // 5)
    return [round(i * (n - 1) / max(1, count - 1)) if count > 1 else 0 for i in range(count)]


@dataclass
class TaskTime:
    seconds: float = 0.0
    finished: bool = False  # a TaskFinished came (accepted or refused)
    accepted: bool = False
    reason: str = ""
    first_seen: float = 0.0  # time.monotonic() of its first event
    last_progress: float = 0.0


@dataclass
class Recorder:
    """Training seconds per task, from the engines' events (called on their threads)."""

    tasks: dict[str, TaskTime] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # engine Error events by code
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: Any) -> None:
        with self.lock:
            if isinstance(event, Error):
                self.errors[event.code] = self.errors.get(event.code, 0) + 1
            elif isinstance(event, Progress):
                t = self._task(event.task_id)
                if event.examples_per_second > 0:
                    t.seconds = max(t.seconds, event.examples / event.examples_per_second)
                t.last_progress = time.monotonic()
            elif isinstance(event, TaskFinished):
                t = self._task(event.task_id)
                t.seconds = max(t.seconds, float(event.compute_seconds))
                t.finished, t.accepted = True, bool(event.accepted)
                t.reason = str(getattr(event, "reason", ""))

    def _task(self, task_id: str) -> TaskTime:
        t = self.tasks.get(task_id)
        if t is None:
            t = self.tasks[task_id] = TaskTime(first_seen=time.monotonic())
        return t


@dataclass
class PhaseResult:
    name: str
    total_s: float = 0.0
    used_s: float = 0.0
    refused_s: float = 0.0  # uploaded and refused (too stale, or otherwise)
    dropped_s: float = 0.0  # accepted, then dropped as too stale before aggregation
    late_s: float = 0.0  # given back by the engine: it could not finish in time
    given_back_s: float = 0.0  # otherwise never uploaded: a departure, a lost lease
    undecided_s: float = 0.0  # left out: pending and fresh at the end
    cut_s: float = 0.0  # left out: running when the phase ended
    warmup_s: float = 0.0  # seconds until every engine had an upload answered (not measured)
    tasks: int = 0
    versions: int = 0
    withheld: float = 0.0
    accuracy: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def share_used(self) -> float:
        return self.used_s / self.total_s if self.total_s else float("nan")


def make_engine(root: Path, cpu_percent: int, recorder: Recorder) -> Controller:
    settings = default_settings().updated(
        {
            "idle_minutes_before_start": 0,
            "idle.cpu_cores": 1,
            "idle.cpu_percent": cpu_percent,
            "other_cpu_suspend_percent": 100,
            "other_cpu_resume_percent": 99,
        }
    )
    sensors = FakeSensors(idle_seconds=1e6, on_battery=False, other_cpu_percent=0.0, cpu_count=2)
    engine = Controller(
        credentials=FileCredentialStore(root / "credentials.json"),
        paths=EnginePaths(root),
        settings=settings,
        sensors=sensors,
        options=EngineOptions(lease_wait_s=10),
    )
    engine.subscribe(recorder)
    return engine


def run_phase(
    app: App, base_url: str, tmp: Path, *, name: str, fit_tasks: bool, args: argparse.Namespace
) -> PhaseResult:
    co = app.coordinator
    settings = {
        "mode": "async",
        "buffer_size": args.buffer_size,
        "max_staleness": args.max_staleness,
        "codec": "int8",
        "lease_s": 60.0,
        "fit_tasks": fit_tasks,
    }
    hparams = {**HPARAMS, "max_steps": args.steps}
    co.create_project(name, recipe="digits-mlp", hparams=hparams, settings=settings)
    n = args.contributors
    limits = cpu_limits(n)
    leaving = set(churners(n))
    recorder = Recorder()
    roots = [tmp / name / f"c{i}" for i in range(n)]
    engines = [make_engine(roots[i], limits[i], recorder) for i in range(n)]
    for i, engine in enumerate(engines):
        engine.join(f"{base_url}/p/{name}", display_name=f"{name}-{i}-{limits[i]}pct")
    began = time.monotonic()
    paused_at = float("inf")
    for engine in engines:
        engine.start()
    try:
        warm_until = began + WARMUP_LIMIT_S
        while time.monotonic() < warm_until and not _all_answered(app, name, n):
            time.sleep(0.2)
        started = time.monotonic()  # the measured window starts
        time.sleep(args.seconds * 0.30)
        for i in leaving:
            engines[i].stop()
        for i in leaving:
            engines[i].wait(60)
        time.sleep(max(0.0, started + args.seconds * 0.55 - time.monotonic()))
        for i in leaving:  # back, on the same folder: same identity, same cache
            engines[i] = make_engine(roots[i], limits[i], recorder)
            engines[i].start()
        time.sleep(max(0.0, started + args.seconds - time.monotonic()))
        co.set_status(name, "paused")  # no new leases; uploads are still accepted
        paused_at = time.monotonic()
        drain_until = paused_at + args.drain
        while time.monotonic() < drain_until and any(e.state in BUSY for e in engines):
            time.sleep(0.2)
    finally:
        for engine in engines:
            engine.stop()
        for engine in engines:
            engine.wait(60)
    idle_until = time.monotonic() + 30
    project = co.project(name)
    while time.monotonic() < idle_until:
        with co.store.read() as tx:
            if not tx.aggregation_running(project.id):
                break
        time.sleep(0.1)
    result = classify(app, name, recorder, started, paused_at, args.max_staleness)
    result.warmup_s = started - began
    return result


WARMUP_LIMIT_S = 240.0
"""Seconds at most for every engine to start its trainer and have a first upload answered."""


def _all_answered(app: App, name: str, n: int) -> bool:
    co = app.coordinator
    rows = co.leaderboard(co.project(name))["contributors"]
    answered = [r for r in rows if r["updates_accepted"] + r["updates_rejected"] > 0]
    return len(answered) >= n


def classify(
    app: App, name: str, recorder: Recorder, started: float, paused_at: float, max_staleness: int
) -> PhaseResult:
    """Sort the training seconds of the tasks begun in the measured window."""
    co = app.coordinator
    project = co.project(name)
    with co.store.read() as tx:
        updates = {u.task_id: u for u in tx.updates(project.id)}
        versions = tx.versions(project.id)
    result = PhaseResult(name=name, versions=project.current_version)
    result.withheld = sample_value(
        co.metrics, "barnraise_leases_total", {"project": name, "outcome": "withheld"}
    )
    result.accuracy = versions[-1].metrics.get("accuracy", float("nan"))
    with recorder.lock:
        tasks = dict(recorder.tasks)
        result.errors = dict(recorder.errors)
    for task_id, t in tasks.items():
        if t.first_seen < started:
            continue  # begun during the warm-up
        update = updates.get(task_id)
        if update is None and not t.finished and t.last_progress >= paused_at - 1.0:
            result.cut_s += t.seconds
            continue
        if (
            update is not None
            and update.status == "pending"
            and project.current_version - update.base_version <= max_staleness
        ):
            result.undecided_s += t.seconds
            continue
        result.tasks += 1
        result.total_s += t.seconds
        if update is not None and update.status in ("aggregated", "claimed"):
            result.used_s += t.seconds
        elif update is not None:
            result.dropped_s += t.seconds
        elif t.finished and t.reason == GAVE_BACK_LATE:
            result.late_s += t.seconds
        elif t.finished:
            result.refused_s += t.seconds
        else:
            result.given_back_s += t.seconds
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contributors", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=50.0, help="measured length of each phase")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds to let tasks end")
    parser.add_argument("--steps", type=int, default=600, help="training steps per full task")
    parser.add_argument("--buffer-size", type=int, default=3)
    parser.add_argument("--max-staleness", type=int, default=3)
    parser.add_argument(
        "--only", choices=("baseline", "fitted"), help="run one phase (default: both)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results: list[PhaseResult] = []
    wall = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        app = create_app(tmp / "backend", rate=None)
        server = make_server(app, "127.0.0.1", 0, threads=max(32, 4 * args.contributors))
        start_in_thread(server)
        url = f"http://127.0.0.1:{bound_port(server)}"
        try:
            phases = [("baseline", False), ("fitted", True)]
            for label, fit in phases:
                if args.only and args.only != label:
                    continue
                results.append(
                    run_phase(app, url, tmp, name=f"waste-{label}", fit_tasks=fit, args=args)
                )
        finally:
            server.stop()
            app.close()
    report(results, args, time.monotonic() - wall)
    return 0


def report(results: list[PhaseResult], args: argparse.Namespace, wall_s: float) -> None:
    n = args.contributors
    limits = cpu_limits(n)
    speeds = ", ".join(f"{limits.count(p)} at {p} %" for p in sorted(set(limits), reverse=True))
    print(
        f"## Wasted work: {n} contributor engines on loopback ({psutil.cpu_count()} CPUs), "
        f"async digits-mlp ({args.steps} steps a full task, buffer {args.buffer_size}, "
        f"max_staleness {args.max_staleness}), {args.seconds:.0f} s per phase\n"
    )
    print(
        f"CPU limits: {speeds}; {len(churners(n))} leave at 30 % of each phase and rejoin at "
        "55 %.\n"
    )
    print(
        "| phase | training s | used in an aggregate | **share used** | refused at upload "
        "| dropped stale | given back late | left or lost | tasks | versions | withheld leases |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        label = "baseline (fit_tasks off)" if r.name.endswith("baseline") else "fitted (on)"
        print(
            f"| {label} | {r.total_s:.1f} | {r.used_s:.1f} | **{r.share_used:.1%}** "
            f"| {r.refused_s:.1f} | {r.dropped_s:.1f} | {r.late_s:.1f} | {r.given_back_s:.1f} "
            f"| {r.tasks} "
            f"| {r.versions} | {r.withheld:.0f} |"
        )
    print()
    for r in results:
        print(
            f"- {r.name}: warm-up {r.warmup_s:.0f} s (not measured); left out "
            f"{r.undecided_s:.1f} s pending at the end and {r.cut_s:.1f} s "
            f"cut by the final stop; final accuracy {r.accuracy:.3f}; engine errors "
            + (", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items())) or "none")
        )
    cores = psutil.cpu_count() or 1
    if cores < n:
        print(
            f"\nnote: {cores} CPUs for {n} trainers: each gets about {100 * cores / n:.0f} % of a "
            "core, so CPU limits above that do not bind and speeds come from contention; run "
            f"on {n}+ cores for the intended speed mix."
        )
    print(f"\nwall time {wall_s:.0f} s; aim: at least 95 % used with fitting")


if __name__ == "__main__":
    sys.exit(main())
