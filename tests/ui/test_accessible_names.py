"""Every control of the welcome and the Join dialog (each page, the keychain page too) has
an accessible name, so a screen reader says what it is. The walk fails on any without."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QTextEdit,
    QWidget,
)

from app.contributor.credential_choice import STORAGE_NONE, CredentialStorage
from app.contributor.settings import default_settings
from app.tray.welcome import WelcomeDialog

CONTROLS = (QAbstractButton, QLineEdit, QTextEdit, QComboBox, QAbstractSpinBox)


def unnamed_controls(window: QWidget) -> list[str]:
    """The controls under ``window`` without an accessible name, described for the failure.
    Parts Qt makes inside a control (a line edit's clear button) belong to that control."""
    missing = []
    for widget in window.findChildren(QWidget):
        if not isinstance(widget, CONTROLS):
            continue
        parent = widget.parentWidget()
        if isinstance(parent, QLineEdit | QAbstractSpinBox | QComboBox):
            continue
        if not widget.accessibleName().strip():
            text = widget.text() if hasattr(widget, "text") else ""
            missing.append(f"{type(widget).__name__} {widget.objectName()!r} {text!r}")
    return missing


def test_the_walk_catches_an_unnamed_control(qtbot) -> None:
    from PySide6.QtWidgets import QPushButton, QVBoxLayout

    window = QWidget()
    qtbot.addWidget(window)
    QVBoxLayout(window).addWidget(QPushButton("Nameless"))
    assert unnamed_controls(window) == ["QPushButton '' 'Nameless'"]


def test_welcome_controls_are_named(qtbot) -> None:
    dialog = WelcomeDialog(default_settings())
    qtbot.addWidget(dialog)
    assert unnamed_controls(dialog) == []


def test_join_dialog_controls_are_named_on_every_page(qtbot, tray_app, engine) -> None:
    from app.tray.join_dialog import PAGE_DONE, PAGE_STORAGE

    dialog = tray_app.open_join()
    qtbot.waitUntil(dialog.isVisible)
    dialog.storage_page.set_storage(
        CredentialStorage(STORAGE_NONE, Path("/home/ada/credentials.json"), "no keychain")
    )
    for page in range(PAGE_DONE + 1):
        dialog._show_page(page)
        assert unnamed_controls(dialog) == [], f"page {page}"
        assert dialog.next_button.accessibleName() == dialog.next_button.text()
    dialog._show_page(PAGE_STORAGE)
    assert dialog.next_button.accessibleName() == "Keep keys in this file"
