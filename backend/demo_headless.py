"""The demo's contributors as real `barnraise --headless` processes (the volunteer's program).

The backend never imports the contributor app (DESIGN.md's import rules); it runs its
command line, exactly as a volunteer would: `barnraise join PAGE_URL --yes`, then
`barnraise --headless`, each with its own data, config and credentials folders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEMO_PROJECT = "digits"
DEMO_HPARAMS: dict[str, Any] = {
    "lr": 0.1,
    "momentum": 0.9,
    "batch_size": 16,
    "local_epochs": 2.0,
    "num_shards": 6,
    "hidden": 64,
}
"""Digits hyperparameters that reach >= 0.90 held-out accuracy in 5 versions with 3 contributors."""

DEMO_CONTRIBUTOR_SETTINGS = {
    # A demo machine is "idle" and plugged in: use one full core, ignore other load.
    "idle_minutes_before_start": 0,
    "run_on_battery": True,
    "other_cpu_suspend_percent": 100,
    "other_cpu_resume_percent": 99,
    "idle": {"cpu_cores": 1, "cpu_percent": 100},
}
JOIN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def barnraise_command() -> list[str] | None:
    """The contributor's command line, if the contributor app is installed beside us."""
    beside = Path(sys.executable).with_name("barnraise")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("barnraise")
    return [found] if found else None


class HeadlessContributor:
    """One volunteer: its own folders, joined once, then `barnraise --headless` until stopped."""

    def __init__(
        self, command: list[str], root: Path, page_url: str, name: str, team: str | None
    ) -> None:
        self.command, self.root, self.page_url, self.name, self.team = (
            command,
            root,
            page_url,
            name,
            team,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "contributor.log"
        config = root / "config"
        config.mkdir(parents=True, exist_ok=True)
        settings = config / "settings.json"
        settings.write_text(json.dumps(DEMO_CONTRIBUTOR_SETTINGS, indent=2, sort_keys=True))
        os.chmod(settings, 0o600)
        self.env = {
            **os.environ,
            "BARNRAISE_DATA_DIR": str(root / "data"),
            "BARNRAISE_CONFIG_DIR": str(config),
            "BARNRAISE_CREDENTIALS": str(root / "credentials.json"),
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def errors(self) -> list[str]:
        if self.process is None or self.process.poll() in (None, 0):
            return []
        return [
            f"{self.name}: `barnraise --headless` exited with {self.process.returncode}; see {self.log_path}"
        ]

    @property
    def joined_url_path(self) -> Path:
        """Where the page URL this volunteer joined is kept: a later demo on another port
        must join again, or its contributors would wait for a server that is gone."""
        return self.root / "joined-page-url"

    def start(self) -> None:
        joined = (self.root / "credentials.json").exists()
        previous = (
            self.joined_url_path.read_text().strip() if self.joined_url_path.exists() else None
        )
        name = self.name
        if joined and previous != self.page_url:
            self._leave(previous)
            joined = False
            # A new key: the coordinator keeps the old identity's name, so take another.
            name = f"{self.name}-{urlsplit(self.page_url).port}"
        if not joined:
            team = ["--team", self.team] if self.team else []
            result = subprocess.run(
                [*self.command, "join", self.page_url, "--yes", "--name", name, *team],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=JOIN_TIMEOUT_S,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"{self.name} could not join: {result.stderr.strip() or result.stdout.strip()}"
                )
            self.joined_url_path.write_text(self.page_url + "\n")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.command, "--headless", "--lease-wait", "5"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _leave(self, previous_url: str | None) -> None:
        """Leave the project this folder joined at another address (its keys are deleted;
        the demo's credit is worth nothing)."""
        project = self.page_url.rstrip("/").rpartition("/p/")[2]
        result = subprocess.run(
            [*self.command, "leave", previous_url or project],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=JOIN_TIMEOUT_S,
        )
        if result.returncode != 0:  # nothing to leave, or an index we cannot read: start afresh
            (self.root / "credentials.json").unlink(missing_ok=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM: the contributor checkpoints, gives its lease back and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
