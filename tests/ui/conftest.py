"""Fixtures for the tray's UI tests: a fake engine, a private config folder, the TrayApp."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.contributor.credential_choice import STORAGE_KEYCHAIN, CredentialStorage
from app.contributor.events import (
    EngineState,
    Error,
    Event,
    EventBus,
    ProjectScheduleChanged,
    StateChanged,
)
from app.contributor.invites import JoinTarget
from app.contributor.settings import Settings, default_settings
from app.tray.adapter import check_local_csv
from app.tray.engine_port import (
    DashboardView,
    ExistingIdentity,
    JoinedProject,
    JoinRequest,
    KeyChangeNotice,
    ProjectPreview,
)

FINGERPRINT = "3f2a:9c01:77be:0d4e:aa10:5b3c:e2f1:0c99"
NEW_FINGERPRINT = "88d1:04ac:6e2b:f713:19c0:ab56:7d3e:2f08"


class FakeEngine:
    """An EnginePort that records every command and publishes events from its own thread."""

    def __init__(self, *, data_mode: str = "builtin") -> None:
        self.bus = EventBus()
        self.calls: list[tuple[str, Any]] = []
        self.applied: list[Settings] = []
        self._settings = default_settings()
        self.state = EngineState.STOPPED
        self.projects: dict[str, JoinedProject] = {}
        self.data_mode = data_mode
        self.preview_error: Exception | None = None
        # Identities this machine has (project → identity), as the keychain would say.
        self.identities: dict[str, ExistingIdentity] = {}
        self.accept_error: Exception | None = None
        self.storage = CredentialStorage(STORAGE_KEYCHAIN)  # where a join keeps its key
        self.snapshots = 0  # how often the tray read the snapshot
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def _record(self, name: str, arg: Any = None) -> None:
        with self.lock:
            self.calls.append((name, arg))
            self.threads.add(threading.current_thread().name)

    def called(self, name: str) -> list[Any]:
        with self.lock:
            return [arg for n, arg in self.calls if n == name]

    def publish_from_thread(self, *events: Event) -> None:
        """Publish as the real engine does: from a thread that is not the GUI's."""

        def run() -> None:
            for event in events:
                self.bus.publish(event)

        thread = threading.Thread(target=run, name="fake-engine")
        thread.start()
        thread.join()

    def _set_state(self, state: EngineState, reasons: tuple[str, ...] = ()) -> None:
        previous, self.state = self.state, state
        self.bus.publish(
            StateChanged(
                state=state,
                previous=previous,
                project=next(iter(self.projects), None),
                reasons=reasons,
            )
        )

    # --- EnginePort ------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.bus.subscribe(callback)

    def snapshot(self) -> DashboardView:
        with self.lock:
            self.snapshots += 1
        return DashboardView(state=self.state, projects=tuple(self.projects.values()))

    def settings(self) -> Settings:
        return self._settings

    def start(self) -> None:
        self._record("start")
        self._set_state(EngineState.IDLE if not self.projects else EngineState.WAITING)

    def stop(self) -> None:
        self._record("stop")
        self.state = EngineState.STOPPED

    def pause(self) -> None:
        self._record("pause")
        self._set_state(EngineState.PAUSED, ("paused",))

    def resume(self) -> None:
        self._record("resume")
        self._set_state(EngineState.WAITING)

    def snooze(self, until: float) -> None:
        self._record("snooze", until)
        self._set_state(EngineState.WAITING, ("snoozed",))

    def retry_now(self) -> None:
        self._record("retry_now")
        self._set_state(EngineState.LEASING)

    def apply_settings(self, settings: Settings) -> None:
        self._record("apply_settings", settings)
        self.applied.append(settings)
        self._settings = settings

    def preview(self, target: JoinTarget) -> ProjectPreview:
        self._record("preview", target)
        time.sleep(0.05)  # a network call takes time; the GUI must not wait for it
        if self.preview_error is not None:
            raise self.preview_error
        local = self.data_mode == "local"
        return ProjectPreview(
            target=target,
            name=target.project,
            description="Handwritten digits, a small perceptron."
            if not local
            else "Clinic intake data.",
            recipe="digits-mlp" if not local else "tabular-csv",
            data_mode=self.data_mode,
            key_fingerprint=FINGERPRINT,
            public_key="A" * 43 + "=",
            strategy="fedavg",
            current_version=3,
            data_columns={"label": "label", "features": ["age", "bp"]} if local else None,
        )

    def validate_data(self, preview: ProjectPreview, path: Path) -> str:
        self._record("validate_data", path)
        return check_local_csv(path, preview.data_columns)

    def credential_storage(self) -> CredentialStorage:
        self._record("credential_storage")
        return self.storage

    def use_file_store(self) -> CredentialStorage:
        raise AssertionError("the fake engine has a keychain; use the real engine for this")

    def existing_identity(self, preview: ProjectPreview) -> ExistingIdentity | None:
        self._record("existing_identity", preview.name)
        return self.identities.get(preview.name)

    def accept_new_key(self, project: str, fingerprint: str) -> None:
        self._record("accept_new_key", (project, fingerprint))
        joined = self.projects.get(project)
        change = joined.key_change if joined is not None else None
        if change is None or self.accept_error is not None:
            raise self.accept_error or ValueError("no key change is waiting")
        if fingerprint != change.new_fingerprint:
            raise ValueError(f"the project now signs with {change.new_fingerprint}")
        self.projects[project] = dataclasses.replace(joined, key_change=None, state="joined")

    def set_project_share(self, project: str, share: int) -> None:
        self._record("set_project_share", (project, share))
        self._schedule(project, share=share)

    def set_project_mode(self, project: str, mode: str) -> None:
        self._record("set_project_mode", (project, mode))
        self._schedule(project, mode=mode)

    def _schedule(self, project: str, **change: Any) -> None:
        """As the real engine does: persist (here: the snapshot) and announce the change."""
        joined = dataclasses.replace(self.projects[project], **change)
        self.projects[project] = joined
        self.bus.publish(
            ProjectScheduleChanged(project=project, share=joined.share, mode=joined.mode)
        )

    def change_key(self, project: str) -> KeyChangeNotice:
        """As the real engine does when the coordinator signs with another key: the project
        stops, the snapshot carries the change, and a fatal Error says so."""
        notice = KeyChangeNotice(
            project=project,
            pinned_fingerprint=FINGERPRINT,
            new_fingerprint=NEW_FINGERPRINT,
            server_url=self.projects[project].server_url,
        )
        self.projects[project] = dataclasses.replace(self.projects[project], key_change=notice)
        self.publish_from_thread(
            Error(
                message=f"{project}: the key of project {project!r} changed",
                project=project,
                code="key_changed",
                fatal=True,
            )
        )
        return notice

    def join(self, request: JoinRequest) -> JoinedProject:
        self._record("join", request)
        joined = JoinedProject(
            name=request.preview.name,
            server_url=request.preview.target.server_url,
            page_url=request.preview.page_url,
        )
        self.projects[joined.name] = joined
        self._set_state(EngineState.WAITING)
        return joined

    def leave(self, project: str) -> None:
        self._record("leave", project)
        self.projects.pop(project, None)


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("BARNRAISE_CONFIG_DIR", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return folder


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def tray_app(qtbot: Any, engine: FakeEngine, config_dir: Path) -> Iterator[Any]:
    from app.tray.tray import TrayApp
    from app.tray.welcome import mark_welcomed

    mark_welcomed(config_dir)  # the first start's welcome has its own tests (test_welcome.py)
    app = TrayApp(engine, settings_path=config_dir / "settings.json", tray_available=True, gpus=[])
    qtbot.addWidget(app.dashboard)
    app.start()
    qtbot.waitUntil(lambda: engine.called("start") != [] and app.model.state is EngineState.IDLE)
    yield app
    app.shutdown()


# --- the real coordinator on loopback ---------------------------------------------------
BACKEND = shutil.which("barnraise-backend", path=str(Path(sys.executable).parent)) or shutil.which(
    "barnraise-backend"
)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    if BACKEND is None:
        pytest.skip("barnraise-backend is not installed (pip install -e '.[backend]')")
    from backend.testing import free_port

    data = tmp_path_factory.mktemp("coordinator")
    subprocess.run(
        [
            BACKEND,
            "project",
            "create",
            "digits",
            "--recipe",
            "digits-mlp",
            "--strategy",
            "fedavg",
            "--data",
            str(data),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [BACKEND, "serve", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/v1/projects/digits", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail(
            f"the coordinator did not answer on {url}: {server.stdout.read() if server.stdout else ''}"
        )
    yield url
    server.terminate()
    server.wait(10)
