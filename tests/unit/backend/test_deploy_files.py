"""The deployment files of docs/deploy.md, against the real tools.

- nginx (Debian's package) accepts the site (``deploy/nginx/barnraise-site.conf``, which
  includes ``barnraise-proxy.conf``) with only its paths and ports moved into a temporary
  folder, and serves it as the doc says: plain HTTP redirects to HTTPS except the ACME
  challenge, HTTPS speaks TLS 1.2 and 1.3 with HSTS, and ``/metrics`` is refused.
- systemd accepts the units (``systemd-analyze verify``), and each unit's
  ``barnraise-backend`` command line parses with the CLI's own parser, so a renamed flag
  or subcommand fails here; the environment file names only what the CLI or the units
  read, and the ports of ``barnraise.target`` are the servers of nginx's upstream.

nginx or systemd missing is a failure that says how to install it, never a skip.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import inspect
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backend import cli
from backend.cli_store import DATABASE_URL_ENV
from backend.services.aggregation_worker import AggregationWorker
from backend.serving.server import Server
from backend.throttle import parse_proxies
from backend.wsgi import check_public_url
from tests.support.nginx import find_nginx
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
SITE = DEPLOY / "nginx" / "barnraise-site.conf"
PROXY = DEPLOY / "nginx" / "barnraise-proxy.conf"
COORDINATOR_UNIT = DEPLOY / "systemd" / "barnraise-coordinator@.service"
MIGRATE_UNIT = DEPLOY / "systemd" / "barnraise-migrate.service"
TARGET = DEPLOY / "systemd" / "barnraise.target"
ENV_EXAMPLE = DEPLOY / "coordinator.env.example"

# Where docs/deploy.md installs things; the files must agree with it.
INSTALLED_PROXY = "/etc/barnraise/nginx/barnraise-proxy.conf"
INSTALLED_ENV = "/etc/barnraise/coordinator.env"
DATA_DIR = "/var/lib/barnraise"
SERVER_NAME = "coord.example.org"

SYSTEMD_HINT = "systemd-analyze is missing: `apt-get install systemd`"


# --------------------------------------------------------------------------- systemd files


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's ``[Section]`` -> ``(key, value)`` pairs, in order (keys may repeat),
    with backslash-continued lines joined as systemd joins them."""
    sections: dict[str, list[tuple[str, str]]] = {}
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        sections[section].append((key.strip(), value.strip()))
    return sections


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries(path).get(section, []) if k == key]


def unit_value(path: Path, section: str, key: str) -> str:
    values = unit_values(path, section, key)
    assert len(values) == 1, f"{path.name} [{section}] {key}= should be set once: {values}"
    return values[0]


def env_example() -> dict[str, str]:
    """The KEY=VALUE lines of the environment file that are not commented out."""
    out: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{ENV_EXAMPLE.name}: not KEY=VALUE: {line!r}"
            out[key.strip()] = value.strip()
    return out


def exec_argv(path: Path, port: int | None = None) -> list[str]:
    """The unit's ExecStart as systemd runs it: ``%i`` the instance, ``${NAME}`` from the
    environment file (one word each, as systemd substitutes it)."""
    line = unit_value(path, "Service", "ExecStart")
    if port is not None:
        line = line.replace("%i", str(port))
    env = env_example()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in env, f"{path.name} uses ${{{name}}}, which {ENV_EXAMPLE.name} lacks"
        return shlex.quote(env[name])

    line = re.sub(r"\$\{(\w+)\}", substitute, line)
    assert "%" not in line and "$" not in line, f"{path.name}: unexpanded in {line!r}"
    argv = shlex.split(line)
    assert Path(argv[0]).name == "barnraise-backend", argv
    return argv[1:]


def parse_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> argparse.Namespace:
    """``argv`` through the real parser of ``barnraise-backend`` (nothing is run)."""
    try:
        return cli._parser().parse_args(argv)
    except SystemExit:
        pytest.fail(
            f"barnraise-backend refuses the unit's arguments {argv}:\n{capsys.readouterr().err}"
        )


def target_ports() -> list[int]:
    wants = " ".join(unit_values(TARGET, "Unit", "Wants"))
    ports = [int(p) for p in re.findall(r"\bbarnraise-coordinator@(\d+)\.service\b", wants)]
    assert ports, f"{TARGET.name} starts no barnraise-coordinator@PORT instance"
    return ports


def test_target_starts_the_servers_of_nginx_upstream() -> None:
    site = SITE.read_text()
    upstream = re.search(r"upstream barnraise \{(.*?)\}", site, re.S)
    assert upstream, "the site defines no `upstream barnraise` (barnraise-proxy.conf's name)"
    servers = [int(p) for p in re.findall(r"^\s*server 127\.0\.0\.1:(\d+)\b", upstream[1], re.M)]
    assert servers == target_ports()
    assert "hash $remote_addr consistent;" in upstream[1]


