"""The decision a changed project key asks for: trust the new key, or leave.

Trust on first use: the key a project's coordinator signed with when the volunteer joined is
pinned, and tasks signed by any other key are refused. When the coordinator signs with a new
key, this dialog shows the pinned and the new fingerprint side by side. Accepting needs two
explicit steps (tick "I checked…", then "Accept new key") and keeps the volunteer's identity
and credit; "Leave project…" hands over to the usual leave confirmation. Closing the dialog,
Escape and "Keep refusing" (the default button) change nothing: the project stays stopped.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.tray.engine_port import KeyChangeNotice
from app.tray.icons import app_icon

__all__ = ["KeyChangeDialog"]

ERROR_STYLE = "color:#B91C1C;"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class KeyChangeDialog(QDialog):
    """Non-modal: the tray keeps running (and refusing the project's tasks) while it is open.

    Emits ``accept_requested(project, new_fingerprint)`` only after the confirmation, and
    ``leave_requested(project)``; the TrayApp does the work and calls ``accepted_key()`` or
    ``failed(message)``."""

    accept_requested = Signal(str, str)
    leave_requested = Signal(str)

    def __init__(self, notice: KeyChangeNotice, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.notice = notice
        self.setObjectName("keyChangeDialog")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(560)

        self.heading = QLabel()
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.heading.setFont(font)
        self.heading.setWordWrap(True)
        self.explanation = QLabel()
        self.explanation.setObjectName("keyChangeExplanation")
        self.explanation.setWordWrap(True)

        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.pinned_value = QLabel()
        self.pinned_value.setObjectName("pinnedFingerprint")
        self.new_value = QLabel()
        self.new_value.setObjectName("newFingerprint")
        grid = QGridLayout()
        grid.addWidget(QLabel("<b>Pinned when you joined</b>"), 0, 0)
        grid.addWidget(QLabel("<b>Signing with now</b>"), 0, 1)
        for column, value in enumerate((self.pinned_value, self.new_value)):
            value.setFont(mono)
            value.setWordWrap(True)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setStyleSheet("border:1px solid palette(mid); border-radius:4px; padding:6px;")
            grid.addWidget(value, 1, column)

        advice = QLabel(
            "Ask the organiser, or look on the project's page, which fingerprint the server "
            "uses now. Accept only if it is exactly the new one above: accepting keeps your "
            "identity and credit, and Barnraise works for the project again. If you are not "
            "sure, keep refusing — nothing is lost by waiting."
        )
        advice.setWordWrap(True)
        self.confirm_box = QCheckBox()
        self.confirm_box.setObjectName("confirmKeyBox")
        self.confirm_box.toggled.connect(lambda _: self._update_buttons())
        self.error_label = QLabel()
        self.error_label.setObjectName("keyChangeError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)

        self.leave_button = QPushButton("Leave project…")
        self.leave_button.setObjectName("leaveProjectButton")
        self.refuse_button = QPushButton("Keep refusing")
        self.refuse_button.setObjectName("keepRefusingButton")
        self.accept_button = QPushButton("Accept new key")
        self.accept_button.setObjectName("acceptKeyButton")
        self.leave_button.clicked.connect(self._leave)
        self.refuse_button.clicked.connect(self.reject)
        self.accept_button.clicked.connect(self._accept)
        # Enter must never trust a key: the default is to keep refusing.
        self.accept_button.setAutoDefault(False)
        self.leave_button.setAutoDefault(False)
        self.refuse_button.setDefault(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.leave_button)
        buttons.addStretch(1)
        buttons.addWidget(self.refuse_button)
        buttons.addWidget(self.accept_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 16, 18, 14)
        layout.addWidget(self.heading)
        layout.addWidget(self.explanation)
        layout.addLayout(grid)
        layout.addWidget(advice)
        layout.addWidget(self.confirm_box)
        layout.addWidget(self.error_label)
        layout.addStretch(1)
        layout.addLayout(buttons)
        self._busy = False
        self._shown_fingerprint: str | None = None
        self.set_notice(notice)

    @property
    def project(self) -> str:
        return self.notice.project

    def set_notice(self, notice: KeyChangeNotice) -> None:
        """Show ``notice``; a different new key than the one shown asks for a fresh check."""
        if notice.new_fingerprint != self._shown_fingerprint:
            self.confirm_box.setChecked(False)
        self._shown_fingerprint = notice.new_fingerprint
        self.notice = notice
        name = _escape(notice.project)
        where = f" at {_escape(notice.server_url)}" if notice.server_url else ""
        self.setWindowTitle(f"The key of {notice.project} changed")
        self.heading.setText(f"The server key of {name} changed")
        self.explanation.setText(
            f"The server of <b>{name}</b>{where} now signs its work with another key than the "
            "one you trusted when you joined. Barnraise refuses its tasks until you decide. "
            "This is expected when the organiser moved or rebuilt the server; it is also what "
            "a server pretending to be theirs would look like."
        )
        self.pinned_value.setText(notice.pinned_fingerprint)
        self.new_value.setText(notice.new_fingerprint)
        self.confirm_box.setText(
            f"I checked with the organiser that {notice.new_fingerprint} is the project's key"
        )
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.accept_button.setEnabled(self.confirm_box.isChecked() and not self._busy)
        self.confirm_box.setEnabled(not self._busy)
        self.leave_button.setEnabled(not self._busy)

    def _accept(self) -> None:
        if not self.confirm_box.isChecked():
            return
        self._busy = True
        self.error_label.setStyleSheet("color: palette(mid);")
        self.error_label.setText("Pinning the new key…")
        self._update_buttons()
        self.accept_requested.emit(self.notice.project, self.notice.new_fingerprint)

    def _leave(self) -> None:
        self.leave_requested.emit(self.notice.project)
        self.reject()

    def accepted_key(self) -> None:
        """The engine pinned the new key: close."""
        self._busy = False
        self.accept()

    def failed(self, message: str) -> None:
        """The engine refused (the key changed again, say): nothing was changed; say why."""
        self._busy = False
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setText(message)
        self._update_buttons()
