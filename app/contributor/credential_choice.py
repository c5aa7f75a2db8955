"""Which credential store this computer uses, and the volunteer's choice of a file, kept.

The OS keychain is the default. Where there is none (a desktop without a Secret Service),
the CLI asks for ``--credentials FILE``; the tray instead offers a private file in the
Join dialog, before the consent page, with the CLI's warning (``file_store_warning``).
Choosing it is remembered in ``credential-store.json`` in the config folder (written
atomically, 0600), so the next start, the tray's and the CLI's alike, opens that file
without asking again.

- ``open_chosen_store(credentials_file)``: ``--credentials FILE``, else the remembered
  file, else the keychain (``CredentialsError`` when there is none: no silent fallback).
- ``ChosenCredentialStore``: the tray's store. It starts without a keychain too: it then
  lists no projects and refuses to save, until the keychain appears or ``use_file()``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from app.contributor.credentials import (
    CredentialsError,
    CredentialStore,
    FileCredentialStore,
    KeyringCredentialStore,
    ProjectCredentials,
    ProjectRef,
    file_store_warning,
    keychain_problem,
)
from app.contributor.settings import atomic_write_private, config_dir

__all__ = [
    "CHOICE_FILENAME",
    "DEFAULT_FILE_NAME",
    "STORAGE_FILE",
    "STORAGE_KEYCHAIN",
    "STORAGE_NONE",
    "ChosenCredentialStore",
    "CredentialStorage",
    "chosen_file",
    "open_chosen_store",
    "remember_file",
]

CHOICE_FILENAME = "credential-store.json"
DEFAULT_FILE_NAME = "credentials.json"  # the file the tray offers, in the config folder

STORAGE_KEYCHAIN = "keychain"
STORAGE_FILE = "file"
STORAGE_NONE = "none"  # no keychain, and no file chosen yet


@dataclass(frozen=True)
class CredentialStorage:
    """Where a join would keep its key: ``kind`` is STORAGE_KEYCHAIN, STORAGE_FILE (``path``
    is the file) or STORAGE_NONE (``path`` is the file offered, ``problem`` why there is no
    keychain)."""

    kind: str
    path: Path | None = None
    problem: str = ""

    @property
    def warning(self) -> str:
        """The CLI's warning about a plain file, for ``path`` ("" for the keychain)."""
        return file_store_warning(self.path) if self.path is not None else ""


def _choice_path(folder: Path | None) -> Path:
    return (folder if folder is not None else config_dir()) / CHOICE_FILENAME


def chosen_file(folder: Path | None = None) -> Path | None:
    """The credentials file the volunteer chose (None: never chose one)."""
    path = _choice_path(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(
            f"{path} is unreadable ({exc}); delete it, and Barnraise will ask again where to "
            "keep your keys"
        ) from exc
    if not isinstance(data, dict) or data.get("store") != STORAGE_FILE:
        raise CredentialsError(
            f"{path} is not a barnraise credential choice; delete it, and Barnraise will ask "
            "again where to keep your keys"
        )
    return Path(str(data.get("path", "")))


def remember_file(path: Path, folder: Path | None = None) -> None:
    """Remember that credentials live in ``path`` from now on."""
    text = json.dumps({"path": str(path), "store": STORAGE_FILE}, indent=2, sort_keys=True)
    atomic_write_private(_choice_path(folder), text + "\n")


def open_chosen_store(
    credentials_file: Path | None = None, *, folder: Path | None = None
) -> CredentialStore:
    """``credentials_file`` if given, else the remembered file, else the OS keychain
    (CredentialsError when there is none, naming ``--credentials FILE``)."""
    path = credentials_file if credentials_file is not None else chosen_file(folder)
    if path is not None:
        return FileCredentialStore(path)
    return KeyringCredentialStore()


class ChosenCredentialStore:
    """A ``CredentialStore`` that may have no store behind it yet (no keychain, no file).

    Without one it lists nothing, loads nothing, deletes nothing and refuses to save (the
    Join dialog asks first, so a join never gets that far). ``storage()`` asks the keyring
    again each time it has none.
    """

    def __init__(self, credentials_file: Path | None = None, *, folder: Path | None = None):
        self._folder = folder
        self._lock = threading.Lock()
        self._store: CredentialStore | None = None
        self._problem = ""
        if credentials_file is not None or chosen_file(folder) is not None:
            self._store = open_chosen_store(credentials_file, folder=folder)
        else:
            self._problem = keychain_problem() or ""
            if not self._problem:
                self._store = KeyringCredentialStore()

    @property
    def offered_file(self) -> Path:
        return (self._folder if self._folder is not None else config_dir()) / DEFAULT_FILE_NAME

    def storage(self) -> CredentialStorage:
        """Where a join would keep its key now (may block: it asks the keyring)."""
        with self._lock:
            if self._store is None:
                problem = keychain_problem()
                if problem is None:
                    self._store = KeyringCredentialStore()
                else:
                    self._problem = problem
            store = self._store
        if isinstance(store, FileCredentialStore):
            return CredentialStorage(STORAGE_FILE, store.path)
        if store is not None:
            return CredentialStorage(STORAGE_KEYCHAIN)
        return CredentialStorage(STORAGE_NONE, self.offered_file, self._problem)

    def use_file(self, path: Path | None = None) -> CredentialStorage:
        """Keep credentials in ``path`` (default: ``offered_file``) and remember it. Refused
        (CredentialsError) once a store is in use: its projects would be lost from view."""
        path = path if path is not None else self.offered_file
        with self._lock:
            if isinstance(self._store, FileCredentialStore) and self._store.path == path:
                return CredentialStorage(STORAGE_FILE, path)
            if self._store is not None:
                raise CredentialsError("credentials already have a store; nothing was changed")
            store = FileCredentialStore(path)  # refuses an unsafe or damaged file
            remember_file(path, self._folder)
            self._store = store
        return CredentialStorage(STORAGE_FILE, path)

    def _current(self) -> CredentialStore | None:
        with self._lock:
            return self._store

    def save(self, project_key: str, credentials: ProjectCredentials) -> None:
        store = self._current()
        if store is None:
            raise CredentialsError(self._problem or "no credential store chosen")
        store.save(project_key, credentials)

    def load(self, project_key: str) -> ProjectCredentials | None:
        store = self._current()
        return store.load(project_key) if store is not None else None

    def delete(self, project_key: str) -> None:
        store = self._current()
        if store is not None:
            store.delete(project_key)

    def list_projects(self) -> list[ProjectRef]:
        store = self._current()
        return store.list_projects() if store is not None else []
