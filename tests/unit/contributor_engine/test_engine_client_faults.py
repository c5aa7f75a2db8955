"""Answers cut short are network errors: retried, never a raw exception, never a lost answer.

Two seams: a real socket server that cuts or resets a response midway (what requests really
raises), and the real coordinator in process behind a transport that lets the coordinator
handle a request and then loses its answer (so retries meet the coordinator's real
idempotence: the same client for a known key, the live task again, the first receipt).
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.exceptions
from engine_http_script import Reply, ScriptServer

from app.contributor.client import (
    CoordinatorClient,
    LeaseLostError,
    RetryPolicy,
    ServerError,
    UnavailableError,
)
from app.contributor.client.uploads import send_update
from backend.coordinator import Coordinator
from backend.metrics import BackendMetrics, Registry
from backend.testing import IN_PROCESS_URL, WSGIAdapter, small_delta
from backend.wsgi import App
from federated import protocol
from federated.codec import encode_update
from federated.protocol.examples import EXAMPLES
from federated.signing import SigningKey

FAST = RetryPolicy(attempts=5, base_s=0.001, cap_s=0.01)
PROJECT = protocol.to_wire(EXAMPLES[protocol.Project])  # the project "digits"


def ok(obj: object) -> Reply:
    return Reply(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def script_client(server: ScriptServer, **kw: Any) -> CoordinatorClient:
    kw.setdefault("retry", FAST)
    return CoordinatorClient(server.url, "digits", token="tok", **kw)


# --- a real socket, cut or reset -----------------------------------------------------------
def test_a_body_cut_midway_is_retried(script_server: ScriptServer) -> None:
    body = json.dumps({"deadline": 2_000_000_000, "padding": "x" * 5000}).encode()
    replies = iter([Reply(200, body, {"Content-Type": "application/json"}, cut_after=100)] * 2)
    script_server.handler = lambda r: next(replies, Reply(200, body, {}))
    assert script_client(script_server).heartbeat("task-0001") == 2e9
    assert len(script_server.requests) == 3


def test_a_body_cut_after_the_headers_is_retried(script_server: ScriptServer) -> None:
    replies = iter([Reply(200, json.dumps(PROJECT).encode(), {}, cut_after=0)])
    script_server.handler = lambda r: next(replies, ok(PROJECT))
    assert script_client(script_server).get_project() == EXAMPLES[protocol.Project]
    assert len(script_server.requests) == 2


def test_truncated_json_that_fails_to_parse_is_retried(script_server: ScriptServer) -> None:
    # A whole HTTP message whose JSON is cut (a proxy that rewrote the length): not JSON.
    replies = iter([Reply(200, b'{"name": "dig', {"Content-Type": "application/json"})])
    script_server.handler = lambda r: next(replies, ok(PROJECT))
    assert script_client(script_server).get_project() == EXAMPLES[protocol.Project]
    assert len(script_server.requests) == 2


def test_a_cut_error_body_is_retried_then_classified(script_server: ScriptServer) -> None:
    full = json.dumps({"error": {"code": "task_rejected", "message": "ended"}}).encode()
    replies = iter([Reply(409, full[:20], {"Content-Type": "application/json"})])
    script_server.handler = lambda r: next(
        replies, Reply(409, full, {"Content-Type": "application/json"})
    )
    with pytest.raises(LeaseLostError) as info:
        script_client(script_server).heartbeat("task-0001")
    assert info.value.code == "task_rejected"
    assert len(script_server.requests) == 2


def test_a_proxy_error_page_is_not_retried(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: Reply(404, b"<html>no</html>", {"Content-Type": "text/html"})
    with pytest.raises(ServerError) as info:
        script_client(script_server).get_project()
    assert getattr(info.value, "code", None) == "http_error"
    assert len(script_server.requests) == 1


def test_answers_always_cut_end_in_unavailable(script_server: ScriptServer) -> None:
    body = b'{"deadline": 2000000000}'
    script_server.handler = lambda r: Reply(200, body, {}, cut_after=5)
    with pytest.raises(UnavailableError, match="retried later"):
        script_client(script_server).heartbeat("task-0001")
    assert len(script_server.requests) == FAST.attempts


@pytest.mark.parametrize("code", ["task_rejected", "lease_expired", "unknown_task"])
def test_task_gone_codes_are_lease_lost(script_server: ScriptServer, code: str) -> None:
    body = json.dumps({"error": {"code": code, "message": "gone"}}).encode()
    script_server.handler = lambda r: Reply(409, body, {"Content-Type": "application/json"})
    with pytest.raises(LeaseLostError):
        script_client(script_server).heartbeat("task-0001")


class ResettingServer:
    """Answers the first ``resets`` requests with headers and part of the body, then a TCP
    reset (SO_LINGER 0); then whole answers. One request per connection."""

    def __init__(self, body: bytes, resets: int) -> None:
        self.body, self.resets, self.requests = body, resets, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                if self.requests <= self.resets:
                    conn.sendall(head + self.body[: len(self.body) // 2])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    conn.sendall(head + self.body)

    def close(self) -> None:
        self.sock.close()


def test_a_reset_mid_body_is_retried() -> None:
    server = ResettingServer(json.dumps({**PROJECT, "pad": "y" * 20000}).encode(), 2)
    try:
        c = CoordinatorClient(server.url, "digits", retry=FAST)
        assert c.get_project().name == "digits"
        assert server.requests == 3
    finally:
        server.close()


# --- the real coordinator in process, answers lost after it acted --------------------------
Fault = Callable[[], BaseException]
FAULTS: dict[str, Fault] = {
    "chunked_encoding": lambda: requests.exceptions.ChunkedEncodingError(
        urllib3.exceptions.ProtocolError("Connection broken", http.client.IncompleteRead(b"{"))
    ),
    "urllib3_protocol": lambda: urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
    ),
    "incomplete_read": lambda: http.client.IncompleteRead(b'{"dead', 40),
    "reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "truncated_json": lambda: _Truncate(),
}


class _Truncate(Exception):
    """Not raised: tells LosingAdapter to hand over a body cut in half instead."""


class LosingAdapter(WSGIAdapter):
    """Passes every request to the app; then, for each request ``lose`` picks, the answer
    is lost on the way back (raises the fault, or cuts the body in half)."""

    def __init__(self, app: Any, lose: Callable[[requests.PreparedRequest], Fault | None]):
        super().__init__(app)
        self.lose = lose
        self.sent: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = super().send(request, **kwargs)
        self.sent.append(f"{request.method} {request.path_url.split('?')[0]}")
        fault = self.lose(request)
        if fault is not None:
            exc = fault()
            if not isinstance(exc, _Truncate):
                raise exc
            response._content = response.content[: len(response.content) // 2]
        return response


class LoseTimes:
    """Lose the answer to the first ``times`` requests whose path ends with ``suffix``."""

    def __init__(self, suffix: str, fault: Fault, times: int = 1) -> None:
        self.suffix, self.fault, self.left = suffix, fault, times

    def __call__(self, request: requests.PreparedRequest) -> Fault | None:
        if self.left and request.path_url.split("?")[0].endswith(self.suffix):
            self.left -= 1
            return self.fault
        return None


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(
        tmp_path / "backend", start_worker=False, metrics=BackendMetrics.create(Registry())
    )
    c.create_project(
        "digits",
        recipe="digits-mlp",
        hparams={"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32},
        settings={"clients_per_round": 2, "min_updates": 2, "codec": "int8"},
    )
    yield c
    c.close()


def in_process(
    coordinator: Coordinator, lose: Callable[[requests.PreparedRequest], Fault | None]
) -> tuple[CoordinatorClient, LosingAdapter]:
    adapter = LosingAdapter(App(coordinator, rate=None), lose)
    session = requests.Session()
    session.mount(IN_PROCESS_URL, adapter)
    project_key = coordinator.project("digits").public_key
    c = CoordinatorClient(
        IN_PROCESS_URL,
        "digits",
        insecure=True,
        retry=FAST,
        session=session,
        project_public_key_b64=project_key,
    )
    return c, adapter


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_lost_join_answer_rejoins_with_a_fresh_challenge(
    coordinator: Coordinator, fault: str
) -> None:
    c, adapter = in_process(coordinator, LoseTimes("/join", FAULTS[fault], times=2))
    key = SigningKey.generate()
    answer = c.join(key, display_name="ada")
    assert adapter.sent.count("POST /api/v1/projects/digits/join") == 3
    assert adapter.sent.count("POST /api/v1/projects/digits/challenge") == 3  # one per join
    project = coordinator.project("digits")
    with coordinator.store.read() as tx:
        clients = tx.clients(project.id)
    assert [cl.id for cl in clients] == [answer.client_id]  # one identity, not three
    c.token = answer.token
    assert c.me().client_id == answer.client_id  # the last token is the one that works


def test_a_join_that_keeps_failing_says_so(coordinator: Coordinator) -> None:
    c, _ = in_process(coordinator, LoseTimes("/join", FAULTS["reset"], times=99))
    with pytest.raises(UnavailableError, match="could not join"):
        c.join(SigningKey.generate(), display_name="ada")


def joined(coordinator: Coordinator, lose: LoseTimes) -> tuple[CoordinatorClient, SigningKey]:
    c, _ = in_process(coordinator, lambda r: None)
    key = SigningKey.generate()
    answer = c.join(key, display_name="ada")
    c, _ = in_process(coordinator, lose)
    c.token = answer.token
    return c, key


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_lost_lease_answer_returns_the_same_task(coordinator: Coordinator, fault: str) -> None:
    c, _ = joined(coordinator, LoseTimes("/tasks/lease", FAULTS[fault]))
    task = c.lease(wait=0)
    assert task is not None
    again = c.lease(wait=0)
    assert again is not None and again.task_id == task.task_id  # still the one live task


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_lost_upload_receipt_is_recovered_once(coordinator: Coordinator, fault: str) -> None:
    c, key = joined(coordinator, LoseTimes("/update", FAULTS[fault]))
    task = c.lease(wait=0)
    assert task is not None
    assert c.heartbeat(task.task_id) > 0
    project = coordinator.project("digits")
    encoded = encode_update(
        small_delta(coordinator.runtime(project).spec), str(task.manifest["codec"])
    )
    manifest = {
        "project": "digits",
        "task_id": task.task_id,
        "client_id": c.me().client_id,
        "base_digest": task.manifest["base_digest"],
        "payload_digest": encoded.digest,
        "codec": task.manifest["codec"],
        "num_examples": int(task.manifest["max_examples"]),
        "metrics": {"loss_before": 2.3, "loss_after": 1.0},
    }
    receipt = c.upload_update(task.task_id, encoded.payload, manifest, key)
    with coordinator.store.read() as tx:
        updates = tx.updates(project.id)
        client = tx.client(updates[0].client_id)
    assert [u.id for u in updates] == [receipt.update_id]  # stored once
    assert client is not None and client.credit_pending == pytest.approx(
        receipt.credit
    )  # pending until aggregated


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_lost_heartbeat_answer_is_retried(coordinator: Coordinator, fault: str) -> None:
    c, _ = joined(coordinator, LoseTimes("/heartbeat", FAULTS[fault]))
    task = c.lease(wait=0)
    assert task is not None
    assert c.heartbeat(task.task_id) >= task.deadline


def test_an_upload_the_coordinator_got_cut_short_is_sent_again(script_server: ScriptServer) -> None:
    body = json.dumps({"error": {"code": "incomplete_body", "message": "cut"}}).encode()
    replies = iter([Reply(400, body, {"Content-Type": "application/json"})])
    receipt_u1 = protocol.to_wire(EXAMPLES[protocol.Receipt]) | {"update_id": "u1", "credit": 1.0}
    script_server.handler = lambda r: next(replies, ok(receipt_u1))
    manifest = {"project": "digits", "task_id": "task-0001"}
    receipt = script_client(script_server).upload_update(
        "task-0001", b"\x01" * 100, manifest, SigningKey.generate()
    )
    assert receipt.update_id == "u1" and receipt.credit == 1.0
    assert len(script_server.requests) == 2
    assert all(r.body == b"\x01" * 100 for r in script_server.requests)


def test_other_4xx_codes_are_still_not_retried(script_server: ScriptServer) -> None:
    body = json.dumps({"error": {"code": "bad_challenge", "message": "used"}}).encode()
    script_server.handler = lambda r: Reply(400, body, {"Content-Type": "application/json"})
    with pytest.raises(ServerError) as info:
        script_client(script_server).get_project()
    assert getattr(info.value, "code", None) == "bad_challenge"
    assert len(script_server.requests) == 1


def test_a_coordinator_that_cannot_resume_gets_the_cut_upload_whole_again(
    script_server: ScriptServer,
) -> None:
    """A coordinator from before resumable uploads answers the offset question 405: the
    client sends the whole payload again, as it did before, instead of giving up."""
    cut = json.dumps({"error": {"code": "incomplete_body", "message": "cut"}}).encode()
    old = json.dumps({"error": {"code": "method_not_allowed", "message": "PUT only"}}).encode()
    receipt = protocol.to_wire(EXAMPLES[protocol.Receipt]) | {"update_id": "u1", "credit": 1.0}
    replies = iter(
        [
            Reply(400, cut, {"Content-Type": "application/json"}),
            Reply(405, old, {"Content-Type": "application/json"}),
        ]
    )
    script_server.handler = lambda r: next(replies, ok(receipt))
    client = script_client(script_server)
    payload = b"\x02" * 4096
    answer = send_update(
        client,
        f"{script_server.url}/update",
        {"X-Barnraise-Manifest": "m"},
        payload,
        chunk_bytes=1024,
    )
    assert answer["update_id"] == "u1"
    assert [r.method for r in script_server.requests] == ["PUT", "GET", "PUT"]
    assert script_server.requests[-1].body == payload
    assert "Content-Range" not in script_server.requests[-1].headers
