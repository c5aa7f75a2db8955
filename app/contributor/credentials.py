"""Per-project secrets: the client's Ed25519 key, coordinator token, client id, pinned key.

One ``ProjectCredentials`` per project, keyed by ``project_key(server_url, project)``.

- ``KeyringCredentialStore`` keeps each as one JSON secret in the OS keychain (service
  ``"barnraise"``, username = the project key). A keychain cannot list its entries, so the
  store also keeps a non-secret index of joined projects, ``projects.json`` in the config
  folder. With no usable keychain it refuses to start (``CredentialsError``) rather than
  falling back to anything silently.
- ``FileCredentialStore(path)`` is the explicit choice for headless machines: one JSON file,
  mode 0600, that it refuses to read when group/other may access it. It logs a warning
  when opened.

Secrets never appear in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import stat
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import chainer, fail, null

from app.contributor.settings import atomic_write_private, config_dir
from federated.protocol import is_project_name, is_server_id

__all__ = [
    "INDEX_FILENAME",
    "KEYRING_SERVICE",
    "CredentialStore",
    "CredentialsError",
    "FileCredentialStore",
    "KeyringCredentialStore",
    "ProjectCredentials",
    "ProjectRef",
    "file_store_warning",
    "keychain_problem",
    "normalize_server_url",
    "open_credential_store",
    "project_key",
]

log = logging.getLogger(__name__)

KEYRING_SERVICE = "barnraise"
INDEX_FILENAME = "projects.json"
FORMAT_VERSION = 1

KEY_BYTES = 32


class CredentialsError(Exception):
    """Credentials cannot be stored or read; the message says what to do."""


def normalize_server_url(url: str) -> str:
    """``HTTPS://Host:443/`` → ``https://host``: one spelling per server, so one key."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise CredentialsError(f"server URL {url!r} must look like https://host[:port]")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default_port = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def project_key(server_url: str, project: str) -> str:
    """The store key of a project: ``"<normalized server url>#<project>"``."""
    if not is_project_name(project):
        raise CredentialsError(f"project name {project!r} is not a valid project name")
    return f"{normalize_server_url(server_url)}#{project}"


def _check_key_b64(name: str, value: str) -> None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CredentialsError(f"{name} is not valid base64") from exc
    if len(raw) != KEY_BYTES:
        raise CredentialsError(f"{name} must be {KEY_BYTES} bytes, got {len(raw)}")


@dataclass(frozen=True)
class ProjectCredentials:
    """Everything needed to act as this client in this project. Validated on creation."""

    server_url: str
    project: str
    client_id: str
    token: str = field(repr=False)
    private_key_b64: str = field(repr=False)  # raw 32-byte Ed25519 seed, standard base64
    project_public_key_b64: str  # pinned at join (trust on first use)

    def __post_init__(self) -> None:
        project_key(self.server_url, self.project)  # validates both
        if not is_server_id(self.client_id):
            raise CredentialsError(f"client id {self.client_id!r} is not a valid client id")
        if not self.token:
            raise CredentialsError("token is empty")
        _check_key_b64("private_key_b64", self.private_key_b64)
        _check_key_b64("project_public_key_b64", self.project_public_key_b64)

    @property
    def key(self) -> str:
        return project_key(self.server_url, self.project)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Any) -> ProjectCredentials:
        if not isinstance(data, dict):
            raise CredentialsError("stored credentials are not a JSON object")
        names = {
            "server_url",
            "project",
            "client_id",
            "token",
            "private_key_b64",
            "project_public_key_b64",
        }
        missing = sorted(names - set(data))
        if missing:
            raise CredentialsError(f"stored credentials lack {', '.join(missing)}")
        values = {name: data[name] for name in names}
        if not all(isinstance(v, str) for v in values.values()):
            raise CredentialsError("stored credentials hold a non-string field")
        return cls(**values)


@dataclass(frozen=True)
class ProjectRef:
    """A joined project, without secrets (what the tray lists)."""

    key: str
    server_url: str
    project: str


