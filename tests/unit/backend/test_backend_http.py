"""Request reading limits, credit maths, TLS serving, the gunicorn factory, and no 5xx on junk."""

from __future__ import annotations

import datetime
import io
import ipaddress
import math
import ssl
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from backend import credit
from backend.errors import HTTPError, PayloadTooLarge
from backend.http import Request
from backend.settings import JSON_BODY_LIMIT
from backend.testing import IN_PROCESS_URL


def _request(body: bytes, headers: dict[str, str] | None = None, *, length: bool = True) -> Request:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "wsgi.input": io.BytesIO(body),
    }
    if length:
        environ["CONTENT_LENGTH"] = str(len(body))
    for k, v in (headers or {}).items():
        environ[
            "CONTENT_TYPE" if k.lower() == "content-type" else "HTTP_" + k.upper().replace("-", "_")
        ] = v
    return Request(environ)


def test_json_cap_without_content_length_stops_reading() -> None:
    body = b'{"a": "' + b"x" * JSON_BODY_LIMIT + b'"}'
    with pytest.raises(PayloadTooLarge):
        _request(body, {"Content-Type": "application/json"}, length=False).json_object()


def test_stream_to_file_hashes_and_caps(tmp_path: Path) -> None:
    import hashlib
    import os

    data = os.urandom(300_000)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    digest, size = _request(data, length=False).stream_to_file(fd, 1_000_000)
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert (tmp_path / "f").read_bytes() == data
    fd = os.open(tmp_path / "g", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(PayloadTooLarge):
        _request(data, length=False).stream_to_file(fd, 100_000)


def test_truncated_body_is_bad_request(tmp_path: Path) -> None:
    import os

    req = _request(b"abc")
    req.environ["CONTENT_LENGTH"] = "10"
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(HTTPError) as info:
        req.stream_to_file(fd, 100)
    assert info.value.status == 400


def test_credit_is_examples_times_flops_in_gflop_capped() -> None:
    assert credit.update_credit(100, 1000, 2e6) == pytest.approx(0.2)
    assert credit.update_credit(5000, 1000, 2e6) == pytest.approx(2.0)  # capped at max_examples


def test_recent_average_halves_in_a_week_and_converges_to_daily_credit() -> None:
    week = 7 * 86_400.0
    assert credit.decayed(10.0, 0.0, week) == pytest.approx(5.0)
    total, t = 0.0, 0.0
    for _day in range(200):  # 1 GFLOP a day for 200 days
        total = credit.add_credit(total, t, 1.0, t + 86_400.0)
        t += 86_400.0
    assert credit.recent_average(total, t, t) == pytest.approx(1.0, rel=0.06)
    assert math.isclose(credit.recent_average(0.0, 0.0, t), 0.0)


def test_app_from_env_reads_barnraise_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.wsgi import app_from_env

    monkeypatch.setenv("BARNRAISE_DATA", str(tmp_path / "env-data"))
    app = app_from_env()
    try:
        assert app.coordinator.data_dir == tmp_path / "env-data"
        assert (tmp_path / "env-data" / "barnraise.sqlite3").exists()
    finally:
        app.close()


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_serves_tls(tmp_path: Path) -> None:
    from backend.server import bound_port, make_server, start_in_thread
    from backend.wsgi import create_app

    cert, key = _self_signed(tmp_path)
    app = create_app(tmp_path / "data")
    server = make_server(app, "127.0.0.1", 0, threads=4, tls_cert=cert, tls_key=key)
    start_in_thread(server)
    try:
        r = requests.get(f"https://127.0.0.1:{bound_port(server)}/healthz", verify=cert, timeout=10)
        assert r.json() == {"status": "ok", "aggregation_overdue": [], "storage_full": False}
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(
                f"https://127.0.0.1:{bound_port(server)}/healthz", timeout=10
            )  # unknown CA
    finally:
        server.stop()
        app.close()
    assert ssl.OPENSSL_VERSION


_SEGMENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"),
    min_size=0,
    max_size=70,
)
_TEMPLATES = [
    ("POST", "/api/v1/projects/{0}/challenge"),
    ("POST", "/api/v1/projects/{0}/join"),
    ("POST", "/api/v1/projects/{0}/tasks/lease"),
    ("POST", "/api/v1/projects/{0}/tasks/{1}/heartbeat"),
    ("POST", "/api/v1/projects/{0}/tasks/{1}/release"),
    ("PUT", "/api/v1/projects/{0}/tasks/{1}/update"),
    ("GET", "/api/v1/projects/{0}/models/{1}"),
    ("GET", "/api/v1/projects/{0}"),
    ("GET", "/api/v1/projects/{0}/me"),
    ("GET", "/p/{0}"),
]


