"""One tray per user: a lock file plus a local socket that a second launch talks to.

The first instance holds ``tray.lock`` (QLockFile: created exclusively, a dead owner's
lock is detected by its PID and taken over) and listens on a per-user local socket
(a unix socket, a named pipe on Windows). A second launch fails to take the lock, sends its
request ("show", or "join" with a URL) and exits; the first instance brings its window
forward. A socket left by a crash is removed when nobody answers on it.

Messages are one JSON object per connection: ``{"command": "show"}`` or
``{"command": "join", "url": "..."}``; the answer is ``{"ok": true}``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

__all__ = ["SingleInstance", "server_name"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_MS = 1500
MAX_MESSAGE = 64 * 1024


def server_name(config_dir: Path) -> str:
    """Per user and per config folder, so test instances never meet the volunteer's tray."""
    digest = hashlib.sha256(f"{getpass.getuser()}\0{config_dir.resolve()}".encode()).hexdigest()
    return f"barnraise-tray-{digest[:16]}"


class SingleInstance(QObject):
    """``acquire()`` → True in the first instance; then ``message`` fires per request."""

    message = Signal(dict)

    def __init__(self, config_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        config_dir.mkdir(parents=True, exist_ok=True)
        self.name = server_name(config_dir)
        self._lock = QLockFile(str(config_dir / "tray.lock"))
        self._lock.setStaleLockTime(0)  # stale only when its PID is gone, never by age
        self._server: QLocalServer | None = None

    def acquire(self) -> bool:
        if not self._lock.tryLock(0):
            return False
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            # A crashed instance left its socket; we hold the lock, so it is not in use.
            QLocalServer.removeServer(self.name)
            if not server.listen(self.name):
                log.warning("cannot listen on %s: %s", self.name, server.errorString())
                return True  # still the only instance; a second launch just cannot reach us
        server.newConnection.connect(self._on_connection)
        self._server = server
        return True

    def _on_connection(self) -> None:
        assert self._server is not None
        while self._server.hasPendingConnections():
            socket = self._server.nextPendingConnection()
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)

    def _read(self, socket: QLocalSocket) -> None:
        if not socket.canReadLine():
            if socket.bytesAvailable() > MAX_MESSAGE:
                socket.abort()
            return
        line = bytes(socket.readLine(MAX_MESSAGE).data())
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("not a command object")
        except ValueError:
            socket.write(b'{"ok": false, "error": "malformed request"}\n')
        else:
            socket.write(b'{"ok": true}\n')
            self.message.emit(request)
        socket.flush()
        socket.disconnectFromServer()

    def send(self, request: dict[str, Any], timeout_ms: int = CONNECT_TIMEOUT_MS) -> bool:
        """Deliver ``request`` to the running instance; False when nobody answered."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(timeout_ms):
            return False
        socket.write(json.dumps(request).encode("utf-8") + b"\n")
        socket.flush()
        ok = socket.waitForReadyRead(timeout_ms) and b'"ok": true' in bytes(socket.readAll().data())
        socket.disconnectFromServer()
        return ok

    def release(self) -> None:
        """Stop listening and drop the lock (idempotent)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._lock.isLocked():
            self._lock.unlock()