@pytest.mark.parametrize("port", target_ports())
def test_coordinator_unit_command_line_parses(
    port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = env_example()
    # The CLI reads the database URL from the environment file's variable by itself.
    monkeypatch.setenv(DATABASE_URL_ENV, env[DATABASE_URL_ENV])
    args = parse_cli(exec_argv(COORDINATOR_UNIT, port), capsys)
    assert args.command == "serve"
    assert (args.host, args.port) == ("127.0.0.1", port)
    assert args.database_url == env[DATABASE_URL_ENV]
    assert (
        args.data
        == Path(DATA_DIR)
        == Path(unit_value(COORDINATOR_UNIT, "Service", "ReadWritePaths"))
    )
    assert args.trusted_proxy == ["127.0.0.1"]  # nginx, on this host
    parse_proxies(args.trusted_proxy)
    assert check_public_url(args.public_url) == env["BARNRAISE_PUBLIC_URL"]
    assert args.tls_cert is None and args.tls_key is None  # TLS ends at nginx


def test_migrate_unit_command_line_parses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = env_example()
    monkeypatch.setenv(DATABASE_URL_ENV, env[DATABASE_URL_ENV])
    args = parse_cli(exec_argv(MIGRATE_UNIT), capsys)
    assert (args.command, args.action) == ("database", "migrate")
    assert args.database_url == env[DATABASE_URL_ENV]
    assert args.data is None  # no URL: a refusal, never a SQLite file migrated by mistake


def test_env_example_names_only_what_is_read() -> None:
    names = set(env_example())
    assert DATABASE_URL_ENV in names
    substituted = {
        name
        for unit in (COORDINATOR_UNIT, MIGRATE_UNIT)
        for name in re.findall(r"\$\{(\w+)\}", unit_value(unit, "Service", "ExecStart"))
    }
    # Each name is read by barnraise-backend itself or handed to it by a unit's ExecStart.
    assert names == {DATABASE_URL_ENV} | substituted


def test_units_share_the_environment_and_are_confined() -> None:
    for unit in (COORDINATOR_UNIT, MIGRATE_UNIT):
        service = dict(unit_entries(unit)["Service"])
        assert service["EnvironmentFile"] == INSTALLED_ENV, unit.name
        assert service["User"] == "barnraise", unit.name
        assert service["NoNewPrivileges"] == "yes", unit.name
        assert service["ProtectSystem"] == "strict", unit.name
        assert service["PrivateTmp"] == "yes", unit.name
        assert unit_value(unit, "Unit", "PartOf") == TARGET.name
    assert unit_value(MIGRATE_UNIT, "Service", "Type") == "oneshot"
    assert unit_value(MIGRATE_UNIT, "Service", "RemainAfterExit") == "yes"


def test_coordinator_unit_waits_for_the_migration_and_the_drain() -> None:
    assert MIGRATE_UNIT.name in unit_value(COORDINATOR_UNIT, "Unit", "Requires").split()
    assert MIGRATE_UNIT.name in unit_value(COORDINATOR_UNIT, "Unit", "After").split()
    assert unit_value(COORDINATOR_UNIT, "Service", "Restart") == "always"
    assert unit_value(COORDINATOR_UNIT, "Service", "KillSignal") == "SIGTERM"
    assert int(unit_value(COORDINATOR_UNIT, "Service", "LimitNOFILE")) >= 65536
    # SIGTERM: the server gives running requests shutdown_timeout and waits 5 s more for
    # its loop (Server.stop), then the aggregation worker gets AggregationWorker.stop's
    # timeout; systemd must not SIGKILL before that.
    drain = (
        inspect.signature(Server).parameters["shutdown_timeout"].default
        + 5
        + inspect.signature(AggregationWorker.stop).parameters["timeout"].default
    )
    stop_s = unit_value(COORDINATOR_UNIT, "Service", "TimeoutStopSec")
    assert stop_s.isdigit() and int(stop_s) > drain, (stop_s, drain)


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or pytest.fail(SYSTEMD_HINT, pytrace=False)
    # As installed, but pointing at this checkout's barnraise-backend and environment file
    # (verify checks that ExecStart is executable); the template as one instance.
    executable = Path(sys.executable).parent / "barnraise-backend"
    env_file = tmp_path / "coordinator.env"
    shutil.copy(ENV_EXAMPLE, env_file)
    names = {
        COORDINATOR_UNIT: f"barnraise-coordinator@{target_ports()[0]}.service",
        MIGRATE_UNIT: MIGRATE_UNIT.name,
        TARGET: TARGET.name,
    }
    for source, name in names.items():
        text = source.read_text()
        text = text.replace("/opt/barnraise/venv/bin/barnraise-backend", str(executable))
        (tmp_path / name).write_text(text.replace(INSTALLED_ENV, str(env_file)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *(f"./{n}" for n in names.values())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Unknown keys and bad values are only warnings (exit status 0): none is allowed.
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


# --------------------------------------------------------------------------- nginx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def replace_once(text: str, pattern: str, replacement: str) -> str:
    """``pattern`` (a regex, per line) replaced; the site must hold it exactly once."""
    out, count = re.subn(pattern, replacement, text, flags=re.M)
    assert count == 1, f"{SITE.name}: expected one line matching {pattern!r}, found {count}"
    return out


@dataclass
class Site:
    root: Path
    conf: Path
    http_port: int
    https_port: int
    acme_token: str


def site_in(root: Path) -> Site:
    """The site and a main config including it, with paths and ports moved into ``root``."""
    cert, key = self_signed(root)
    www = root / "www"
    token = "barnraise-acme-token"
    (www / ".well-known" / "acme-challenge").mkdir(parents=True)
    (www / ".well-known" / "acme-challenge" / token).write_text(token)
    http_port, https_port = free_port(), free_port()
    site = SITE.read_text()
    assert f"include {INSTALLED_PROXY};" in site
    site = site.replace(INSTALLED_PROXY, str(PROXY))
    site = replace_once(site, r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{http_port};")
    site = replace_once(site, r"^(\s*)listen 443 ssl;$", rf"\1listen 127.0.0.1:{https_port} ssl;")
    # No IPv6 on every test machine; the IPv4 lines above say the same.
    site = replace_once(site, r"^\s*listen \[::\]:80;$", "")
    site = replace_once(site, r"^\s*listen \[::\]:443 ssl;$", "")
    live = f"/etc/letsencrypt/live/{SERVER_NAME}"
    site = replace_once(
        site, rf"^(\s*)ssl_certificate {live}/fullchain\.pem;$", rf"\1ssl_certificate {cert};"
    )
    site = replace_once(
        site, rf"^(\s*)ssl_certificate_key {live}/privkey\.pem;$", rf"\1ssl_certificate_key {key};"
    )
    site = replace_once(site, r"^(\s*)root /var/www/html;$", rf"\1root {www};")
    (root / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {root / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would switch to nobody, who cannot enter pytest's folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log {root / "access.log"};
{temp}
    include {root / "site.conf"};
}}
"""
    )
    return Site(root, conf, http_port, https_port, token)


def nginx_command(site: Site, *extra: str) -> list[str]:
    return [
        find_nginx(),
        "-p",
        str(site.root),
        "-c",
        str(site.conf),
        "-e",
        str(site.root / "error.log"),
        *extra,
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return site_in(tmp_path_factory.mktemp("nginx"))


@pytest.fixture(scope="module")
def served(site: Site) -> Iterator[Site]:
    """nginx running the site, in the foreground (a child we own)."""
    process = subprocess.Popen(nginx_command(site, "-g", "daemon off;"), stderr=subprocess.PIPE)
    try:

        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(
                    f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                http.client.HTTPConnection("127.0.0.1", site.https_port, timeout=1).connect()
            except OSError:
                return False
            return True

        wait_until(answering, 10, "nginx answering on the HTTPS port")
        yield site
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_nginx_accepts_the_site(site: Site) -> None:
    done = subprocess.run(nginx_command(site, "-t"), capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"nginx -t refuses the site:\n{output}"
    assert "[warn]" not in output and "[emerg]" not in output, output


def get(port: int, path: str, *, tls: ssl.SSLContext | None = None) -> http.client.HTTPResponse:
    if tls is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=tls)
    conn.request("GET", path, headers={"Host": SERVER_NAME})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def client_tls(maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
    context.maximum_version = maximum
    return context


def test_plain_http_redirects_to_https_except_acme(served: Site) -> None:
    response = get(served.http_port, "/p/digits?invite=abc")
    assert response.status == 301
    assert response.getheader("Location") == f"https://{SERVER_NAME}/p/digits?invite=abc"
    conn = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=5)
    conn.request(
        "GET", f"/.well-known/acme-challenge/{served.acme_token}", headers={"Host": SERVER_NAME}
    )
    challenge = conn.getresponse()
    assert (challenge.status, challenge.read().decode()) == (200, served.acme_token)
    conn.close()


@pytest.mark.parametrize(
    ("maximum", "version"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.MAXIMUM_SUPPORTED, "TLSv1.3")],
    ids=["tls1.2", "tls1.3"],
)
def test_https_speaks_tls_12_and_13(served: Site, maximum: ssl.TLSVersion, version: str) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", served.https_port, timeout=5, context=client_tls(maximum)
    )
    conn.connect()
    assert conn.sock.version() == version
    conn.close()
    assert re.search(r"^\s*ssl_protocols TLSv1\.2 TLSv1\.3;$", SITE.read_text(), re.M)


@pytest.mark.parametrize(
    "path", ["/metrics", "/metrics/", "/metrics?name=x", "//metrics", "/%6Detrics"]
)
def test_metrics_are_not_served_publicly(served: Site, path: str) -> None:
    response = get(served.https_port, path, tls=client_tls())
    assert response.status == 403
    assert response.getheader("Strict-Transport-Security") == "max-age=63072000"
