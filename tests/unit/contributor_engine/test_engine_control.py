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
