"""Credentials: the private-file store and the real OS keychain (gnome-keyring)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import keyring.backend
import keyring.errors
import pytest
from keyring.backends import fail, null

from app.contributor.credentials import (
    KEYRING_SERVICE,
    CredentialsError,
    CredentialStore,
    FileCredentialStore,
    KeyringCredentialStore,
    ProjectCredentials,
    ProjectRef,
    normalize_server_url,
    open_credential_store,
    project_key,
)


def b64(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


def creds(
    project: str = "digits", server: str = "https://barn.example.org", **kw: str
) -> ProjectCredentials:
    fields = {
        "server_url": server,
        "project": project,
        "client_id": "client_0123456789",
        "token": "tok-secret-123",
        "private_key_b64": b64(1),
        "project_public_key_b64": b64(2),
    }
    fields.update(kw)
    return ProjectCredentials(**fields)


def test_project_key_normalizes_server_url() -> None:
    assert normalize_server_url("HTTPS://Barn.Example.org:443/") == "https://barn.example.org"
    assert normalize_server_url("http://localhost:8080/barn/") == "http://localhost:8080/barn"
    assert project_key("https://barn.example.org/", "digits") == project_key(
        "https://BARN.example.org:443", "digits"
    )
    assert project_key("https://barn.example.org", "digits") == "https://barn.example.org#digits"
    with pytest.raises(CredentialsError, match="server URL"):
        project_key("ftp://x", "digits")
    with pytest.raises(CredentialsError, match="project name"):
        project_key("https://x", "Bad Name")


def test_credentials_validate_and_hide_secrets() -> None:
    c = creds()
    assert "tok-secret-123" not in repr(c) and b64(1) not in repr(c)
    with pytest.raises(CredentialsError, match="private_key_b64"):
        creds(private_key_b64="notbase64!")
    with pytest.raises(CredentialsError, match="32 bytes"):
        creds(project_public_key_b64=base64.b64encode(b"short").decode())
    with pytest.raises(CredentialsError, match="client id"):
        creds(client_id="x")
    with pytest.raises(CredentialsError, match="token"):
        creds(token="")


def exercise_store(store: CredentialStore) -> None:
    """The CredentialStore contract, shared by every implementation."""
    a, b = creds("digits"), creds("alpha", server="http://localhost:8080")
    assert store.list_projects() == []
    assert store.load(a.key) is None
    store.save(a.key, a)
    store.save(b.key, b)
    assert store.load(a.key) == a
    assert store.load(b.key) == b
    assert store.list_projects() == sorted(
        [
            ProjectRef(a.key, "https://barn.example.org", "digits"),
            ProjectRef(b.key, "http://localhost:8080", "alpha"),
        ],
        key=lambda r: r.key,
    )
    rotated = creds("digits", token="tok-new")
    store.save(a.key, rotated)
    assert store.load(a.key) == rotated
    with pytest.raises(CredentialsError, match="does not match"):
        store.save(b.key, a)
    store.delete(a.key)
    store.delete(a.key)  # idempotent
    assert store.load(a.key) is None
    assert [r.project for r in store.list_projects()] == ["alpha"]
    store.delete(b.key)
    assert store.list_projects() == []


# --- file store ------------------------------------------------------------------------------


def test_file_store_contract(tmp_path: Path) -> None:
    exercise_store(FileCredentialStore(tmp_path / "credentials.json"))


def test_file_store_is_0600_atomic_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "credentials.json"
    with caplog.at_level(logging.WARNING):
        store = FileCredentialStore(path)
    assert "plain file" in caplog.text and str(path) in caplog.text
    store.save(creds().key, creds())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["credentials.json"]
    data = json.loads(path.read_text())
    assert data["projects"][creds().key]["token"] == "tok-secret-123"
    assert FileCredentialStore(path).load(creds().key) == creds()


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_store_refuses_wide_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "credentials.json"
    FileCredentialStore(path).save(creds().key, creds())
    path.chmod(mode)
    with pytest.raises(CredentialsError) as info:
        FileCredentialStore(path)
    assert f"chmod 600 {path}" in str(info.value)
    path.chmod(0o600)
    assert FileCredentialStore(path).load(creds().key) == creds()


def test_file_store_refuses_permissions_widened_later(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    store = FileCredentialStore(path)
    store.save(creds().key, creds())
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        store.load(creds().key)


@pytest.mark.parametrize(
    ("text", "match"),
    [("{broken", "not valid JSON"), ("[]", "not a barnraise credentials file")],
)
def test_file_store_damaged_file_is_named(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match=match) as info:
        FileCredentialStore(path)
    assert str(path) in str(info.value)


def test_file_store_damaged_entry(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"version": 1, "projects": {"k": {"project": "digits"}}}))
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match="lack"):
        FileCredentialStore(path).load("k")


# --- keychain --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [fail.Keyring(), null.Keyring()])
def test_keyring_store_refuses_missing_keychain(tmp_path: Path, backend: object) -> None:
    with pytest.raises(CredentialsError, match="no OS keychain available.*--credentials FILE"):
        KeyringCredentialStore(tmp_path / "projects.json", backend=backend)  # type: ignore[arg-type]


def test_open_credential_store_never_falls_back_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyring, "get_keyring", lambda: fail.Keyring())
    with pytest.raises(CredentialsError, match="no OS keychain"):
        open_credential_store()
    store = open_credential_store(tmp_path / "c.json")
    assert isinstance(store, FileCredentialStore)


@pytest.mark.keyring
def test_keyring_store_contract_on_real_secret_service(
    secret_service: object, tmp_path: Path
) -> None:
    store = KeyringCredentialStore(tmp_path / "projects.json", backend=secret_service)  # type: ignore[arg-type]
    exercise_store(store)


@pytest.mark.keyring
def test_keyring_store_keeps_secrets_out_of_the_index(
    secret_service: object, tmp_path: Path
) -> None:
    index = tmp_path / "projects.json"
    store = KeyringCredentialStore(index, backend=secret_service)  # type: ignore[arg-type]
    c = creds()
    store.save(c.key, c)
    try:
        text = index.read_text()
        assert "tok-secret-123" not in text and b64(1) not in text
        assert json.loads(text)["projects"][c.key] == {
            "server_url": "https://barn.example.org",
            "project": "digits",
        }
        assert stat.S_IMODE(index.stat().st_mode) == 0o600
        # One JSON secret under service "barnraise", username = the project key.
        secret = secret_service.get_password(KEYRING_SERVICE, c.key)  # type: ignore[attr-defined]
        assert json.loads(secret)["token"] == "tok-secret-123"
        # A second store (another process) sees the same projects.
        again = KeyringCredentialStore(index, backend=secret_service)  # type: ignore[arg-type]
        assert again.load(c.key) == c
    finally:
        store.delete(c.key)
    assert secret_service.get_password(KEYRING_SERVICE, c.key) is None  # type: ignore[attr-defined]


@pytest.mark.keyring
def test_keyring_store_damaged_secret(secret_service: object, tmp_path: Path) -> None:
    secret_service.set_password(KEYRING_SERVICE, "https://x#y", "{not json")  # type: ignore[attr-defined]
    store = KeyringCredentialStore(tmp_path / "projects.json", backend=secret_service)  # type: ignore[arg-type]
    try:
        with pytest.raises(CredentialsError, match="damaged.*join it again"):
            store.load("https://x#y")
    finally:
        store.delete("https://x#y")


class MemoryKeyring(keyring.backend.KeyringBackend):
    """An in-memory keyring backend: the store's logic without a keychain."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.items.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not found")


def test_keyring_store_contract_in_memory(tmp_path: Path) -> None:
    exercise_store(KeyringCredentialStore(tmp_path / "projects.json", backend=MemoryKeyring()))


def test_keyring_store_damaged_index(tmp_path: Path) -> None:
    index = tmp_path / "projects.json"
    index.write_text("{oops")
    store = KeyringCredentialStore(index, backend=MemoryKeyring())
    with pytest.raises(CredentialsError, match="projects.json.*delete it"):
        store.list_projects()


def test_keyring_errors_become_credentials_errors(tmp_path: Path) -> None:
    class LockedKeyring(MemoryKeyring):
        def get_password(self, service: str, username: str) -> str | None:
            raise keyring.errors.KeyringLocked("Failed to unlock the collection!")

    store = KeyringCredentialStore(tmp_path / "projects.json", backend=LockedKeyring())
    with pytest.raises(CredentialsError, match="unlock it and try again"):
        store.load("https://x#y")