class CredentialStore(Protocol):
    def save(self, project_key: str, credentials: ProjectCredentials) -> None: ...

    def load(self, project_key: str) -> ProjectCredentials | None: ...

    def delete(self, project_key: str) -> None: ...

    def list_projects(self) -> list[ProjectRef]: ...


def _check_matches(key: str, credentials: ProjectCredentials) -> None:
    if key != credentials.key:
        raise CredentialsError(
            f"project key {key!r} does not match the credentials' {credentials.key!r}"
        )


def _ref(credentials: ProjectCredentials) -> ProjectRef:
    return ProjectRef(
        credentials.key, normalize_server_url(credentials.server_url), credentials.project
    )


# ---------------------------------------------------------------------------------------------
# OS keychain


def _unusable_backend(backend: keyring.backend.KeyringBackend) -> bool:
    if isinstance(backend, fail.Keyring | null.Keyring):
        return True
    if isinstance(backend, chainer.ChainerBackend):
        return not any(not _unusable_backend(b) for b in backend.backends)
    return False


def keychain_problem(backend: keyring.backend.KeyringBackend | None = None) -> str | None:
    """Why the OS keychain cannot be used (the message the CLI prints), or None when it can."""
    backend = backend if backend is not None else keyring.get_keyring()
    if _unusable_backend(backend):
        return NO_KEYCHAIN.format(backend=type(backend).__module__)
    return None


def file_store_warning(path: Path) -> str:
    """What keeping credentials in a file means: the CLI logs it when it opens one, the tray
    shows it before the volunteer chooses one (one wording, written here)."""
    return (
        f"storing project credentials in the plain file {path} (no OS keychain); anyone who "
        "can read it can act as you in those projects"
    )


NO_KEYCHAIN = (
    "no OS keychain available (keyring backend: {backend}); use --credentials FILE to keep "
    "credentials in a private file instead, or start a Secret Service such as gnome-keyring"
)


class KeyringCredentialStore:
    """Credentials in the OS keychain; a non-secret index in ``index_path``."""

    def __init__(
        self,
        index_path: Path | None = None,
        *,
        backend: keyring.backend.KeyringBackend | None = None,
    ) -> None:
        self._backend = backend if backend is not None else keyring.get_keyring()
        problem = keychain_problem(self._backend)
        if problem is not None:
            raise CredentialsError(problem)
        self.index_path = index_path if index_path is not None else config_dir() / INDEX_FILENAME
        self._lock = threading.Lock()

    def _keychain_error(self, exc: Exception) -> CredentialsError:
        return CredentialsError(
            f"the OS keychain refused ({exc}); unlock it and try again, or use --credentials FILE"
        )

    def _read_index(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CredentialsError(
                f"project index {self.index_path} is unreadable ({exc}); delete it and join "
                "your projects again (their keys stay in the keychain)"
            ) from exc
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, dict):
            raise CredentialsError(
                f"project index {self.index_path} is not a barnraise index; delete it and "
                "join your projects again"
            )
        return projects

    def _write_index(self, projects: dict[str, dict[str, str]]) -> None:
        text = json.dumps(
            {"version": FORMAT_VERSION, "projects": projects}, indent=2, sort_keys=True
        )
        atomic_write_private(self.index_path, text + "\n")

    def save(self, project_key: str, credentials: ProjectCredentials) -> None:
        _check_matches(project_key, credentials)
        with self._lock:
            try:
                self._backend.set_password(KEYRING_SERVICE, project_key, credentials.to_json())
            except keyring.errors.KeyringError as exc:
                raise self._keychain_error(exc) from exc
            # Secret first, index second: a crash between leaves an unlisted secret that the
            # next join overwrites, never a listed project without a key.
            projects = self._read_index()
            ref = _ref(credentials)
            projects[project_key] = {"server_url": ref.server_url, "project": ref.project}
            self._write_index(projects)

    def load(self, project_key: str) -> ProjectCredentials | None:
        try:
            secret = self._backend.get_password(KEYRING_SERVICE, project_key)
        except keyring.errors.KeyringError as exc:
            raise self._keychain_error(exc) from exc
        if secret is None:
            return None
        try:
            return ProjectCredentials.from_mapping(json.loads(secret))
        except (ValueError, CredentialsError) as exc:
            raise CredentialsError(
                f"the keychain entry {KEYRING_SERVICE!r}/{project_key!r} is damaged ({exc}); "
                "leave the project and join it again"
            ) from exc

    def delete(self, project_key: str) -> None:
        """Forget a project. Deleting one that is not stored is not an error."""
        with self._lock:
            try:
                self._backend.delete_password(KEYRING_SERVICE, project_key)
            except keyring.errors.PasswordDeleteError:
                pass  # not there: already deleted
            except keyring.errors.KeyringError as exc:
                raise self._keychain_error(exc) from exc
            projects = self._read_index()
            if projects.pop(project_key, None) is not None:
                self._write_index(projects)

    def list_projects(self) -> list[ProjectRef]:
        return [
            ProjectRef(key, entry["server_url"], entry["project"])
            for key, entry in sorted(self._read_index().items())
        ]


