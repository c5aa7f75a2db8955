"""The Join dialog's "Your data" box: choose a CSV file or a folder of them and check it
against the project's columns (on a worker thread) before the volunteer may go on."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.tray.bridge import TaskRunner
from app.tray.engine_port import EnginePort, ProjectPreview

__all__ = ["ERROR_STYLE", "OK_STYLE", "DataChooser"]

ERROR_STYLE = "color:#B91C1C;"
OK_STYLE = "color:#15803D;"


class DataChooser(QWidget):
    """``checked``: the path that passed the check, None until one has (or after an edit)."""

    changed = Signal()  # ``checked`` changed

    def __init__(self, engine: EnginePort, runner: TaskRunner, parent: QWidget | None = None):
        super().__init__(parent)
        self.engine = engine
        self.runner = runner
        self.preview: ProjectPreview | None = None
        self.checked: Path | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addWidget(
            QLabel("<b>Your data</b> — a CSV file or a folder of CSV files on this computer:")
        )
        row = QHBoxLayout()
        self.edit = QLineEdit()
        self.edit.setObjectName("dataEdit")
        self.edit.setAccessibleName("Your data: a CSV file or a folder")
        self.edit.setPlaceholderText("/path/to/data.csv")
        file_button = QPushButton("Choose file…")
        folder_button = QPushButton("Choose folder…")
        self.check_button = QPushButton("Check data")
        self.check_button.setObjectName("checkDataButton")
        file_button.setAccessibleName("Choose a CSV file")
        folder_button.setAccessibleName("Choose a folder of CSV files")
        self.check_button.setAccessibleName("Check the data against the project's columns")
        file_button.clicked.connect(self._choose_file)
        folder_button.clicked.connect(self._choose_folder)
        self.check_button.clicked.connect(self.check)
        row.addWidget(self.edit, 1)
        row.addWidget(file_button)
        row.addWidget(folder_button)
        row.addWidget(self.check_button)
        layout.addLayout(row)
        self.status = QLabel()
        self.status.setObjectName("dataStatus")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.edit.textChanged.connect(self._edited)

    def reset(self, preview: ProjectPreview) -> None:
        """A new project was looked up: nothing is checked for it yet."""
        self.preview = preview
        self.checked = None
        self.status.setText("")

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a CSV file", str(Path.home()), "CSV files (*.csv);;All files (*)"
        )
        if path:
            self.edit.setText(path)
            self.check()

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Choose a folder of CSV files", str(Path.home())
        )
        if path:
            self.edit.setText(path)
            self.check()

    def _edited(self) -> None:
        self.checked = None
        self.status.setText("")
        self.changed.emit()

    def check(self) -> None:
        preview = self.preview
        text = self.edit.text().strip()
        if preview is None or not text:
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText("Choose a CSV file or a folder first.")
            return
        path = Path(text).expanduser()
        self.status.setStyleSheet("color: palette(mid);")
        self.status.setText("Checking…")
        self.check_button.setEnabled(False)

        def checked(summary: str) -> None:
            self.check_button.setEnabled(True)
            if self.edit.text().strip() != text:
                return  # edited meanwhile; the answer is for another path
            self.checked = path
            self.status.setStyleSheet(OK_STYLE)
            self.status.setText(f"✓ {summary}")
            self.changed.emit()

        def failed(exc: Exception) -> None:
            self.check_button.setEnabled(True)
            self.checked = None
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText(str(exc))
            self.changed.emit()

        self.runner.run(lambda: self.engine.validate_data(preview, path), checked, failed)