@pytest.fixture(scope="module")
def junk_target(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from backend.coordinator import Coordinator
    from backend.testing import wsgi_session
    from backend.wsgi import App

    c = Coordinator(tmp_path_factory.mktemp("junk"), start_worker=False)
    c.create_project("digits", recipe="digits-mlp", hparams={"num_shards": 2, "hidden": 8})
    yield wsgi_session(App(c, rate=None))
    c.close()


@given(
    template=st.sampled_from(_TEMPLATES),
    a=st.one_of(st.just("digits"), _SEGMENT),
    b=_SEGMENT,
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda x: (
                st.lists(x, max_size=4) | st.dictionaries(st.text(max_size=10), x, max_size=4)
            ),
            max_leaves=10,
        ).map(lambda v: __import__("json").dumps(v).encode()),
    ),
    ctype=st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]),
    auth=st.sampled_from([None, "Bearer x", "Bearer AAAAAAAA.x", "Basic zzz", "Bearer "]),
)
def test_junk_requests_never_get_a_5xx(
    junk_target: requests.Session,
    template: tuple[str, str],
    a: str,
    b: str,
    body: bytes,
    ctype: str,
    auth: str | None,
) -> None:
    from urllib.parse import quote

    method, path = template
    url = IN_PROCESS_URL + path.format(quote(a, safe=""), quote(b, safe=""))
    headers = {"Content-Type": ctype} if ctype else {}
    if auth:
        headers["Authorization"] = auth
    r = junk_target.request(method, url, data=body, headers=headers)
    assert r.status_code < 500, (method, url, r.status_code, r.text[:300])


def test_the_app_is_a_conforming_wsgi_application(tmp_path: Path) -> None:
    """wsgiref's validator checks every call (what gunicorn or any WSGI server relies on)."""
    import warnings
    from wsgiref.validate import validator

    from backend.coordinator import Coordinator
    from backend.testing import wsgi_session
    from backend.wsgi import App

    c = Coordinator(tmp_path / "d", start_worker=False)
    try:
        c.create_project("digits", recipe="digits-mlp", hparams={"num_shards": 2, "hidden": 8})
        http = wsgi_session(validator(App(c, rate=None)))
        api = f"{IN_PROCESS_URL}/api/v1/projects"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the validator warns on protocol slips
            digest = http.get(f"{api}/digits/models/current").json()["manifest"]["digest"]
            assert http.get(f"{api}/digits/models/{digest}").status_code == 200
            assert (
                http.get(
                    f"{api}/digits/models/{digest}", headers={"Range": "bytes=0-9"}
                ).status_code
                == 206
            )
            assert (
                http.get(
                    f"{api}/digits/models/{digest}", headers={"If-None-Match": f'"{digest}"'}
                ).status_code
                == 304
            )
            assert http.head(f"{api}/digits/models/{digest}").status_code == 200
            assert (
                http.post(
                    f"{api}/digits/join", data=b"{", headers={"Content-Type": "application/json"}
                ).status_code
                == 400
            )
            assert http.get(f"{IN_PROCESS_URL}/p/digits").status_code == 200
            assert http.get(f"{IN_PROCESS_URL}/metrics").status_code == 200
    finally:
        c.close()
