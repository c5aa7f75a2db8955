"""Helpers of the contributor end-to-end tests (imported by conftest and the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.contributor.controller import Controller, EngineOptions, EnginePaths
from app.contributor.credentials import FileCredentialStore
from app.contributor.sensors import FakeSensors
from app.contributor.settings import default_settings
from tests.support import wait_until


@dataclass
class Coordinator:
    app: Any
    url: str

    def stats(self, project: str = "digits") -> dict[str, Any]:
        co = self.app.coordinator
        result: dict[str, Any] = co.stats(co.project(project))
        return result

    def leaderboard(self, project: str = "digits") -> dict[str, Any]:
        co = self.app.coordinator
        result: dict[str, Any] = co.leaderboard(co.project(project))
        return result

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait on the coordinator's own change notifier (no fixed sleeps); False on timeout."""
        notifier = self.app.coordinator.notifier

        def until_digits_changes(seconds: float) -> None:
            notifier.wait("digits", notifier.generation("digits"), seconds)

        return bool(
            wait_until(
                predicate,
                timeout,
                "the coordinator",
                interval=0.2,
                pause=until_digits_changes,
                fail=False,
            )
        )


def running_settings(**changes: Any) -> Any:
    base = {
        "idle_minutes_before_start": 0,
        "idle.cpu_cores": 1,
        "idle.cpu_percent": 100,
        "other_cpu_suspend_percent": 100,
        "other_cpu_resume_percent": 99,
    }
    base.update(changes)
    return default_settings().updated(base)


def idle_machine() -> FakeSensors:
    return FakeSensors(idle_seconds=1e6, on_battery=False, other_cpu_percent=0.0, cpu_count=2)


def make_controller(root: Path, **options: Any) -> Controller:
    options.setdefault("lease_wait_s", 10)
    return Controller(
        credentials=FileCredentialStore(root / "credentials.json"),
        paths=EnginePaths(root),
        settings=options.pop("settings", running_settings()),
        sensors=options.pop("sensors", idle_machine()),
        options=EngineOptions(**options),
    )


class EventLog:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 60) -> Any:
        """The first event ``predicate`` accepts, once there is one."""
        found = wait_until(
            lambda: [e for e in self.events if predicate(e)],
            timeout,
            "an engine event",
            cond=self.cond,
        )
        return found[0]


class Headless:
    """A real `barnraise --headless` subprocess; its log lines are collected."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--headless", "--lease-wait", "5", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for_line(self, fragment: str, timeout: float = 60) -> str:
        """The first output line containing ``fragment``, once there is one."""

        def last_lines() -> str:
            with self.cond:
                return "\n".join(self.lines[-30:])

        found = wait_until(
            lambda: [line for line in self.lines if fragment in line],
            timeout,
            f"{fragment!r} in the output",
            cond=self.cond,
            details=last_lines,
        )
        return found[0]

    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def barnraise(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the `barnraise` command line (from this source tree) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
