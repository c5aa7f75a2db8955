"""The local control channel, the ledger and the event bus."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from app.contributor.control import ControlError, ControlServer, NotRunning, send_command
from app.contributor.events import EngineState, EventBus, Progress, StateChanged
from app.contributor.ledger import Contribution, Ledger


def serve(runtime: Path, *, force_tcp: bool = False) -> tuple[ControlServer, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []

    def handler(command: str, args: Any) -> Any:
        calls.append((command, dict(args)))
        if command == "boom":
            raise ControlError("it went boom")
        return {"echo": command, "args": dict(args)}

    server = ControlServer(runtime, handler, force_tcp=force_tcp)
    server.start()
    return server, calls


@pytest.mark.parametrize("force_tcp", [False, True])
def test_commands_reach_the_instance(tmp_path: Path, force_tcp: bool) -> None:
    server, calls = serve(tmp_path / "run", force_tcp=force_tcp)
    try:
        assert send_command(tmp_path / "run", "snooze", {"seconds": 60}) == {
            "echo": "snooze",
            "args": {"seconds": 60},
        }
        with pytest.raises(ControlError, match="boom"):
            send_command(tmp_path / "run", "boom")
        token = tmp_path / "run" / "control.token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
    finally:
        server.close()
    assert calls[0] == ("snooze", {"seconds": 60})
    with pytest.raises(NotRunning):
        send_command(tmp_path / "run", "status")


def test_wrong_token_is_refused(tmp_path: Path) -> None:
    server, calls = serve(tmp_path / "run", force_tcp=True)
    try:
        (tmp_path / "run" / "control.token").write_text("guess")
        with pytest.raises(ControlError, match="bad token"):
            send_command(tmp_path / "run", "pause")
    finally:
        server.close()
    assert calls == []


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    server, _ = serve(tmp_path / "run")
    try:
        os.chmod(tmp_path / "run" / "control.token", 0o644)
        with pytest.raises(ControlError, match="readable by other users"):
            send_command(tmp_path / "run", "pause")
    finally:
        server.close()


def test_one_instance_per_runtime_folder_and_stale_endpoints(tmp_path: Path) -> None:
    server, _ = serve(tmp_path / "run")
    try:
        with pytest.raises(ControlError, match="already running"):
            ControlServer(tmp_path / "run", lambda c, a: None).start()
    finally:
        server.close()
    # A crashed instance leaves its files; the next one takes over.
    (tmp_path / "run" / "control.json").write_text(
        json.dumps({"transport": "tcp", "host": "127.0.0.1", "port": 9})
    )
    os.chmod(tmp_path / "run" / "control.json", 0o600)
    (tmp_path / "run" / "control.token").write_text("x")
    os.chmod(tmp_path / "run" / "control.token", 0o600)
    server, _ = serve(tmp_path / "run")
    server.close()


def test_ledger_is_idempotent_and_totals(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    c = Contribution(
        "digits", "task-1", examples=100, compute_seconds=1.5, credit=2.0, credit_unit="GFLOP"
    )
    assert ledger.record(c)
    assert not ledger.record(c)  # the same task twice is one row
    ledger.record(Contribution("digits", "task-2", examples=50, compute_seconds=0.5, credit=1.0))
    ledger.record(Contribution("other", "task-1", examples=7, compute_seconds=0.1, credit=0.1))
    totals = ledger.totals("digits")
    assert (totals.tasks, totals.examples, totals.compute_seconds, totals.credit) == (
        2,
        150,
        2.0,
        3.0,
    )
    assert ledger.projects() == ["digits", "other"]
    assert [r.task_id for r in Ledger(tmp_path / "ledger.sqlite").recent("digits")] != []


def test_event_bus_is_thread_safe_and_isolates_subscribers() -> None:
    bus = EventBus(history=10)
    seen: list[str] = []
    lock = threading.Lock()

    def good(event: Any) -> None:
        with lock:
            seen.append(event.kind)

    def bad(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = bus.subscribe(good)
    bus.subscribe(bad)
    event = Progress(
        project="p",
        task_id="t",
        step=1,
        total_steps=4,
        examples=32,
        loss=0.5,
        examples_per_second=10,
    )
    threads = [
        threading.Thread(target=lambda: [bus.publish(event) for _ in range(50)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 200
    unsubscribe()
    unsubscribe()  # idempotent
    bus.publish(StateChanged(state=EngineState.TRAINING, previous=EngineState.LEASING))
    assert len(seen) == 200
    assert len(bus.recent()) == 10
    assert event.fraction == 0.25
    data = StateChanged(state=EngineState.TRAINING, previous=EngineState.LEASING).to_json()
    assert data["kind"] == "StateChanged" and data["state"] == "training"
    json.dumps(data)


# --------------------------------------------------------------------------- the command table


def _engine(root: Path) -> Any:
    from app.contributor.controller import Controller, EngineOptions, EnginePaths
    from app.contributor.credentials import FileCredentialStore

    return Controller(
        credentials=FileCredentialStore(root / "credentials.json"),
        paths=EnginePaths(root),
        options=EngineOptions(start_trainer_eagerly=False),
    )


def test_every_control_command_is_in_one_table() -> None:
    from app.contributor.commands import COMMANDS

    assert set(COMMANDS) == {
        "ping",
        "status",
        "pause",
        "resume",
        "snooze",
        "retry",
        "trust",
        "leave",
        "project_share",
        "project_mode",
        "stop",
        "show",
        "open_join",
    }
    assert {name for name, c in COMMANDS.items() if c.gui} == {"show", "open_join"}


def test_the_engine_answers_its_commands_over_the_channel(tmp_path: Path) -> None:
    from app.contributor import commands
    from app.contributor.snapshot import EngineSnapshot

    engine = _engine(tmp_path / "engine")
    runtime = tmp_path / "run"
    server = ControlServer(runtime, commands.handler(engine))
    server.start()
    try:
        assert send_command(runtime, "ping") == {"pid": os.getpid()}
        status = send_command(runtime, "status")
        assert EngineSnapshot.from_json(status).to_json() == status  # the same JSON back
        assert status["state"] == "stopped" and status["projects"] == []
        assert set(status) == {
            "state",
            "project",
            "task",
            "paused",
            "snoozed_until",
            "decision",
            "limits",
            "trainer",
            "projects",
            "last_error",
            "failure",
        }
        assert send_command(runtime, "pause")["paused"] is True
        assert send_command(runtime, "resume")["paused"] is False
        until = send_command(runtime, "snooze", {"seconds": 60})["until"]
        assert send_command(runtime, "status")["snoozed_until"] == until
        assert send_command(runtime, "retry")["snoozed_until"] == until
        with pytest.raises(ControlError, match="no key change is waiting"):
            send_command(runtime, "trust", {"key": "nope", "fingerprint": "aa"})
        assert send_command(runtime, "leave", {"key": "nope"}) == {"left": "nope"}
        # A headless engine has no windows: the tray's commands are unknown to it.
        for command in ("show", "open_join", "frobnicate"):
            with pytest.raises(ControlError, match=f"unknown command '{command}'"):
                send_command(runtime, command)
        assert send_command(runtime, "stop") == {"stopping": True}
    finally:
        server.close()


def test_the_tray_takes_its_window_commands_once_it_is_ready(tmp_path: Path) -> None:
    from app.contributor.commands import CommandContext, dispatch

    engine = _engine(tmp_path)
    shown: list[tuple[str, dict[str, object]]] = []
    ready: list[Any] = [None]
    context = CommandContext(engine, ui=lambda: ready[0])
    with pytest.raises(ControlError, match="the tray is not ready yet"):
        dispatch(context, "show", {})
    ready[0] = lambda command, args: shown.append((command, args))
    assert dispatch(context, "open_join", {"url": "https://barn.example/p/x"}) == {"shown": True}
    assert shown == [("open_join", {"url": "https://barn.example/p/x"})]
    assert engine.handle_command("status", {}) == engine.snapshot()


def test_the_snapshot_round_trips_through_json() -> None:
    from datetime import UTC, datetime

    from app.contributor.limits import Limits
    from app.contributor.snapshot import (
        DecisionSnapshot,
        EngineSnapshot,
        KeyChangeSnapshot,
        ProjectSnapshot,
        TaskSnapshot,
        TrainerSnapshot,
    )

    snapshot = EngineSnapshot(
        state=EngineState.TRAINING,
        project="digits",
        task=TaskSnapshot(key="k", project="digits", task_id="t-1", useful_until=1700000000),
        snoozed_until=datetime(2026, 1, 1, 12, tzinfo=UTC),
        decision=DecisionSnapshot("throttle", ("you are using the computer",), "Throttled"),
        limits=Limits(cpu_cores=2, cpu_percent=50.0),
        trainer=TrainerSnapshot(pid=42, device="cpu", starts=1),
        projects=(
            ProjectSnapshot(
                key="k",
                project="digits",
                server_url="https://barn.example",
                tasks=3,
                key_change=KeyChangeSnapshot("digits", "aa:bb", "cc:dd", "x"),
            ),
        ),
        last_error="oops",
    )
    data = json.loads(json.dumps(snapshot.to_json()))
    assert EngineSnapshot.from_json(data) == snapshot
    assert "loss" not in data["task"]  # absent until the trainer's first progress report
    assert data["projects"][0]["key_change"]["new_fingerprint"] == "cc:dd"
    assert data["task"]["useful_until"] == 1700000000  # numbers are kept as they came
    # Without an engine: the ledger's fields only, and the state says so.
    offline = EngineSnapshot.not_running(snapshot.projects)
    assert offline.to_json() == {
        "state": "not running",
        "projects": [
            {
                "key": "k",
                "project": "digits",
                "server_url": "https://barn.example",
                "tasks": 3,
                "examples": 0,
                "compute_seconds": 0.0,
                "credit": 0.0,
                "credit_unit": "",
                "rank": None,
                "privacy": None,
                "share": 100,
                "mode": "active",
            }
        ],
    }
    assert EngineSnapshot.from_json(offline.to_json()).state_text == "not running"
