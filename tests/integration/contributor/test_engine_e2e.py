"""End to end: real coordinator on loopback, real contributors (in process and `barnraise --headless`)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from engine_e2e_helpers import Coordinator, EventLog, Headless, barnraise, make_controller

from app.contributor.events import EngineState, Error, Progress, StateChanged, TaskFinished
from federated.training import Checkpoint

pytestmark = pytest.mark.slow


def test_three_contributors_train_five_versions(
    coordinator: Coordinator, cli_env: Any, tmp_path: Path
) -> None:
    env = cli_env("cli")
    joined = barnraise(
        "join",
        f"{coordinator.url}/p/digits",
        "--yes",
        "--name",
        "cli-volunteer",
        "--team",
        "barn",
        env=env,
    )
    assert joined.returncode == 0, joined.stderr
    assert "What leaves this machine" in joined.stdout and "fingerprint" in joined.stdout

    controllers = []
    for i in range(2):
        c = make_controller(tmp_path / f"inproc-{i}")
        c.join(f"{coordinator.url}/p/digits", display_name=f"inproc-{i}")
        controllers.append(c)
    headless = Headless(env)
    try:
        for c in controllers:
            c.start()
        assert coordinator.wait_for(
            lambda: coordinator.stats()["current_version"] >= 5, timeout=240
        ), coordinator.stats()
        versions = coordinator.stats()["versions"]
        assert max(v["metrics"]["accuracy"] for v in versions) >= 0.90
        board = coordinator.leaderboard()["contributors"]
        assert {r["display_name"] for r in board} == {"cli-volunteer", "inproc-0", "inproc-1"}
        assert all(r["credit"] > 0 and r["updates_accepted"] > 0 for r in board)
        ranks = {r["rank"] for r in board}
        for c in controllers:  # the engine learned its place from /me (refreshed every 30 s)
            assert c.snapshot()["projects"][0]["rank"] in ranks

        status = barnraise("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        snapshot = json.loads(status.stdout)
        assert snapshot["projects"][0]["tasks"] > 0 and snapshot["trainer"]["starts"] == 1

        started = time.monotonic()
        paused = barnraise("pause", env=env)
        assert paused.returncode == 0, paused.stderr
        assert time.monotonic() - started < 10  # includes starting a Python interpreter
        assert json.loads(barnraise("status", "--json", env=env).stdout)["paused"] is True
        assert barnraise("resume", env=env).returncode == 0
        assert "snoozed until" in barnraise("snooze", "10m", env=env).stdout
        assert barnraise("resume", env=env).returncode == 0
    finally:
        headless.proc.send_signal(signal.SIGTERM)
        code = headless.proc.wait(60)
        for c in controllers:
            c.stop()
        for c in controllers:
            assert c.wait(60)
    assert code == 0, headless.output()
    assert "stopped" in headless.output()
    offline = barnraise("status", env=env)
    assert "not running" in offline.stdout and "digits" in offline.stdout


def test_pause_takes_effect_within_a_second(coordinator: Coordinator, tmp_path: Path) -> None:
    c = make_controller(tmp_path / "c")
    c.join(f"{coordinator.url}/p/slow", display_name="pauser")
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        events.wait_for(lambda e: isinstance(e, Progress), timeout=120)
        child = psutil.Process(c.trainer.pid)
        started = time.monotonic()
        c.pause()
        events.wait_for(lambda e: isinstance(e, StateChanged) and e.state == EngineState.PAUSED)
        latency = time.monotonic() - started
        assert latency < 1.0, f"pause took {latency:.3f}s"
        before = sum(child.cpu_times()[:2])
        window_end = time.monotonic() + 0.5
        while time.monotonic() < window_end:  # observing a window, not waiting for a result
            time.sleep(0.05)
        assert sum(child.cpu_times()[:2]) - before < 0.05
        c.resume()
        events.wait_for(
            lambda e: (
                isinstance(e, StateChanged) and e.state == EngineState.TRAINING and e.at > started
            )
        )
    finally:
        c.stop()
        assert c.wait(60)


def test_killed_trainer_resumes_from_its_checkpoint(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    c = make_controller(tmp_path / "c", checkpoint_interval_s=0.1)
    c.join(f"{coordinator.url}/p/slow", display_name="crasher")
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        events.wait_for(lambda e: isinstance(e, Progress) and e.step > 300, timeout=120)
        checkpoints = list((tmp_path / "c" / "state").glob("*/*.ckpt"))
        assert checkpoints
        saved_step = Checkpoint.from_bytes(checkpoints[0].read_bytes()).step
        c.trainer.kill()
        crash = events.wait_for(lambda e: isinstance(e, Error) and e.code == "trainer_crashed")
        after = events.wait_for(lambda e: isinstance(e, Progress) and e.at > crash.at, timeout=120)
        assert after.step >= saved_step > 0  # resumed, not started over
        done = events.wait_for(lambda e: isinstance(e, TaskFinished), timeout=180)
        assert done.accepted and c.trainer.starts == 2
    finally:
        c.stop()
        assert c.wait(60)


def test_killed_contributor_carries_on_after_restart(
    coordinator: Coordinator, cli_env: Any
) -> None:
    env = cli_env("killed")
    settings_path = Path(env["BARNRAISE_CONFIG_DIR"]) / "settings.json"
    settings = json.loads(settings_path.read_text())
    settings["idle"]["cpu_percent"] = 30  # slow enough to be killed mid-task
    settings_path.write_text(json.dumps(settings))
    assert (
        barnraise(
            "join", f"{coordinator.url}/p/slow", "--yes", "--name", "phoenix", env=env
        ).returncode
        == 0
    )
    state = Path(env["BARNRAISE_DATA_DIR"]) / "state"
    first = Headless(env, "--checkpoint-interval", "0.2")
    try:
        first.wait_for_line("training", timeout=120)
        deadline = time.monotonic() + 60
        while not list(state.glob("*/*.ckpt")):  # polling a file the child writes
            assert time.monotonic() < deadline, first.output()
            time.sleep(0.05)
        task_id = json.loads(next(state.glob("*/task.json")).read_text())["manifest"]["task_id"]
    finally:
        for child in psutil.Process(first.proc.pid).children(recursive=True):
            child.kill()
        first.proc.kill()  # no clean stop: the lease and checkpoint stay behind
        first.proc.wait(30)
    second = Headless(env, "--checkpoint-interval", "0.2")
    try:
        line = second.wait_for_line(f"task {task_id} accepted", timeout=240)
        assert "accepted" in line
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(60) == 0
    out = second.output()
    assert "carrying on" in out or "resum" in out, out


def test_clean_stop_gives_the_lease_back(coordinator: Coordinator, cli_env: Any) -> None:
    env = cli_env("quitter")
    assert (
        barnraise(
            "join", f"{coordinator.url}/p/slow", "--yes", "--name", "quitter", env=env
        ).returncode
        == 0
    )
    headless = Headless(env)
    headless.wait_for_line("training", timeout=120)
    # The lease in hand, as the engine saved it when it arrived (state/<project>/task.json).
    [saved] = (Path(env["BARNRAISE_DATA_DIR"]) / "state").glob("*/task.json")
    task_id = json.loads(saved.read_text())["manifest"]["task_id"]

    def status() -> str | None:
        with coordinator.app.coordinator.store.read() as tx:
            task = tx.task(task_id)
        return task.status if task else None

    assert status() == "leased"
    headless.proc.send_signal(signal.SIGINT)
    assert headless.proc.wait(60) == 0
    # Judged by the coordinator's books, not the log (the last lines may not be read yet):
    # the lease was given back (not left to expire: lease_s is 120), the task file is gone.
    assert status() == "released", headless.output()
    assert not list((Path(env["BARNRAISE_DATA_DIR"]) / "state").glob("*/task.json"))
    assert os.environ.get("BARNRAISE_DATA_DIR") != env["BARNRAISE_DATA_DIR"]
