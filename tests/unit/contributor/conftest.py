"""Fixtures for the contributor engine tests.

``secret_service`` starts a private D-Bus session bus and gnome-keyring-daemon (Secret
Service) unlocked with a throwaway password in a temp HOME, so the real keyring backend is
exercised without touching the developer's own keychain. It skips only when
gnome-keyring-daemon or dbus-daemon is not installed (`apt-get install gnome-keyring dbus`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until

START_TIMEOUT_S = 30.0
SESSION_COLLECTION = "/org/freedesktop/secrets/collection/session"
"""gnome-keyring's in-memory collection: always there and unlocked, unlike the login keyring,
which the daemon creates (and makes the default) asynchronously, sometimes seconds later."""


def _wait_for_collection() -> None:
    import secretstorage

    def unlocked() -> bool:
        connection = secretstorage.dbus_init()
        try:
            return not secretstorage.Collection(connection, SESSION_COLLECTION).is_locked()
        finally:
            connection.close()

    # Any error means "not up yet"; the last one is named if it never comes up.
    wait_until(unlocked, START_TIMEOUT_S, "gnome-keyring's session collection", ignore=(Exception,))


@pytest.fixture(scope="module")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real keyring SecretService backend on a private, unlocked gnome-keyring."""
    missing = [tool for tool in ("gnome-keyring-daemon", "dbus-daemon") if not shutil.which(tool)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install gnome-keyring dbus); "
            "the Secret Service tests need them"
        )
    from keyring.backends import SecretService

    home: Path = tmp_path_factory.mktemp("keyring-home")
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    daemon: subprocess.Popen[str] | None = None
    saved = {key: os.environ.get(key) for key in ("DBUS_SESSION_BUS_ADDRESS",)}
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert daemon.stdin is not None
        # An empty password creates no login keyring; any throwaway one does.
        daemon.stdin.write("barnraise-test")
        daemon.stdin.close()
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
        _wait_for_collection()
        backend = SecretService.Keyring()
        backend.preferred_collection = SESSION_COLLECTION
        yield backend
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for proc in (daemon, bus):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
