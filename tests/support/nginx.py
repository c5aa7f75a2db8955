"""A real nginx (Debian's package) on loopback in front of coordinator processes.

The proxy settings are the deployed ones: the ``location /`` includes
``deploy/nginx/barnraise-proxy.conf``, the file docs/deploy.md tells operators to
install. What the test writes itself is what a test must own: ports, paths, and the
upstream's balancing (round robin here, so that one volunteer's lease, upload and long
poll land on different processes; the deployed site pins a volunteer to one process by
address, which on loopback, where every volunteer is 127.0.0.1, would send all to one).

nginx missing is a failure that says how to install it, never a skip: CI installs it
(``nginx`` is in the Makefile's APT_PACKAGES).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
PROXY_CONF = REPO / "deploy" / "nginx" / "barnraise-proxy.conf"
INSTALL_HINT = "nginx is not installed: `apt-get install nginx`"


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(INSTALL_HINT, pytrace=False)


class Nginx:
    """``start()`` runs nginx in the foreground (a child we own), ``stop()`` ends it."""

    def __init__(self, root: Path, port: int, upstream_ports: list[int]) -> None:
        self.root = root
        self.port = port
        self.upstream_ports = upstream_ports
        self.url = f"http://127.0.0.1:{port}"
        self.conf = root / "nginx.conf"
        self.error_log = root / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;"
            for p in self.upstream_ports
        )
        temp = "\n".join(
            f"    {kind}_temp_path {self.root / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root, nginx's workers would switch to nobody, who cannot enter pytest's folders.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes 1;
pid {self.root / "nginx.pid"};
error_log {self.error_log} warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.root / "access.log"};
{temp}
    upstream barnraise {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            include {PROXY_CONF};
        }}
    }}
}}
"""

    def start(self) -> Nginx:
        self.conf.write_text(self.config())
        binary = find_nginx()
        command = [binary, "-p", str(self.root), "-c", str(self.conf), "-g", "daemon off;"]
        checked = subprocess.run([*command[:-2], "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, f"nginx refused its configuration:\n{checked.stderr}"
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        wait_until(self._accepting, 15, f"nginx to listen on {self.url}", details=self.log_tail)
        return self

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"nginx exited with {self.process.returncode}: {self.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log_tail(self) -> str:
        if not self.error_log.exists():
            return "(no nginx error log)"
        return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