# ---------------------------------------------------------------------------------------------
# Plain file (headless machines)


class FileCredentialStore:
    """Credentials in one private JSON file (mode 0600), for machines without a keychain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        log.warning("%s", file_store_warning(path))
        self._read()  # refuse at once if it is unsafe or damaged

    def _check_permissions(self, st: os.stat_result) -> None:
        if sys.platform == "win32":
            return  # POSIX modes mean nothing there; the profile folder's ACL protects it
        if st.st_mode & 0o077:
            raise CredentialsError(
                f"credentials file {self.path} may be read by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {self.path}` and try again"
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise CredentialsError(
                f"credentials file {self.path} belongs to another user; use your own file"
            )

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as file:
                self._check_permissions(os.fstat(file.fileno()))
                text = file.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CredentialsError(f"cannot read credentials file {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CredentialsError(
                f"credentials file {self.path} is not valid JSON ({exc}); restore it from a "
                "backup or delete it and join your projects again"
            ) from exc
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, dict):
            raise CredentialsError(
                f"credentials file {self.path} is not a barnraise credentials file"
            )
        return projects

    def _write(self, projects: dict[str, Any]) -> None:
        text = json.dumps(
            {"version": FORMAT_VERSION, "projects": projects}, indent=2, sort_keys=True
        )
        atomic_write_private(self.path, text + "\n")

    def save(self, project_key: str, credentials: ProjectCredentials) -> None:
        _check_matches(project_key, credentials)
        with self._lock:
            projects = self._read()
            projects[project_key] = asdict(credentials)
            self._write(projects)

    def load(self, project_key: str) -> ProjectCredentials | None:
        entry = self._read().get(project_key)
        if entry is None:
            return None
        try:
            return ProjectCredentials.from_mapping(entry)
        except CredentialsError as exc:
            raise CredentialsError(
                f"credentials file {self.path}, project {project_key!r}: {exc}; leave the "
                "project and join it again"
            ) from exc

    def delete(self, project_key: str) -> None:
        with self._lock:
            projects = self._read()
            if projects.pop(project_key, None) is not None:
                self._write(projects)

    def list_projects(self) -> list[ProjectRef]:
        refs = []
        for key, entry in sorted(self._read().items()):
            if isinstance(entry, dict):
                refs.append(
                    ProjectRef(key, str(entry.get("server_url", "")), str(entry.get("project", "")))
                )
        return refs


def open_credential_store(credentials_file: Path | None = None) -> CredentialStore:
    """The store the CLI/tray should use: the file when ``--credentials FILE`` was given,
    else the OS keychain (CredentialsError when there is none: no silent fallback)."""
    if credentials_file is not None:
        return FileCredentialStore(credentials_file)
    return KeyringCredentialStore()
