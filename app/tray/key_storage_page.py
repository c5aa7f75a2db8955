"""The Join dialog's page for a computer without a keychain, shown before the consent page.

It says that no keychain (Secret Service, KWallet, …) can keep the project's key, offers
the private file instead with the warning the CLI gives (``file_store_warning``, one
wording), and lets the volunteer check again after starting a keychain. The dialog's
Next button ("Keep keys in this file") makes the choice; it is remembered.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from app.tray.data_chooser import ERROR_STYLE
from app.tray.engine_port import CredentialStorage

__all__ = ["USE_FILE_TEXT", "KeyStoragePage"]

USE_FILE_TEXT = "Keep keys in this file"  # the dialog's Next button on this page

INTRO = (
    "Barnraise keeps each project's private key and access token in your system's keychain "
    "(GNOME Keyring, KWallet or another Secret Service), but this computer has none that "
    "Barnraise can use. You can keep them in a private file instead, which only your user "
    "account may read:"
)
ALTERNATIVE = (
    "Or start a keychain (for example gnome-keyring) and check again. Whatever you choose "
    "is remembered for this computer."
)


class KeyStoragePage(QWidget):
    def __init__(self, heading: QLabel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("keyStoragePage")
        layout = QVBoxLayout(self)
        heading.setText("Where to keep this project's key")
        layout.addWidget(heading)
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.file_label = QLabel()
        self.file_label.setObjectName("storageFile")
        self.file_label.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.file_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.file_label.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.file_label)
        self.warning_label = QLabel()
        self.warning_label.setObjectName("storageWarning")
        self.warning_label.setWordWrap(True)
        self.warning_label.setTextFormat(Qt.TextFormat.PlainText)
        self.warning_label.setStyleSheet(
            "background:#FEF3C7; color:#78350F; border:1px solid #F59E0B; border-radius:6px;"
            " padding:8px;"
        )
        layout.addWidget(self.warning_label)
        alternative = QLabel(ALTERNATIVE)
        alternative.setWordWrap(True)
        layout.addWidget(alternative)
        self.check_again_button = QPushButton("Check for a keychain again")
        self.check_again_button.setObjectName("checkKeychainButton")
        self.check_again_button.setAccessibleName("Check for a keychain again")
        layout.addWidget(self.check_again_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.problem_label = QLabel()  # the technical reason, for whoever helps them
        self.problem_label.setObjectName("storageProblem")
        self.problem_label.setWordWrap(True)
        self.problem_label.setTextFormat(Qt.TextFormat.PlainText)
        self.problem_label.setStyleSheet("color: palette(mid);")
        layout.addWidget(self.problem_label)
        self.error_label = QLabel()
        self.error_label.setObjectName("storageError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        layout.addWidget(self.error_label)
        layout.addStretch(1)

    def set_storage(self, storage: CredentialStorage) -> None:
        """Show the file offered and what keeping keys there means."""
        self.file_label.setText(str(storage.path or ""))
        warning = storage.warning
        self.warning_label.setText(f"{warning[:1].upper()}{warning[1:]}." if warning else "")
        self.problem_label.setText(f"Why: {storage.problem}" if storage.problem else "")
        self.error_label.setText("")

    def failed(self, message: str) -> None:
        self.error_label.setText(message)
