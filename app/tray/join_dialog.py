"""Join a project: paste, check, consent, join. Every network step runs off the GUI thread.

Pages: (1) paste a page URL or invite and say how you appear on the leaderboard;
(2) the project as its coordinator describes it: description, recipe, data mode, strategy
and the server key fingerprint, plus a data chooser that validates a local-data folder/CSV,
and, when this computer already joined the project, that it keeps that identity;
(3) only on a computer without a keychain (checked during the look-up): keep the key in a
private file instead, with the CLI's warning (``key_storage_page``); (4) consent, which
says exactly what leaves this machine and what never does; (5) joining, then done.

The display name is published on a public leaderboard, so it is never taken from the
computer: the field starts empty with a random suggestion ("volunteer-ab12") that is used
when it stays empty, and the consent page shows the exact name that will be sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.contributor.credential_choice import STORAGE_FILE, STORAGE_NONE
from app.contributor.invites import InviteError, JoinTarget, parse_join_target
from app.tray.bridge import TaskRunner
from app.tray.data_chooser import ERROR_STYLE, DataChooser
from app.tray.engine_port import (
    DATA_LOCAL,
    CredentialStorage,
    EnginePort,
    ExistingIdentity,
    JoinedProject,
    JoinRequest,
    ProjectPreview,
)
from app.tray.icons import app_icon
from app.tray.join_texts import (
    already_joined_text,
    consent_text,
    data_mode_text,
    escape_html,
    strategy_text,
    suggest_display_name,
)
from app.tray.key_storage_page import USE_FILE_TEXT, KeyStoragePage

__all__ = ["JoinDialog", "already_joined_text", "consent_text", "suggest_display_name"]

log = logging.getLogger(__name__)

PAGE_PASTE, PAGE_PROJECT, PAGE_STORAGE, PAGE_CONSENT, PAGE_DONE = range(5)


class JoinDialog(QDialog):
    joined = Signal(object)  # JoinedProject

    def __init__(
        self, engine: EnginePort, runner: TaskRunner, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.runner = runner
        self.preview: ProjectPreview | None = None
        self.identity: ExistingIdentity | None = None  # this computer joined it before
        self.storage: CredentialStorage | None = None  # where the key would be kept
        self.suggested_name = suggest_display_name()
        self.joined_project: JoinedProject | None = None
        self.setObjectName("joinDialog")
        self.setWindowTitle("Join a project")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(560)

        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_paste_page())
        self.pages.addWidget(self._build_project_page())
        self.storage_page = KeyStoragePage(self._heading(""))
        self.storage_page.check_again_button.clicked.connect(self._check_keychain_again)
        self.pages.addWidget(self.storage_page)
        self.pages.addWidget(self._build_consent_page())
        self.pages.addWidget(self._build_done_page())

        self.back_button = QPushButton("Back")
        self.next_button = QPushButton("Look up")
        self.next_button.setObjectName("nextButton")
        self.next_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.back_button.clicked.connect(self._back)
        self.next_button.clicked.connect(self._next)
        self.cancel_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.back_button)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.next_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 16, 18, 14)
        layout.addWidget(self.pages, 1)
        layout.addLayout(buttons)
        for control, name in (  # what a screen reader says (Next's follows its text)
            (self.back_button, "Back"),
            (self.cancel_button, "Cancel joining"),
            (self.url_edit, "Project address or invite link"),
            (self.name_edit, "Your name on the leaderboard"),
            (self.team_edit, "Team (optional)"),
            (self.consent_view, "What leaves this computer"),
            (self.consent_box, "I understand and agree to contribute on these terms"),
        ):
            control.setAccessibleName(name)
        self._show_page(PAGE_PASTE)

    # --- pages -----------------------------------------------------------------------------
    def _heading(self, text: str) -> QLabel:
        label = QLabel(text)
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        label.setFont(font)
        return label

    def _build_paste_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(self._heading("Join a project"))
        intro = QLabel(
            "Paste the project's address or the invite link you were given, for example "
            "<i>https://example.org/p/digits</i>."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.url_edit = QLineEdit()
        self.url_edit.setObjectName("urlEdit")
        self.url_edit.setPlaceholderText("https://HOST/p/NAME or an invite link")
        self.url_edit.setClearButtonEnabled(True)
        # Empty on purpose: whatever is here is published (never the computer's login name).
        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("nameEdit")
        self.name_edit.setMaxLength(64)
        self.name_edit.setPlaceholderText(self.suggested_name)
        self.name_hint = QLabel(
            "Shown publicly on the project's leaderboard. Leave it empty to appear as "
            f"<b>{escape_html(self.suggested_name)}</b>."
        )
        self.name_hint.setObjectName("nameHint")
        self.name_hint.setWordWrap(True)
        self.name_hint.setStyleSheet("color: palette(mid);")
        self.team_edit = QLineEdit()
        self.team_edit.setObjectName("teamEdit")
        self.team_edit.setPlaceholderText("optional")
        self.team_edit.setMaxLength(64)
        form.addRow("Project address:", self.url_edit)
        form.addRow("Your name on the leaderboard:", self.name_edit)
        form.addRow("", self.name_hint)
        form.addRow("Team:", self.team_edit)
        layout.addLayout(form)
        self.paste_error = QLabel()
        self.paste_error.setObjectName("pasteError")
        self.paste_error.setWordWrap(True)
        self.paste_error.setStyleSheet(ERROR_STYLE)
        layout.addWidget(self.paste_error)
        layout.addStretch(1)
        self.url_edit.textChanged.connect(lambda _: self._update_buttons())
        self.name_edit.textChanged.connect(lambda _: self._update_buttons())
        return page

    def _build_project_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.project_heading = self._heading("")
        layout.addWidget(self.project_heading)
        self.identity_note = QLabel()
        self.identity_note.setObjectName("identityNote")
        self.identity_note.setWordWrap(True)
        self.identity_note.setTextFormat(Qt.TextFormat.PlainText)  # names are not markup
        self.identity_note.setStyleSheet(
            "background:#EFF6FF; color:#1E3A8A; border:1px solid #93C5FD; border-radius:6px;"
            " padding:8px;"
        )
        self.identity_note.hide()
        layout.addWidget(self.identity_note)
        self.description_label = QLabel()
        self.description_label.setWordWrap(True)
        self.description_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.description_label)
        form = QFormLayout()
        self.server_value = QLabel()
        self.recipe_value = QLabel()
        self.data_mode_value = QLabel()
        self.data_mode_value.setWordWrap(True)
        self.strategy_value = QLabel()
        self.fingerprint_value = QLabel()
        self.fingerprint_value.setObjectName("fingerprint")
        self.fingerprint_value.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.fingerprint_value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Coordinator:", self.server_value)
        form.addRow("Model recipe:", self.recipe_value)
        form.addRow("Training data:", self.data_mode_value)
        form.addRow("Aggregation:", self.strategy_value)
        form.addRow("Server key fingerprint:", self.fingerprint_value)
        layout.addLayout(form)
        hint = QLabel(
            "Check that the fingerprint matches the one on the project's web page: it proves "
            "you talk to the organiser's server. Barnraise remembers this key and refuses work "
            "signed by any other."
        )
        hint.setWordWrap(True)
        hint.setStyleSheet("color: palette(mid);")
        layout.addWidget(hint)

        self.data_box = DataChooser(self.engine, self.runner)
        self.data_box.changed.connect(self._update_buttons)
        self.data_edit = self.data_box.edit
        self.check_button = self.data_box.check_button
        self.data_status = self.data_box.status
        layout.addWidget(self.data_box)
        layout.addStretch(1)
        return page

    def _build_consent_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(self._heading("What leaves this computer"))
        self.consent_view = QTextBrowser()
        self.consent_view.setObjectName("consentText")
        self.consent_view.setOpenExternalLinks(False)
        self.consent_view.setMinimumHeight(220)
        layout.addWidget(self.consent_view, 1)
        self.consent_box = QCheckBox("I understand and agree to contribute on these terms")
        self.consent_box.setObjectName("consentBox")
        self.consent_box.toggled.connect(lambda _: self._update_buttons())
        layout.addWidget(self.consent_box)
        self.join_error = QLabel()
        self.join_error.setObjectName("joinError")
        self.join_error.setWordWrap(True)
        self.join_error.setStyleSheet(ERROR_STYLE)
        layout.addWidget(self.join_error)
        return page

    def _build_done_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.done_heading = self._heading("Joining…")
        layout.addWidget(self.done_heading)
        self.done_label = QLabel(
            "Creating a key for this project and registering it with the coordinator…"
        )
        self.done_label.setObjectName("doneLabel")
        self.done_label.setWordWrap(True)
        layout.addWidget(self.done_label)
        layout.addStretch(1)
        return page

    # --- navigation ------------------------------------------------------------------------
    @property
    def page(self) -> int:
        return self.pages.currentIndex()

    def _show_page(self, index: int) -> None:
        self.pages.setCurrentIndex(index)
        self.back_button.setVisible(index in (PAGE_PROJECT, PAGE_STORAGE, PAGE_CONSENT))
        text = {
            PAGE_PASTE: "Look up",
            PAGE_PROJECT: "Next",
            PAGE_STORAGE: USE_FILE_TEXT,
            PAGE_CONSENT: "Join",
            PAGE_DONE: "Close",
        }[index]
        self.next_button.setText(text)
        self.next_button.setAccessibleName(text)
        self.cancel_button.setVisible(index != PAGE_DONE)
        self._update_buttons()

    def _update_buttons(self, busy: bool = False) -> None:
        page = self.page
        if busy:
            self.next_button.setEnabled(False)
            return
        if page == PAGE_PASTE:
            ok = bool(self.url_edit.text().strip())  # an empty name means the suggestion
        elif page == PAGE_PROJECT:
            ok = self.preview is not None and (
                self.preview.data_mode != DATA_LOCAL or self.data_checked is not None
            )
        elif page == PAGE_STORAGE:
            ok = self.storage is not None
        elif page == PAGE_CONSENT:
            ok = self.consent_box.isChecked()
        else:
            ok = self.joined_project is not None or bool(self.join_error.text())
        self.next_button.setEnabled(ok)

    def _back(self) -> None:
        if self.page in (PAGE_PROJECT, PAGE_STORAGE):
            self._show_page(self.page - 1)
        elif self.page == PAGE_CONSENT:
            self._show_page(PAGE_PROJECT)  # the storage page is done once chosen

    def _next(self) -> None:
        if self.page == PAGE_PASTE:
            self._look_up()
        elif self.page == PAGE_PROJECT:
            self._keys_then_consent()
        elif self.page == PAGE_STORAGE:
            self._use_file_store()
        elif self.page == PAGE_CONSENT:
            self._join()
        else:
            self.accept()

    def set_url(self, text: str) -> None:
        """Pre-fill the address (an invite link handed over by a second launch)."""
        self.url_edit.setText(text)
        self._show_page(PAGE_PASTE)

    # --- step 1: look up -------------------------------------------------------------------
    def _look_up(self) -> None:
        self.paste_error.setText("")
        try:
            target = parse_join_target(self.url_edit.text())
        except InviteError as exc:
            self.paste_error.setText(str(exc).capitalize())
            return
        self.paste_error.setText(f"Asking {target.host} about {target.project}…")
        self.paste_error.setStyleSheet("color: palette(mid);")
        self._update_buttons(busy=True)
        self.runner.run(
            lambda: self._look_up_on_worker(target), self._looked_up, self._preview_failed
        )

    def _look_up_on_worker(
        self, target: JoinTarget
    ) -> tuple[ProjectPreview, ExistingIdentity | None, CredentialStorage]:
        # Runs on a worker thread: the project from its coordinator, where its key would be
        # kept (so a missing keychain is known before the consent page), then whether this
        # computer already has an identity there (keychain, coordinator).
        preview = self.engine.preview(target)
        storage = self.engine.credential_storage()
        try:
            identity = self.engine.existing_identity(preview)
        except Exception as exc:  # the join itself will say what is wrong, if anything
            log.warning("could not tell whether %s was joined before: %s", target.project, exc)
            identity = None
        return preview, identity, storage

    def _looked_up(
        self, found: tuple[ProjectPreview, ExistingIdentity | None, CredentialStorage]
    ) -> None:
        preview, identity, self.storage = found
        self.identity = identity
        if identity is not None:
            # Keep the published name and team unless the volunteer typed others: an empty
            # field would otherwise rename them or drop their team.
            if not self.name_edit.text().strip() and identity.display_name:
                self.name_edit.setText(identity.display_name)
            if not self.team_edit.text().strip() and identity.team:
                self.team_edit.setText(identity.team)
            self.identity_note.setText(already_joined_text(preview.name, identity))
        self.identity_note.setVisible(identity is not None)
        self._previewed(preview)

    def _previewed(self, preview: ProjectPreview) -> None:
        self.preview = preview
        self.data_box.reset(preview)
        self.paste_error.setText("")
        self.project_heading.setText(preview.name)
        self.description_label.setText(
            preview.description or "(The organiser gave no description.)"
        )
        self.server_value.setText(preview.target.server_url)
        self.recipe_value.setText(preview.recipe)
        self.data_mode_value.setText(data_mode_text(preview))
        self.strategy_value.setText(strategy_text(preview))
        self.fingerprint_value.setText(preview.key_fingerprint)
        self.data_box.setVisible(preview.data_mode == DATA_LOCAL)
        self._show_page(PAGE_PROJECT)

    def _preview_failed(self, exc: Exception) -> None:
        self.paste_error.setStyleSheet(ERROR_STYLE)
        self.paste_error.setText(f"Could not look up the project: {exc}")
        self._update_buttons()

    # --- step 2: local data (DataChooser), step 3: where the key is kept ---------------
    @property
    def data_checked(self) -> Path | None:
        return self.data_box.checked

    def _keys_then_consent(self) -> None:
        if self.storage is not None and self.storage.kind == STORAGE_NONE:
            self.storage_page.set_storage(self.storage)
            self._show_page(PAGE_STORAGE)
        else:
            self._show_consent()

    def _check_keychain_again(self) -> None:
        def checked(storage: CredentialStorage) -> None:
            self.storage = storage
            if storage.kind == STORAGE_NONE:
                self.storage_page.set_storage(storage)
                self.storage_page.failed("Still no keychain that Barnraise can use.")
            else:
                self._show_consent()

        self.runner.run(self.engine.credential_storage, checked, self._storage_failed)

    def _use_file_store(self) -> None:
        def chosen(storage: CredentialStorage) -> None:
            self.storage = storage
            self._show_consent()

        self._update_buttons(busy=True)
        self.runner.run(self.engine.use_file_store, chosen, self._storage_failed, ordered=True)

    def _storage_failed(self, exc: Exception) -> None:
        self.storage_page.failed(f"Nothing was changed: {exc}")
        self._update_buttons()

    # --- step 3: consent and join ----------------------------------------------------------
    def display_name(self) -> str:
        """The name the join publishes: the one typed, else the suggestion shown."""
        return self.name_edit.text().strip() or self.suggested_name

    def _team(self) -> str | None:
        return self.team_edit.text().strip() or None

    def _show_consent(self) -> None:
        assert self.preview is not None
        self.consent_box.setChecked(False)
        self.join_error.setText("")
        key_file = self.storage.path if self.storage and self.storage.kind == STORAGE_FILE else None
        self.consent_view.setHtml(
            consent_text(
                self.preview,
                self.display_name(),
                self._team(),
                self.data_checked,
                self.identity,
                key_file=key_file,
            )
        )
        self._show_page(PAGE_CONSENT)

    def _join(self) -> None:
        assert self.preview is not None
        request = JoinRequest(
            preview=self.preview,
            display_name=self.display_name(),
            team=self._team(),
            data_path=self.data_checked,
            consented=self.consent_box.isChecked(),
        )
        self.join_error.setText("")
        self._update_buttons(busy=True)
        self.back_button.setEnabled(False)
        self.runner.run(
            lambda: self.engine.join(request), self._joined, self._join_failed, ordered=True
        )

    def _joined(self, joined: JoinedProject) -> None:
        self.joined_project = joined
        again = self.identity is not None
        self.done_heading.setText(f"You {'rejoined' if again else 'joined'} {joined.name}")
        kept = (
            f"You kept your identity (client {self.identity.client_id}) and its credit. "
            if self.identity is not None
            else ""
        )
        self.done_label.setText(
            f"{kept}Barnraise will train for this project whenever your limits and schedule "
            "allow. You can follow it in the main window and on the project's page."
        )
        self._show_page(PAGE_DONE)
        self.joined.emit(joined)

    def _join_failed(self, exc: Exception) -> None:
        self.back_button.setEnabled(True)
        self.join_error.setText(f"Joining failed: {exc}")
        self._update_buttons()
