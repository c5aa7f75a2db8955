"""Helpers for tests, benchmarks and tools: an in-process HTTP transport, a settable clock.

``wsgi_session(app)`` is a ``requests.Session`` whose requests to ``IN_PROCESS_URL`` call
the WSGI app directly (no socket), so the same client code runs in process and over a
real loopback connection.
"""

from __future__ import annotations

import io
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from backend.store import ProjectRecord

IN_PROCESS_URL = "http://backend.test"


class WSGIAdapter(BaseAdapter):
    """A requests transport that calls a WSGI application in this process."""

    def __init__(self, app: Callable[..., Any]) -> None:
        super().__init__()
        self.app = app

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = urlsplit(str(request.url))
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            body = b"".join(body)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(url.path, encoding="latin-1"),
            "QUERY_STRING": url.query,
            "SERVER_NAME": url.hostname or "backend.test",
            "SERVER_PORT": str(url.port or 80),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": url.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key == "CONTENT_LENGTH":
                environ["CONTENT_LENGTH"] = value
            else:
                environ["HTTP_" + key] = value
        if body and "CONTENT_LENGTH" not in environ:
            environ["CONTENT_LENGTH"] = str(len(body))
        if "HTTP_HOST" not in environ:
            environ["HTTP_HOST"] = url.netloc
        captured: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            captured["status"] = status
            captured["headers"] = headers

        chunks = self.app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        response = requests.Response()
        response.status_code = int(captured["status"].split(" ", 1)[0])
        response.reason = captured["status"].split(" ", 1)[1] if " " in captured["status"] else ""
        response.headers = CaseInsensitiveDict(captured["headers"])
        response._content = content
        response.url = str(request.url)
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def wsgi_session(app: Callable[..., Any], base_url: str = IN_PROCESS_URL) -> requests.Session:
    session = requests.Session()
    session.mount(base_url, WSGIAdapter(app))
    return session


class FakeClock:
    """A clock tests move by hand: ``clock()`` returns the time, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_764_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_healthy(base_url: str, timeout: float = 30.0) -> None:
    """Poll ``/healthz`` until it answers 200; raise TimeoutError otherwise."""
    give_up = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < give_up:
        try:
            if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{base_url}/healthz did not answer within {timeout} s ({last})")


_deltas_made = itertools.count(1)


def small_delta(spec: Any, value: float = 1e-3, key: str | None = None) -> dict[str, Any]:
    """A valid, small update delta for a model of ``spec`` (name -> (shape, dtype)): every
    entry ``value`` but the first of each tensor, which differs from call to call (or from
    ``key`` to ``key``: the same key, the same delta), so that two tasks never send the same
    payload (the coordinator refuses a payload sent twice)."""
    import hashlib

    import torch

    n = next(_deltas_made) if key is None else int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    # A million steps apart by 1e-6 of ``value``: still a distinct float32 int8 scale each.
    bump = value * (1 + n % 1_000_000) / 1_000_000
    delta = {}
    for name, (shape, _dtype) in spec.items():
        tensor = torch.full(tuple(shape), value, dtype=torch.float32)
        tensor.view(-1)[0] += bump
        delta[name] = tensor
    return delta


def upload_request(
    session: requests.Session,
    base_url: str,
    *,
    project: str,
    token: str,
    key: Any,
    task: dict[str, Any],
    client_id: str,
    payload: bytes,
    manifest_overrides: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    num_examples: int | None = None,
) -> requests.Response:
    """PUT an update with a manifest signed by ``key``; returns the raw response."""
    import base64
    import hashlib

    from federated import protocol
    from federated.signing import canonical_json

    # Built as the protocol's type, then overridden as plain JSON: tests send bad ones too.
    manifest = protocol.to_wire(
        protocol.UpdateManifest(
            project=project,
            task_id=task["task_id"],
            client_id=client_id,
            base_digest=task["base_digest"],
            payload_digest=hashlib.sha256(payload).hexdigest(),
            codec=task["codec"],
            num_examples=num_examples if num_examples is not None else int(task["max_examples"]),
            metrics={"loss_before": 2.3, "loss_after": 1.0},
        )
    )
    manifest.update(manifest_overrides or {})
    raw = canonical_json(manifest)
    all_headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/octet-stream",
        "X-Barnraise-Manifest": base64.b64encode(raw).decode("ascii"),
        "X-Barnraise-Signature": key.sign_bytes(raw),
    }
    all_headers.update(headers or {})
    url = f"{base_url}/api/v1/projects/{project}/tasks/{task['task_id']}/update"
    return session.put(url, data=payload, headers=all_headers, timeout=60)


def upload_small_delta(
    session: requests.Session,
    coordinator: Any,
    who: Any,
    task: dict[str, Any],
    *,
    base_url: str = IN_PROCESS_URL,
    value: float = 1e-3,
) -> requests.Response:
    """Upload, as ``who`` (a joined ``DemoContributor``), an int8 ``small_delta`` for
    ``task``, distinct per task so the duplicate screen never refuses it."""
    from federated.codec import encode_update

    spec = coordinator.runtime(coordinator.project(task["project"])).spec
    return upload_request(
        session,
        base_url,
        project=task["project"],
        token=who.token,
        key=who.key,
        task=task,
        client_id=who.client_id,
        payload=encode_update(small_delta(spec, value, task["task_id"]), "int8").payload,
    )


def bare_project_record(name: str) -> ProjectRecord:
    """A minimal project row for store tests (digits-mlp, FedAvg, open, version 0)."""
    return ProjectRecord(
        id=0,
        name=name,
        description="",
        recipe="digits-mlp",
        recipe_version=1,
        hparams={},
        strategy={"name": "fedavg"},
        settings={},
        status="open",
        current_version=0,
        public_key="k",
        created_at=0.0,
    )
