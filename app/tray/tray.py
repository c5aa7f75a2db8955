"""The tray app: owns the icon, the menu, the windows, and the engine's lifetime.

``TrayApp`` is handed an engine (``EnginePort``) and does three things: shows the engine's
state (icon, tooltip, a menu rebuilt from state by ``build_tray_menu``, the Dashboard),
turns the volunteer's clicks into engine commands on a worker thread, and persists
preferences. ``shutdown()`` is idempotent and runs on ``aboutToQuit``.

At the first start (no project joined, never welcomed) it opens the ``WelcomeDialog``;
closing it marks the volunteer welcomed. The menu's "Welcome…" opens it again.

A project whose coordinator signs with a new key stops until the volunteer decides: the
tray opens a ``KeyChangeDialog`` once per new key (and again from the menu or the window).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QObject, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon, QWidget

from app.contributor.events import Error, Event, TaskFinished
from app.contributor.settings import Settings, config_dir, save_settings
from app.tray.autostart import set_autostart
from app.tray.bridge import EngineBridge, TaskRunner
from app.tray.dashboard import Dashboard
from app.tray.engine_port import DashboardView, EnginePort, JoinedProject
from app.tray.gpus import GpuInfo, detect_gpus
from app.tray.icons import tray_icon
from app.tray.join_dialog import JoinDialog
from app.tray.key_change import KeyChangeDialog
from app.tray.notifications import Notifier
from app.tray.preferences import PreferencesDialog
from app.tray.status import StatusModel
from app.tray.tray_menu import SNOOZE_HOUR_S, fill_tray_menu, menu_key, tomorrow_morning
from app.tray.welcome import WelcomeDialog, mark_welcomed, was_welcomed

__all__ = ["SNOOZE_HOUR_S", "TrayApp", "tomorrow_morning"]

log = logging.getLogger(__name__)

NOTIFICATION_MS = 6000


class TrayApp(QObject):
    """The whole GUI over one engine. Create on the GUI thread after QApplication."""

    icon_shown = Signal()  # the tray icon (or, without a tray, the window) is on screen
    menu_rebuilt = Signal()
    remote_request = Signal(dict)  # from the engine's control channel (any thread)

    def __init__(
        self,
        engine: EnginePort,
        *,
        settings_path: Path | None = None,
        tray_available: bool | None = None,
        gpus: list[GpuInfo] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.settings_path = settings_path
        # The welcome's mark lives beside the settings (the app's config folder).
        self.config_folder = settings_path.parent if settings_path is not None else config_dir()
        self.tray_available = (
            QSystemTrayIcon.isSystemTrayAvailable() if tray_available is None else tray_available
        )
        self._gpus = gpus
        self._closed = False
        self.model = StatusModel()
        self.runner = TaskRunner(self)
        self.bridge = EngineBridge(engine, self)
        self.bridge.any_event.connect(self._on_event)
        self.settings: Settings = engine.settings()

        self.dashboard = Dashboard(self.model)
        self.dashboard.set_tray_available(self.tray_available)
        self.dashboard.pause_requested.connect(self.pause)
        self.dashboard.resume_requested.connect(self.resume)
        self.dashboard.retry_requested.connect(self.retry_now)
        self.dashboard.join_requested.connect(lambda: self.open_join())
        self.dashboard.preferences_requested.connect(self.open_preferences)
        self.dashboard.leave_requested.connect(self.leave)
        self.dashboard.project_mode_requested.connect(self.set_project_mode)
        self.dashboard.project_share_requested.connect(self.set_project_share)
        self.dashboard.key_review_requested.connect(self.review_key_change)
        self.dashboard.open_page_requested.connect(self.open_url)
        self.dashboard.quit_requested.connect(self.quit)
        self.join_dialog: JoinDialog | None = None
        self.preferences: PreferencesDialog | None = None
        self.welcome: WelcomeDialog | None = None
        self.key_dialogs: dict[str, KeyChangeDialog] = {}
        # (project, new fingerprint) already put in front of the volunteer unasked: each new
        # key opens its dialog once, after that it waits in the menu and the window.
        self._offered_keys: set[tuple[str, str]] = set()

        self.tray = QSystemTrayIcon(self)
        self.tray.setIcon(tray_icon(self.model.look))
        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.status_action: QAction | None = None
        self._built_menu_key: tuple[object, ...] = ()
        self.snooze_menu = QMenu("Snooze", self.menu)
        self.leaderboard_menu = QMenu("Leaderboard", self.menu)
        self.tray.setContextMenu(self.menu)
        self.tray.activated.connect(self._on_activated)
        self.notifier = Notifier(self._show_notification)
        self.notifier.enabled = self.settings.notifications
        self.build_tray_menu()
        self.remote_request.connect(self.handle_request)
        if hasattr(engine, "ui_handler"):
            engine.ui_handler = self._remote  # `barnraise join URL` / a second launch

    def _remote(self, command: str, params: dict[str, object]) -> None:
        # Control-channel thread: emit only; the slot runs on the GUI thread.
        self.remote_request.emit(
            {**params, "command": "join" if command == "open_join" else "show"}
        )

    # --- start -----------------------------------------------------------------------------
    def start(self, *, show_window: bool = False) -> None:
        """Show the icon (or the window where there is no tray) and start the engine."""
        self.model.load(self.engine.snapshot())
        self.model.starting = True
        self.refresh()
        if self.tray_available:
            self.tray.show()
            if show_window:
                self.show_dashboard()
        else:
            log.warning("no system tray on this desktop; showing the main window instead")
            self.show_dashboard()
            self.dashboard.add_log(
                "Your desktop has no system tray, so Barnraise shows this window instead."
            )
        self.icon_shown.emit()
        if not self.model.projects and not was_welcomed(self.config_folder):
            self.open_welcome()
        self.runner.run(self.engine.start, self._engine_started, self._command_failed, ordered=True)

    def _engine_started(self, _: object) -> None:
        state = self.model.state
        self.model.load(self.engine.snapshot())
        if self.model.state is not state:
            self.model.starting = False
        self.refresh()
        self.dashboard.add_log("Barnraise started")
        self._offer_key_changes()

    # --- state → screen --------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        self.model.apply(event)
        self.dashboard.on_event(event)
        if isinstance(event, Error):
            if event.code == "project_closed" and event.project:
                self.notifier.project_closed(event.project)
            elif event.code == "project_finished" and event.project:
                self.notifier.project_finished(event.project)
            else:
                self.notifier.error(event.message, event.code)
            if event.code == "key_changed" and event.project:
                # The fingerprints are in the engine's snapshot; read it off the GUI thread.
                self.runner.run(self.engine.snapshot, self._key_changes_found)
        elif isinstance(event, TaskFinished) and event.accepted:
            self.notifier.update_accepted(event.project)
        if self._menu_key() != self._built_menu_key:
            self.build_tray_menu()  # else only the status entry's text changes (below)
        self._refresh_icon()

    def _menu_key(self) -> tuple[object, ...]:
        """What the menu's entries depend on, besides the status line's text."""
        return menu_key(self.model)

    def _refresh_icon(self) -> None:
        self.tray.setIcon(tray_icon(self.model.look))
        self.tray.setToolTip(self.model.tooltip())
        if self.status_action is not None:
            self.status_action.setText(self.model.status_line())

    def refresh(self) -> None:
        self.build_tray_menu()
        self._refresh_icon()
        self.dashboard.refresh()

    def build_tray_menu(self) -> None:
        """Rebuild the tray menu from the model (the one place the menu is made)."""
        self._built_menu_key = self._menu_key()
        self.status_action = fill_tray_menu(
            self.menu, self.snooze_menu, self.leaderboard_menu, self.model, self
        )
        self.menu_rebuilt.emit()

    def stats(self) -> dict[str, object]:
        """What the tray shows now, as plain data (for ``--stats-file``: the soak test and
        bench/footprint.py check that the window is open and its charts repaint)."""
        board = self.dashboard
        return {
            "state": self.model.state.value,
            "status": self.model.status_line(),
            "window_visible": board.isVisible(),
            "accepted_updates": self.model.accepted_updates,
            "charts": {
                name: {
                    "points": len(chart.points),
                    "paints": chart.paints,
                    "painted_points": chart.painted_points,
                }
                for name, chart in (("loss", board.loss_chart), ("credit", board.credit_chart))
            },
        }

    def menu_texts(self) -> list[str]:
        """The menu's entries as text (for tests and the self-test log)."""
        return [a.text() for a in self.menu.actions() if not a.isSeparator()]

    # --- commands --------------------------------------------------------------------------
    def _command_failed(self, exc: Exception) -> None:
        self.dashboard.add_log(f"Problem: {exc}")
        self.notifier.error(str(exc))

    def pause(self) -> None:
        self.runner.run(
            self.engine.pause,
            lambda _: self.dashboard.add_log("Paused by you"),
            self._command_failed,
            ordered=True,
        )

    def resume(self) -> None:
        self.model.snoozed_until = None
        self.runner.run(
            self.engine.resume,
            lambda _: self.dashboard.add_log("Resumed"),
            self._command_failed,
            ordered=True,
        )

    def retry_now(self) -> None:
        """Ask the engine to try the server again now instead of after its backoff."""
        self.runner.run(
            self.engine.retry_now,
            lambda _: self.dashboard.add_log("Trying to reach the server again"),
            self._command_failed,
            ordered=True,
        )

    def snooze(self, until: float) -> None:
        self.model.snoozed_until = until
        self.refresh()
        when = time.strftime("%a %H:%M", time.localtime(until))
        self.runner.run(
            lambda: self.engine.snooze(until),
            lambda _: self.dashboard.add_log(f"Snoozed until {when}"),
            self._command_failed,
            ordered=True,
        )

    def leave(self, project: str) -> None:
        def left(_: object) -> None:
            self.model.projects.pop(project, None)
            dialog = self.key_dialogs.get(project)
            if dialog is not None:
                dialog.reject()
            self.dashboard.add_log(f"Left {project}; its keys were removed")
            self.refresh()

        self.runner.run(
            lambda: self.engine.leave(project), left, self._command_failed, ordered=True
        )

    def set_project_mode(self, project: str, mode: str) -> None:
        """Suspend/resume one project, or let it finish (the engine's event shows it)."""
        run = self.engine.set_project_mode
        self.runner.run(lambda: run(project, mode), None, self._command_failed, ordered=True)

    def set_project_share(self, project: str, share: int) -> None:
        run = self.engine.set_project_share
        self.runner.run(lambda: run(project, share), None, self._command_failed, ordered=True)

    def apply_settings(self, settings: Settings) -> None:
        """Persist, apply to the engine, and act on the settings the tray owns."""
        previous, self.settings = self.settings, settings
        try:
            save_settings(settings, self.settings_path)
        except OSError as exc:
            self._command_failed(OSError(f"could not save settings: {exc}"))
        self.notifier.enabled = settings.notifications
        if self.welcome is not None:
            self.welcome.set_settings(settings)
        if settings.start_at_login != previous.start_at_login:
            try:
                where = set_autostart(settings.start_at_login)
                self.dashboard.add_log(
                    f"Start at login {'on' if settings.start_at_login else 'off'} ({where})"
                )
            except OSError as exc:
                self._command_failed(OSError(f"could not change start at login: {exc}"))
        self.runner.run(
            lambda: self.engine.apply_settings(settings), None, self._command_failed, ordered=True
        )

    def open_url(self, url: str) -> None:
        QDesktopServices.openUrl(QUrl(url))

    # --- windows ---------------------------------------------------------------------------
    @staticmethod
    def _raise(window: QWidget) -> None:
        window.show()
        window.raise_()
        window.activateWindow()

    def show_dashboard(self) -> None:
        self._raise(self.dashboard)

    def open_join(self, url: str | None = None) -> JoinDialog:
        if self.join_dialog is None:
            dialog = JoinDialog(
                self.engine, self.runner, self.dashboard if self.dashboard.isVisible() else None
            )
            dialog.joined.connect(self._joined)
            dialog.finished.connect(lambda _: setattr(self, "join_dialog", None))
            self.join_dialog = dialog
        if url:
            self.join_dialog.set_url(url)
        self._raise(self.join_dialog)
        return self.join_dialog

    def _joined(self, joined: JoinedProject) -> None:
        self.model.load(self.engine.snapshot())
        self.dashboard.add_log(f"Joined {joined.name} on {joined.server_url}")
        self.notifier.project_joined(joined.name)
        self.refresh()

    # --- a changed project key (trust on first use) -----------------------------------------
    def _key_changes_found(self, snapshot: DashboardView) -> None:
        for project in snapshot.projects:
            if project.key_change is not None or project.name in self.model.projects:
                # None: accepted meanwhile (the engine sets the change before reporting it).
                self.model.set_key_change(project.name, project.key_change)
        self.refresh()
        self._offer_key_changes()

    def _offer_key_changes(self) -> None:
        """Open the decision for each new key not yet shown unasked."""
        for status in self.model.key_changes:
            notice = status.key_change
            if notice is None:
                continue
            seen = (status.name, notice.new_fingerprint)
            if seen not in self._offered_keys:
                self._offered_keys.add(seen)
                self.review_key_change(status.name)

    def review_key_change(self, project: str) -> KeyChangeDialog | None:
        """Show the key-change decision for ``project`` (None: no change is waiting)."""
        status = self.model.projects.get(project)
        if status is None or not status.key_changed:
            return None
        notice = status.key_change
        if notice is None:  # reported, fingerprints not read yet: read them, then show
            self.runner.run(self.engine.snapshot, self._key_changes_found)
            return None
        dialog = self.key_dialogs.get(project)
        if dialog is None:
            dialog = KeyChangeDialog(notice, self.dashboard if self.dashboard.isVisible() else None)
            dialog.accept_requested.connect(self.accept_new_key)
            dialog.leave_requested.connect(self._leave_from_key_dialog)
            dialog.finished.connect(lambda _: self.key_dialogs.pop(project, None))
            self.key_dialogs[project] = dialog
        else:
            dialog.set_notice(notice)
        self._raise(dialog)
        return dialog

    def accept_new_key(self, project: str, fingerprint: str) -> None:
        """The volunteer checked ``fingerprint`` and accepts it (see KeyChangeDialog)."""

        def pinned(_: object) -> None:
            self.model.set_key_change(project, None)
            if project in self.model.projects:
                self.model.projects[project].state = "joined"
            self.dashboard.add_log(
                f"Trusted the new key of {project} ({fingerprint}); your identity and credit "
                "are kept"
            )
            dialog = self.key_dialogs.get(project)
            if dialog is not None:
                dialog.accepted_key()
            self.refresh()

        def refused(exc: Exception) -> None:
            dialog = self.key_dialogs.get(project)
            if dialog is not None:
                message = str(exc)
                if "nothing was changed" not in message.lower():
                    message = f"Nothing was changed: {message}"
                dialog.failed(message[:1].upper() + message[1:])
            else:
                self._command_failed(exc)

        self.runner.run(
            lambda: self.engine.accept_new_key(project, fingerprint), pinned, refused, ordered=True
        )

    def _leave_from_key_dialog(self, project: str) -> None:
        self.show_dashboard()
        self.dashboard.confirm_leave(project)

    def open_welcome(self) -> WelcomeDialog:
        """What Barnraise does, the limits in force, Preferences, and a way to join."""
        if self.welcome is None:
            dialog = WelcomeDialog(self.settings)
            dialog.join_requested.connect(lambda: self.open_join())
            dialog.preferences_requested.connect(self.open_preferences)
            dialog.finished.connect(lambda _: self._welcome_closed())
            self.welcome = dialog
        self._raise(self.welcome)
        return self.welcome

    def _welcome_closed(self) -> None:
        self.welcome = None
        try:
            mark_welcomed(self.config_folder)  # seen once is enough; the menu has it
        except OSError as exc:
            log.warning("could not remember that the welcome was shown: %s", exc)

    def open_preferences(self) -> PreferencesDialog:
        if self.preferences is None:
            if self._gpus is None:
                self._gpus = detect_gpus()
            dialog = PreferencesDialog(self.settings, self._gpus)
            dialog.settings_changed.connect(self.apply_settings)
            dialog.finished.connect(lambda _: setattr(self, "preferences", None))
            self.preferences = dialog
        self._raise(self.preferences)
        return self.preferences

    def handle_request(self, request: dict[str, object]) -> None:
        """A second launch asked us for something (see instance.py)."""
        if request.get("command") == "join" and isinstance(request.get("url"), str):
            self.open_join(str(request["url"]))
        else:
            self.show_dashboard()

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.show_dashboard()

    def _show_notification(self, title: str, message: str, kind: str) -> None:
        icon = {
            "error": QSystemTrayIcon.MessageIcon.Critical,
            "warning": QSystemTrayIcon.MessageIcon.Warning,
        }.get(kind, QSystemTrayIcon.MessageIcon.Information)
        if self.tray_available and self.tray.isVisible():
            self.tray.showMessage(title, message, icon, NOTIFICATION_MS)
        else:
            self.dashboard.statusBar().showMessage(f"{title}: {message}", NOTIFICATION_MS)

    # --- the end ---------------------------------------------------------------------------
    def quit(self) -> None:
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def shutdown(self) -> None:
        """Stop the engine and release everything (idempotent; runs on aboutToQuit)."""
        if self._closed:
            return
        self._closed = True
        self.bridge.close()
        self.runner.close(wait=True)  # commands already given (a pause) reach the engine
        try:
            self.engine.stop()
        except Exception:
            log.exception("engine.stop() failed")
        self.tray.hide()
        for window in (
            self.welcome,
            self.join_dialog,
            self.preferences,
            *list(self.key_dialogs.values()),
            self.dashboard,
        ):
            if window is not None:
                window.close()
