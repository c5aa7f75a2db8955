"""The local control channel: how `barnraise pause|resume|snooze|status` reach a running engine.

Like BOINC's GUI RPC: the running instance listens on a unix socket in its runtime folder
(or on a loopback TCP port where unix sockets are unavailable or the path is too long), and
writes a random token to a 0600 file next to it. A client proves it may read that file by
sending the token; anyone else on the machine is refused. One request per connection:

    -> {"token": "...", "command": "pause", "args": {...}}\\n
    <- {"ok": true, "result": ...}\\n   or   {"ok": false, "error": "..."}\\n

The endpoint file (``control.json``) names the address; it is written last, atomically, so a
client that can read it can connect. A stale endpoint (the instance died) is detected by a
refused connection and removed by the next server.

This module only carries commands; what each one does is the table in
``app.contributor.commands``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import socket
import socketserver
import stat
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from federated.files import write_atomic

__all__ = [
    "ControlError",
    "ControlServer",
    "NotRunning",
    "send_command",
]

log = logging.getLogger(__name__)

ENDPOINT_FILE = "control.json"
TOKEN_FILE = "control.token"  # noqa: S105 (a file name, not a secret)
SOCKET_FILE = "control.sock"
_MAX_REQUEST = 64 * 1024
# AF_UNIX paths are limited to 108 bytes on Linux (104 on macOS); use TCP beyond that.
_MAX_UNIX_PATH = 100

Handler = Callable[[str, Mapping[str, Any]], Any]


class ControlError(Exception):
    """The running instance refused or failed the command (message says why)."""


class NotRunning(ControlError):
    """No running instance answers in this runtime folder."""


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _UnixServer | _TcpServer

    def handle(self) -> None:
        line = self.rfile.readline(_MAX_REQUEST)
        try:
            request = json.loads(line)
            token = str(request.get("token", ""))
            command = str(request["command"])
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args must be an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._reply({"ok": False, "error": f"malformed request: {exc}"})
            return
        control: ControlServer = self.server.control
        if not hmac.compare_digest(token.encode(), control.token.encode()):
            self._reply(
                {"ok": False, "error": "bad token: the token file of this instance is needed"}
            )
            return
        try:
            result = control.handler(command, args)
        except ControlError as exc:
            self._reply({"ok": False, "error": str(exc)})
        except Exception as exc:
            log.exception("control command %r failed", command)
            self._reply({"ok": False, "error": f"{command} failed: {exc}"})
        else:
            self._reply({"ok": True, "result": result})

    def _reply(self, body: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(body, default=str).encode("utf-8") + b"\n")


if hasattr(socketserver, "ThreadingUnixStreamServer"):

    class _UnixServer(socketserver.ThreadingUnixStreamServer):
        daemon_threads = True
        control: ControlServer

else:  # pragma: no cover - Windows
    _UnixServer = None  # type: ignore[assignment,misc]


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False
    control: ControlServer


class ControlServer:
    """Serve ``handler(command, args)`` to authenticated local clients, on its own threads."""

    def __init__(self, runtime_dir: Path, handler: Handler, *, force_tcp: bool = False) -> None:
        self.runtime_dir = runtime_dir
        self.handler = handler
        self.token = secrets.token_urlsafe(32)
        self._force_tcp = force_tcp
        self._server: _UnixServer | _TcpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; raise ControlError if another instance answers in this folder."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.runtime_dir, 0o700)
        try:
            send_command(self.runtime_dir, "ping", timeout=2.0)
        except NotRunning:
            pass
        else:
            raise ControlError(
                f"another barnraise instance is already running with runtime folder "
                f"{self.runtime_dir}; stop it first, or pass a different --data-dir"
            )
        write_atomic(self.runtime_dir / TOKEN_FILE, self.token, mode=0o600, durable=False)
        sock_path = self.runtime_dir / SOCKET_FILE
        use_unix = (
            not self._force_tcp
            and _UnixServer is not None
            and len(str(sock_path)) <= _MAX_UNIX_PATH
        )
        endpoint: dict[str, Any]
        server: _UnixServer | _TcpServer
        if use_unix:
            sock_path.unlink(missing_ok=True)
            old_umask = os.umask(0o177)  # the socket itself is 0600 from birth
            try:
                server = _UnixServer(str(sock_path), _RequestHandler)
            finally:
                os.umask(old_umask)
            endpoint = {"transport": "unix", "path": str(sock_path), "pid": os.getpid()}
        else:
            server = _TcpServer(("127.0.0.1", 0), _RequestHandler)
            endpoint = {
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": server.server_address[1],
                "pid": os.getpid(),
            }
        server.control = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="barnraise-control",
            daemon=True,
        )
        self._thread.start()
        write_atomic(
            self.runtime_dir / ENDPOINT_FILE, json.dumps(endpoint), mode=0o600, durable=False
        )

    def close(self) -> None:
        """Stop serving and remove the endpoint files (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for name in (ENDPOINT_FILE, TOKEN_FILE, SOCKET_FILE):
            with contextlib.suppress(OSError):
                (self.runtime_dir / name).unlink()


def _read_private(path: Path) -> str:
    info = path.stat()
    if sys.platform != "win32" and info.st_uid != os.getuid():
        raise ControlError(f"{path} belongs to another user; refusing to use it")
    if sys.platform != "win32" and stat.S_IMODE(info.st_mode) & 0o077:
        raise ControlError(f"{path} is readable by other users; remove it and restart barnraise")
    return path.read_text(encoding="utf-8").strip()


def send_command(
    runtime_dir: Path,
    command: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = 10.0,
) -> Any:
    """Send one command to the instance running in ``runtime_dir``; return its result.

    Raises NotRunning when nobody answers there, ControlError when it refuses."""
    try:
        endpoint = json.loads(_read_private(runtime_dir / ENDPOINT_FILE))
        token = _read_private(runtime_dir / TOKEN_FILE)
    except FileNotFoundError:
        raise NotRunning(
            f"no running barnraise instance found (looked in {runtime_dir}); start one with "
            "`barnraise --headless` or the tray app"
        ) from None
    except ValueError as exc:
        raise NotRunning(f"the control endpoint in {runtime_dir} is unreadable ({exc})") from None
    try:
        if endpoint["transport"] == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # type: ignore[attr-defined,unused-ignore]
            address: Any = endpoint["path"]
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (endpoint["host"], int(endpoint["port"]))
        with sock:
            sock.settimeout(timeout)
            sock.connect(address)
            request = {"token": token, "command": command, "args": dict(args or {})}
            sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(_MAX_REQUEST * 16)
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotRunning(
            f"no running barnraise instance answers (stale endpoint in {runtime_dir}); "
            "start one with `barnraise --headless`"
        ) from None
    except OSError as exc:
        raise NotRunning(f"could not reach the running instance: {exc}") from None
    if not line:
        raise ControlError("the running instance closed the connection without answering")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply.get("result")
