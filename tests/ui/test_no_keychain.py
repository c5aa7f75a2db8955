"""A desktop without a keychain: the tray starts, the Join dialog says so before the consent
page, offers the private file with the CLI's warning, and remembers the choice. The real
engine (ControllerEngine) and the real coordinator on loopback; the keyring backend is made
unavailable as tests/unit/contributor/test_contributor_credentials.py does it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail
from PySide6.QtCore import Qt

from app.contributor.credential_choice import (
    CHOICE_FILENAME,
    DEFAULT_FILE_NAME,
    STORAGE_FILE,
    STORAGE_KEYCHAIN,
    STORAGE_NONE,
    ChosenCredentialStore,
    open_chosen_store,
)
from app.contributor.credentials import (
    CredentialsError,
    FileCredentialStore,
    file_store_warning,
    keychain_problem,
)
from app.tray.join_dialog import PAGE_CONSENT, PAGE_DONE, PAGE_PROJECT, PAGE_STORAGE
from app.tray.key_storage_page import USE_FILE_TEXT


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


@pytest.fixture
def no_keychain(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(keyring, "get_keyring", lambda: fail.Keyring())
    problem = keychain_problem()
    assert problem is not None
    return problem


@pytest.fixture
def real_engine(qtbot, config_dir, tmp_path, monkeypatch, no_keychain):
    """The tray over the real engine on a computer without a keychain (not started:
    joining needs no trainer)."""
    from app.tray.adapter import ControllerEngine
    from app.tray.tray import TrayApp

    monkeypatch.setenv("BARNRAISE_DATA_DIR", str(tmp_path / "data"))
    engine = ControllerEngine(settings_path=config_dir / "settings.json")  # no --credentials
    app = TrayApp(engine, settings_path=config_dir / "settings.json", tray_available=True, gpus=[])
    qtbot.addWidget(app.dashboard)
    yield engine, app
    app.shutdown()


def test_the_engine_starts_without_a_keychain_and_offers_a_file(config_dir, no_keychain):
    store = ChosenCredentialStore()
    storage = store.storage()
    assert storage.kind == STORAGE_NONE and storage.problem == no_keychain
    assert storage.path == config_dir / DEFAULT_FILE_NAME
    assert storage.warning == file_store_warning(config_dir / DEFAULT_FILE_NAME)
    assert store.list_projects() == [] and store.load("https://x#digits") is None
    with pytest.raises(CredentialsError, match="no OS keychain"):
        open_chosen_store()  # the CLI still refuses, naming --credentials FILE

    chosen = store.use_file()
    assert (chosen.kind, chosen.path) == (STORAGE_FILE, config_dir / DEFAULT_FILE_NAME)
    choice = config_dir / CHOICE_FILENAME
    assert json.loads(choice.read_text())["path"] == str(config_dir / DEFAULT_FILE_NAME)
    assert os.stat(choice).st_mode & 0o077 == 0
    # Remembered: the next start (the tray's and the CLI's) opens the file without asking.
    assert ChosenCredentialStore().storage().kind == STORAGE_FILE
    assert isinstance(open_chosen_store(), FileCredentialStore)


def test_a_damaged_choice_names_its_file(config_dir):
    config_dir.mkdir(parents=True)
    (config_dir / CHOICE_FILENAME).write_text("{nope")
    with pytest.raises(CredentialsError, match=f"{CHOICE_FILENAME}.*delete it"):
        ChosenCredentialStore()


def test_a_keychain_is_used_when_there_is_one(config_dir, monkeypatch):
    from tests.unit.contributor.test_contributor_credentials import MemoryKeyring

    backend = MemoryKeyring()
    monkeypatch.setattr(keyring, "get_keyring", lambda: backend)
    assert ChosenCredentialStore().storage().kind == STORAGE_KEYCHAIN
    assert not (config_dir / CHOICE_FILENAME).exists()


@pytest.mark.slow
def test_join_without_a_keychain_chooses_the_file_before_consent(
    qtbot, coordinator, config_dir, real_engine, no_keychain
):
    _, app = real_engine
    dialog = app.open_join()
    qtbot.keyClicks(dialog.url_edit, f"{coordinator}/p/digits")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT, timeout=10_000)
    click(qtbot, dialog.next_button)
    # Before the consent page, not after it: where the key would go.
    assert dialog.page == PAGE_STORAGE
    page = dialog.storage_page
    offered = config_dir / DEFAULT_FILE_NAME
    assert page.file_label.text() == str(offered)
    warning = file_store_warning(offered)  # the very words the CLI logs
    assert page.warning_label.text() == warning[:1].upper() + warning[1:] + "."
    assert no_keychain in page.problem_label.text()
    assert dialog.next_button.text() == USE_FILE_TEXT and dialog.next_button.isEnabled()

    click(qtbot, page.check_again_button)  # still none: it says so and stays
    qtbot.waitUntil(lambda: "Still no keychain" in page.error_label.text())
    assert dialog.page == PAGE_STORAGE

    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_CONSENT, timeout=5000)
    assert f"stays in the private file {offered}" in dialog.consent_view.toPlainText()
    click(qtbot, dialog.consent_box)
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(
        lambda: dialog.page == PAGE_DONE or bool(dialog.join_error.text()), timeout=15_000
    )
    assert dialog.page == PAGE_DONE, dialog.join_error.text()
    assert os.stat(offered).st_mode & 0o077 == 0
    assert [r.project for r in FileCredentialStore(offered).list_projects()] == ["digits"]
    qtbot.waitUntil(lambda: "digits" in app.model.projects, timeout=5000)
    # Remembered: a new engine (the next start) finds the project in the file.
    again = ChosenCredentialStore()
    assert again.storage().kind == STORAGE_FILE
    assert [r.project for r in again.list_projects()] == ["digits"]


@pytest.mark.slow
def test_back_from_consent_skips_the_chosen_storage_page(qtbot, coordinator, real_engine):
    _, app = real_engine
    dialog = app.open_join()
    qtbot.keyClicks(dialog.url_edit, f"{coordinator}/p/digits")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT, timeout=10_000)
    click(qtbot, dialog.next_button)
    assert dialog.page == PAGE_STORAGE
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_CONSENT, timeout=5000)
    click(qtbot, dialog.back_button)
    assert dialog.page == PAGE_PROJECT
    click(qtbot, dialog.next_button)
    assert dialog.page == PAGE_CONSENT  # chosen already: not asked twice


def test_cli_opens_the_file_chosen_in_the_tray(config_dir: Path, no_keychain) -> None:
    import argparse

    from app.cli_common import _store

    ChosenCredentialStore().use_file()
    store = _store(argparse.Namespace(credentials=None))
    assert isinstance(store, FileCredentialStore) and store.path == config_dir / DEFAULT_FILE_NAME
