"""Several projects on one computer: resource shares and the per-project modes, with real
engines against a real coordinator on loopback, and ``barnraise project`` with and without
a running engine."""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_e2e_helpers import EventLog, make_controller

from app.cli import main
from app.contributor.credentials import project_key
from app.contributor.events import EngineState, Progress, ProjectScheduleChanged, TaskFinished
from app.contributor.shares import SCHEDULING_FILE, read_schedule
from backend.cli import DEMO_HPARAMS
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app

ASYNC_ONE = {"mode": "async", "buffer_size": 1, "codec": "int8"}
ASYNC_MANY = {"mode": "async", "buffer_size": 100, "codec": "int8"}


class Tap:
    """WSGI middleware in front of the real app: counts leases, releases and uploads per
    project."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        parts = path.strip("/").split("/")  # api v1 projects NAME tasks ...
        kind = (
            "lease"
            if method == "POST" and path.endswith("/tasks/lease")
            else "release"
            if method == "POST" and path.endswith("/release")
            else "upload"
            if method == "PUT" and path.endswith("/update")
            else None
        )
        if kind is not None:
            with self.lock:
                self.counts[(parts[3], kind)] += 1
        return self.app(environ, start_response)

    def count(self, project: str, kind: str) -> int:
        with self.lock:
            return self.counts[(project, kind)]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Tap, str]]:
    app = create_app(tmp_path / "backend", rate=None)
    for name, steps in (("a", 0), ("b", 0), ("slow", 6000), ("medium", 1500)):
        hparams = {**DEMO_HPARAMS, "max_steps": steps} if steps else DEMO_HPARAMS
        # Many updates per version for a and b: no aggregation (and no empty lease while
        # it runs) comes between two tasks, so each always has work and the split is the
        # picker's alone.
        settings = {**ASYNC_ONE, "lease_s": 120} if steps else ASYNC_MANY
        app.coordinator.create_project(
            name, recipe="digits-mlp", strategy="fedavg", hparams=hparams, settings=settings
        )
    tap = Tap(app)
    server = make_server(tap, "127.0.0.1", 0, threads=16)
    start_in_thread(server)
    yield tap, f"http://127.0.0.1:{bound_port(server)}"
    server.stop()
    app.close()


def _joined(root: Path, url: str, *names: str, **options: Any) -> tuple[Any, dict[str, str]]:
    c = make_controller(root, lease_wait_s=1, **options)
    for name in names:
        c.join(f"{url}/p/{name}", display_name="shares")
    return c, {name: project_key(url, name) for name in names}


def _accepted(events: EventLog, project: str | None = None) -> list[TaskFinished]:
    return [
        e
        for e in list(events.events)
        if isinstance(e, TaskFinished) and e.accepted and project in (None, e.project)
    ]


def _projects(c: Any) -> dict[str, Any]:
    return {p["project"]: p for p in c.snapshot()["projects"]}


def _stop(c: Any) -> None:
    c.stop()
    assert c.wait(60)


def test_shares_300_and_100_split_the_compute_3_to_1(
    served: tuple[Tap, str], tmp_path: Path
) -> None:
    _tap, url = served
    c, keys = _joined(tmp_path / "c", url, "a", "b")
    c.set_project_share(keys["a"], 300)
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        events.wait_for(lambda e: len(_accepted(events)) >= 24, 120)
    finally:
        _stop(c)
    done = _accepted(events)[:24]
    tasks = Counter(e.project for e in done)
    compute = {p: sum(e.compute_seconds for e in done if e.project == p) for p in ("a", "b")}
    # Round-robin would give 12 and 12; by share it is about 18 and 6. Not exactly: tasks
    # differ in length, and a task given back at the start (the trainer still warming up)
    # backs its project off while the other runs alone, which the picker then makes up for.
    assert tasks["a"] >= 15 and 3 <= tasks["b"] <= 9, tasks
    share_a = compute["a"] / (compute["a"] + compute["b"])
    assert 0.62 <= share_a <= 0.88, compute
    projects = _projects(c)
    assert (projects["a"]["share"], projects["b"]["share"]) == (300, 100)


def test_suspend_stops_the_task_in_hand_and_leasing_while_the_other_goes_on_and_survives_a_restart(
    served: tuple[Tap, str], tmp_path: Path
) -> None:
    tap, url = served
    c, keys = _joined(tmp_path / "c", url, "slow", "b")
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        events.wait_for(lambda e: isinstance(e, Progress) and e.project == "slow", 60)
        c.set_project_mode(keys["slow"], "suspended")
        leases = tap.count("slow", "lease")
        events.wait_for(lambda e: len(_accepted(events, "b")) >= 3, 90)
        assert _projects(c)["slow"]["mode"] == "suspended"
    finally:
        _stop(c)
    assert tap.count("slow", "release") == 1, "the task in hand was given back"
    assert tap.count("slow", "upload") == 0 and _accepted(events, "slow") == []
    assert tap.count("slow", "lease") == leases, "no lease while suspended"
    changed = [e for e in events.events if isinstance(e, ProjectScheduleChanged)]
    assert [(e.project, e.mode) for e in changed] == [("slow", "suspended")]
    schedule = read_schedule(c.paths.project_dir(keys["slow"], "slow"))
    assert schedule.mode == "suspended"

    # A new engine on the same folder: still suspended; the other project goes on alone.
    again, _ = _joined(tmp_path / "c", url)
    assert _projects(again)["slow"]["mode"] == "suspended"
    later = EventLog()
    again.subscribe(later)
    again.start()
    try:
        later.wait_for(lambda e: len(_accepted(later, "b")) >= 1, 60)
    finally:
        _stop(again)
    assert tap.count("slow", "lease") == leases


@pytest.mark.parametrize(
    ("mode", "ends_as"),
    [("no_new_tasks", "no_new_tasks"), ("finish_then_stop", "suspended")],
)
def test_the_task_in_hand_is_finished_and_uploaded_then_no_more_leases(
    served: tuple[Tap, str], tmp_path: Path, mode: str, ends_as: str
) -> None:
    tap, url = served
    c, keys = _joined(tmp_path / "c", url, "medium", "b")
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        first = events.wait_for(lambda e: isinstance(e, Progress) and e.project == "medium", 60)
        c.set_project_mode(keys["medium"], mode)
        leases = tap.count("medium", "lease")
        events.wait_for(lambda e: any(t.task_id == first.task_id for t in _accepted(events)), 60)
        events.wait_for(lambda e: len(_accepted(events, "b")) >= 3, 90)
        state = c.status()
    finally:
        _stop(c)
    assert tap.count("medium", "lease") == leases, "no lease after the mode was set"
    assert tap.count("medium", "upload") == leases, "every task it held was finished and sent"
    assert tap.count("medium", "release") == 0
    shown = {p.project: p.mode for p in state.projects}
    assert shown == {"medium": ends_as, "b": "active"}
    assert state.state is not EngineState.STOPPED


def test_the_project_command_with_and_without_a_running_engine(
    served: tuple[Tap, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.contributor import commands
    from app.contributor.control import ControlServer

    _tap, url = served
    root = tmp_path / "c"
    c, keys = _joined(root, url, "a", "b", start_trainer_eagerly=False)
    monkeypatch.setenv("BARNRAISE_CONFIG_DIR", str(tmp_path / "config"))
    folders = ["--data-dir", str(root), "--credentials", str(root / "credentials.json")]

    def barnraise(*args: str) -> str:
        out = io.StringIO()
        assert main([*args, *folders], out=out) == 0
        return out.getvalue()

    # No engine: the files are edited in place.
    assert barnraise("project", "a", "share", "300") == "a: share 300, active\n"
    assert barnraise("project", "a", "no-new-tasks") == "a: share 300, no new tasks\n"
    # Nothing in hand: finish-then-stop is suspended at once.
    assert barnraise("project", "b", "finish-then-stop") == "b: share 100, suspended by you\n"
    folder = c.paths.project_dir(keys["a"], "a")
    assert (folder / SCHEDULING_FILE).exists()
    assert read_schedule(folder).share == 300
    status = barnraise("status")
    assert "state: not running" in status
    assert "share 300, no new tasks" in status and "share 100, suspended by you" in status
    assert main(["project", "a", "share", "0", *folders]) == 1  # out of range, said why
    assert main(["project", "a", "share", *folders]) == 1

    # A running engine (not computing): the command goes through the control channel.
    server = ControlServer(c.paths.runtime_dir, commands.handler(c))
    server.start()
    try:
        assert barnraise("project", "a", "resume") == "a: share 300, active\n"
        assert barnraise("project", "b", "share", "50") == "b: share 50, suspended by you\n"
        assert barnraise("project", "b") == "b: share 50, suspended by you\n"
        assert "share 300, active" in barnraise("status")
    finally:
        server.close()
    shown = {p.project: (p.share, p.mode) for p in c.status().projects}
    assert shown == {"a": (300, "active"), "b": (50, "suspended")}
    assert read_schedule(c.paths.project_dir(keys["b"], "b")).share == 50

    # Leaving forgets the share and mode: joining again starts afresh.
    assert main(["leave", "b", *folders]) == 0
    assert not (c.paths.project_dir(keys["b"], "b") / SCHEDULING_FILE).exists()
