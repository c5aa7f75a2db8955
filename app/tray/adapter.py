"""Fit the contributor engine to the tray's ``EnginePort``.

``ControllerEngine`` adapts the contributor controller (previews, joins, leaves, pause and
snooze, settings, typed events) and runs its control channel inside the tray;
``make_engine`` builds it.

Nothing here imports Qt or torch.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

from app.contributor.credential_choice import ChosenCredentialStore, CredentialStorage
from app.contributor.events import Event
from app.contributor.invites import JoinTarget
from app.contributor.settings import Settings, load_settings
from app.contributor.snapshot import ProjectSnapshot
from app.tray.engine_port import (
    DATA_LOCAL,
    DashboardView,
    EnginePort,
    ExistingIdentity,
    JoinedProject,
    JoinRequest,
    KeyChangeNotice,
    ProjectPreview,
)

__all__ = ["ControllerEngine", "check_local_csv", "make_engine"]

log = logging.getLogger(__name__)

# Asking the coordinator for the current name of an identity this machine already has is a
# courtesy for the Join dialog: a short try, never the engine's patient retries.
IDENTITY_TIMEOUT_S = (3.0, 5.0)
IDENTITY_ATTEMPTS = 2

# How many data rows the Join dialog's check reads: enough to catch a wrong file or a
# wrong column, quick on a multi-gigabyte CSV. The trainer checks every row when it loads.
CSV_CHECK_ROWS = 1000


def check_local_csv(path: Path, columns: dict[str, object] | None) -> str:
    """Check a CSV file or a folder of CSVs against the project's columns, torch-free.

    Returns "N rows in M file(s), K feature columns" or raises ValueError naming the file,
    the line and what to fix.
    """
    path = path.expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        if not files:
            raise ValueError(
                f"{path}: the folder holds no .csv files; choose a folder of CSV files"
            )
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{path}: no such file or folder; choose a CSV file or a folder of them")
    label = str((columns or {}).get("label") or "")
    raw_features = (columns or {}).get("features") or []
    features = [str(f) for f in raw_features] if isinstance(raw_features, list) else []
    rows = 0
    for file in files:
        try:
            with file.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                header = [h.strip() for h in next(reader, [])]
                if not any(header):
                    raise ValueError(f"{file}: the file is empty; it needs a header line and rows")
                for column in [c for c in [label, *features] if c]:
                    if column not in header:
                        raise ValueError(
                            f"{file}, line 1: column {column!r} not found; "
                            f"the header has {', '.join(header)}"
                        )
                wanted = [header.index(c) for c in [label, *features] if c]
                for row in reader:
                    if not row or not any(cell.strip() for cell in row):
                        continue
                    if len(row) != len(header):
                        raise ValueError(
                            f"{file}, line {reader.line_num}: {len(row)} fields, "
                            f"but the header has {len(header)}"
                        )
                    if rows < CSV_CHECK_ROWS:
                        for at in wanted:
                            try:
                                float(row[at])
                            except ValueError:
                                raise ValueError(
                                    f"{file}, line {reader.line_num}, column {header[at]!r}: "
                                    f"{row[at].strip()!r} is not a number"
                                ) from None
                    rows += 1
        except UnicodeDecodeError as exc:
            raise ValueError(f"{file}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise ValueError(f"{file}: malformed CSV ({exc})") from None
    if rows == 0:
        raise ValueError(f"{path}: there are no data rows, only a header")
    return f"{rows} rows in {len(files)} file(s), {len(features)} feature column(s)"


class ControllerEngine:
    """The port over ``app.contributor.controller.Controller`` (the real engine).

    It also serves the engine's local control channel (``app.contributor.commands``), so
    ``barnraise pause|resume|snooze|status|leave`` reach the engine inside the tray as they
    reach a headless one, plus the two commands for the GUI: ``show`` and ``open_join``
    (``{"url": ...}``), passed to ``ui_handler`` (which re-emits them as Qt signals).
    """

    def __init__(
        self,
        *,
        settings_path: Path | None = None,
        credentials_file: Path | None = None,
        insecure: bool = False,
    ) -> None:
        from app.contributor.controller import Controller, EngineOptions, EnginePaths

        self._settings_path = settings_path
        # Starts without a keychain too: the Join dialog then offers a private file.
        self._store = ChosenCredentialStore(credentials_file)
        self.paths = EnginePaths.default()
        self.controller = Controller(
            credentials=self._store,
            paths=self.paths,
            settings=load_settings(settings_path),
            options=EngineOptions(insecure=insecure),
        )
        self._insecure = insecure
        self._control = None
        self.ui_handler: Callable[[str, dict[str, object]], None] | None = None

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.controller.subscribe(callback)

    def snapshot(self) -> DashboardView:
        status = self.controller.status()
        return DashboardView(
            state=status.state,
            project=status.project,
            reasons=status.decision.reasons if status.decision else (),
            paused=status.paused,
            snoozed_until=status.snoozed_until.timestamp() if status.snoozed_until else None,
            projects=tuple(_joined_project(p) for p in status.projects),
        )

    def settings(self) -> Settings:
        return self.controller.settings

    def start(self) -> None:
        from app.contributor import commands
        from app.contributor.control import ControlError, ControlServer

        control = ControlServer(
            self.paths.runtime_dir, commands.handler(self.controller, ui=lambda: self.ui_handler)
        )
        try:
            control.start()
            self._control = control  # type: ignore[assignment]
        except ControlError as exc:
            # A headless engine already works in this data folder: two engines would lease
            # twice. Say so and do not start a second one.
            raise RuntimeError(
                f"{exc}. Stop `barnraise --headless` first, or run the tray with another data folder"
            ) from None
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        self.controller.wait(STOP_WAIT_S)
        control, self._control = self._control, None
        if control is not None:
            control.close()

    def pause(self) -> None:
        self.controller.pause()

    def resume(self) -> None:
        self.controller.resume()

    def snooze(self, until: float) -> None:
        from datetime import datetime

        self.controller.snooze(datetime.fromtimestamp(until).astimezone())

    def retry_now(self) -> None:
        self.controller.retry_now()

    def apply_settings(self, settings: Settings) -> None:
        self.controller.apply_settings(settings)

    def preview(self, target: JoinTarget) -> ProjectPreview:
        from app.contributor.controller import preview_join

        preview = preview_join(_target_text(target), insecure=self._insecure)
        return ProjectPreview.from_project_view(target, preview.project)

    def validate_data(self, preview: ProjectPreview, path: Path) -> str:
        return check_local_csv(path, preview.data_columns)

    def credential_storage(self) -> CredentialStorage:
        return self._store.storage()

    def use_file_store(self) -> CredentialStorage:
        return self._store.use_file()

    def existing_identity(self, preview: ProjectPreview) -> ExistingIdentity | None:
        from app.contributor.client import ClientError, CoordinatorClient, RetryPolicy
        from app.contributor.joining import JoinPreview, already_joined

        creds = already_joined(JoinPreview(target=preview.target, project={}), self._store)
        if creds is None:
            return None
        name = team = None
        try:
            client = CoordinatorClient(
                creds.server_url,
                creds.project,
                token=creds.token,
                insecure=self._insecure,
                timeout=IDENTITY_TIMEOUT_S,
                retry=RetryPolicy(attempts=IDENTITY_ATTEMPTS, base_s=0.2, cap_s=1.0),
            )
            try:
                me = client.me()
            finally:
                client.close()
            name = me.display_name or None
            team = me.team or None
        except ClientError as exc:
            # The stored token may be stale (the join renews it); the identity is the key.
            log.info("could not ask %s who client %s is: %s", creds.project, creds.client_id, exc)
        return ExistingIdentity(client_id=creds.client_id, display_name=name, team=team)

    def join(self, request: JoinRequest) -> JoinedProject:
        from app.contributor.controller import JoinPreview, save_project_data_path
        from app.contributor.credentials import project_key

        if not request.consented:
            raise ValueError("joining needs your consent; tick the consent box first")
        preview = request.preview
        if preview.data_mode == DATA_LOCAL:
            if request.data_path is None:
                raise ValueError("this project trains on your own data; choose a folder or CSV")
            self.validate_data(preview, request.data_path)
        view = {
            "name": preview.name,
            "public_key": preview.public_key,
            "data_mode": preview.data_mode,
            "description": preview.description,
            "recipe": preview.recipe,
            "privacy": preview.privacy,
        }
        target = preview.target
        key = project_key(target.server_url, target.project)
        if request.data_path is not None:
            # Saved before joining so the engine never sees the project without its data.
            save_project_data_path(self.paths, key, target.project, str(request.data_path))
        self.controller.join(
            JoinPreview(target=target, project=view),
            display_name=request.display_name,
            team=request.team,
        )
        return JoinedProject(
            name=target.project, server_url=target.server_url, page_url=target.page_url
        )

    def leave(self, project: str) -> None:
        self.controller.leave(self._key_of(project))

    def accept_new_key(self, project: str, fingerprint: str) -> None:
        self.controller.accept_new_key(self._key_of(project), fingerprint)

    def set_project_share(self, project: str, share: int) -> None:
        self.controller.set_project_share(self._key_of(project), share)

    def set_project_mode(self, project: str, mode: str) -> None:
        self.controller.set_project_mode(self._key_of(project), mode)

    def _key_of(self, project: str) -> str:
        for ref in self._store.list_projects():
            if ref.project == project:
                return ref.key
        raise ValueError(f"you have not joined {project!r}")


# Quitting waits this long for the engine to checkpoint and give its task back.
STOP_WAIT_S = 10.0


def _joined_project(p: ProjectSnapshot) -> JoinedProject:
    """One row of the Dashboard from the engine's picture of a project."""
    change = p.key_change
    return JoinedProject(
        name=p.project,
        server_url=p.server_url,
        page_url=f"{p.server_url}/p/{p.project}",
        state=f"stopped: {p.disabled}" if p.disabled else "joined",
        credit=float(p.credit or 0.0),
        credit_unit=p.credit_unit,
        rank=p.rank,
        tasks=int(p.tasks or 0),
        closed=p.closed,
        finished=p.finished,
        privacy=p.privacy,
        energy_joules=float(p.energy_joules or 0.0),
        energy_measured_joules=float(p.energy_measured_joules or 0.0),
        share=int(p.share),
        mode=p.mode,
        key_change=KeyChangeNotice(
            project=p.project,
            pinned_fingerprint=change.pinned_fingerprint,
            new_fingerprint=change.new_fingerprint,
            server_url=p.server_url,
        )
        if change is not None
        else None,
    )


def _target_text(target: JoinTarget) -> str:
    text = target.page_url
    return f"{text}?invite={target.invite}" if target.invite else text


def make_engine(
    *,
    settings_path: Path | None = None,
    credentials_file: Path | None = None,
    insecure: bool = False,
) -> EnginePort:
    """The engine the tray runs: the contributor controller, adapted to the tray's port."""
    return ControllerEngine(
        settings_path=settings_path, credentials_file=credentials_file, insecure=insecure
    )
