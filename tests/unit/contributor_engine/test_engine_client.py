"""The coordinator client against a real HTTP server on loopback that misbehaves on purpose."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from engine_http_script import Reply, Request, ScriptServer

from app.contributor.client import (
    AuthError,
    Cancelled,
    CoordinatorClient,
    InsecureTransportError,
    IntegrityError,
    LeaseLostError,
    RetryPolicy,
    ThrottledBody,
    UnavailableError,
    UntrustedError,
    check_transport,
)
from federated.protocol import (
    Leaderboard,
    Me,
    ModelManifest,
    Project,
    Receipt,
    TaskManifest,
    to_wire,
)
from federated.protocol.examples import EXAMPLES
from federated.signing import SigningKey, canonical_json, verify

FAST = RetryPolicy(attempts=5, base_s=0.001, cap_s=0.01)
PROJECT_KEY = SigningKey.generate()
PROJECT = to_wire(EXAMPLES[Project])  # the project "digits", as the coordinator sends it


def client(server: ScriptServer, tmp_path: Path | None = None, **kw: object) -> CoordinatorClient:
    kw.setdefault("retry", FAST)
    return CoordinatorClient(
        server.url,
        "digits",
        token="tok",
        project_public_key_b64=PROJECT_KEY.public_key_b64,
        cache_dir=tmp_path,
        **kw,  # type: ignore[arg-type]
    )


def error(status: int, code: str, **headers: str) -> Reply:
    body = json.dumps({"error": {"code": code, "message": f"{code} happened"}}).encode()
    return Reply(status, body, {"Content-Type": "application/json", **headers})


def ok(obj: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def signed_task(key: SigningKey = PROJECT_KEY, project: str = "digits") -> dict[str, object]:
    manifest = {
        **to_wire(EXAMPLES[TaskManifest]),
        "task_id": "task-0001",
        "project": project,
        "base_digest": "0" * 64,
        "deadline": 2_000_000_000,
    }
    return {"manifest": manifest, "signature": key.sign(manifest)}


def test_a_signed_task_this_engine_cannot_read_is_refused(script_server: ScriptServer) -> None:
    body = signed_task()
    manifest = dict(body["manifest"])  # type: ignore[call-overload]
    del manifest["max_examples"]
    script_server.handler = lambda r: ok(
        {"manifest": manifest, "signature": PROJECT_KEY.sign(manifest)}
    )
    with pytest.raises(UntrustedError, match=r"max_examples"):
        client(script_server).lease(wait=0)


# --- transport -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "insecure", "allowed"),
    [
        ("https://barn.example", False, True),
        ("http://127.0.0.1:8080", False, True),
        ("http://localhost:8080", False, True),
        ("http://[::1]:8080", False, True),
        ("http://barn.example", False, False),
        ("http://10.0.0.5", False, False),
        ("http://barn.example", True, True),
        ("ftp://barn.example", True, False),
    ],
)
def test_plain_http_only_to_loopback(url: str, insecure: bool, allowed: bool) -> None:
    if allowed:
        check_transport(url, insecure=insecure)
    else:
        with pytest.raises(InsecureTransportError):
            check_transport(url, insecure=insecure)


def test_insecure_message_says_what_to_do() -> None:
    with pytest.raises(InsecureTransportError, match="--insecure"):
        CoordinatorClient("http://barn.example", "digits")


# --- retries -------------------------------------------------------------------------------
def test_retries_5xx_then_succeeds(script_server: ScriptServer) -> None:
    failures = iter(
        [error(503, "busy", **{"Retry-After": "0"}), error(500, "oops"), error(502, "bad")]
    )
    script_server.handler = lambda r: next(failures, ok(PROJECT))
    assert client(script_server).get_project() == EXAMPLES[Project]
    assert len(script_server.requests) == 4


def test_retry_after_is_honoured(script_server: ScriptServer) -> None:
    failures = iter([error(429, "rate_limited", **{"Retry-After": "0.3"})])
    script_server.handler = lambda r: next(failures, ok(PROJECT))
    slow = RetryPolicy(attempts=3, base_s=0.001, cap_s=5.0)
    started = time.monotonic()
    client(script_server, retry=slow).get_project()
    assert time.monotonic() - started >= 0.3


def test_connection_drops_are_retried(script_server: ScriptServer) -> None:
    failures = iter([None, None])
    script_server.handler = lambda r: next(failures, ok(PROJECT))
    assert client(script_server).get_project().name == "digits"
    assert len(script_server.requests) == 3


def test_gives_up_after_the_attempts(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: error(503, "busy")
    with pytest.raises(UnavailableError, match="retried later"):
        client(script_server).get_project()
    assert len(script_server.requests) == FAST.attempts


def test_4xx_is_not_retried(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: error(401, "bad_token")
    with pytest.raises(AuthError) as info:
        client(script_server).me()
    assert info.value.code == "bad_token"
    assert len(script_server.requests) == 1


def test_lease_lost_codes(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: error(409, "lease_expired")
    with pytest.raises(LeaseLostError):
        client(script_server).heartbeat("task-0001")


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(attempts=10, base_s=1.0, cap_s=8.0)
    for attempt in range(6):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert max(delays) <= min(8.0, 2**attempt)
        assert min(delays) >= 0
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=99.0) == 8.0


def test_cancel_cuts_a_backoff_short(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: error(503, "busy", **{"Retry-After": "30"})
    cancel = threading.Event()
    c = client(script_server, retry=RetryPolicy(attempts=3, base_s=1, cap_s=60), cancel=cancel)
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        c.get_project()
    assert time.monotonic() - started < 5


# --- signatures ----------------------------------------------------------------------------
def test_lease_verifies_the_task(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: ok(signed_task())
    task = client(script_server).lease(wait=0)
    assert task is not None and task.task_id == "task-0001"
    assert script_server.requests[0].path.endswith("/tasks/lease?wait=0")
    assert script_server.requests[0].headers["authorization"] == "Bearer tok"


def test_lease_204_is_none(script_server: ScriptServer) -> None:
    script_server.handler = lambda r: Reply(204, b"", {"Retry-After": "1"})
    assert client(script_server).lease(wait=0) is None


@pytest.mark.parametrize(
    "tamper",
    ["other_key", "changed_field", "other_project", "garbage_signature"],
)
def test_refuses_tasks_not_signed_by_the_pinned_key(
    script_server: ScriptServer, tamper: str
) -> None:
    body = signed_task()
    if tamper == "other_key":
        body = signed_task(SigningKey.generate())
    elif tamper == "changed_field":
        body["manifest"]["base_digest"] = "1" * 64  # type: ignore[index]
    elif tamper == "other_project":
        body = signed_task(project="other")
    else:
        body["signature"] = base64.b64encode(b"x" * 64).decode()
    script_server.handler = lambda r: ok(body)
    with pytest.raises(UntrustedError, match="refused a task|refused a task for project"):
        client(script_server).lease(wait=0)


def test_current_model_is_verified(script_server: ScriptServer) -> None:
    manifest = {"project": "digits", "version": 3, "digest": "a" * 64, "created_at": 1}
    script_server.handler = lambda r: ok(
        {"manifest": manifest, "signature": SigningKey.generate().sign(manifest)}
    )
    with pytest.raises(UntrustedError, match="model"):
        client(script_server).current_model()
    script_server.handler = lambda r: ok(
        {"manifest": manifest, "signature": PROJECT_KEY.sign(manifest)}
    )
    assert client(script_server).current_model() == ModelManifest(
        project="digits", version=3, digest="a" * 64, created_at=1
    )


def test_a_signed_model_of_the_wrong_shape_is_refused(script_server: ScriptServer) -> None:
    manifest = {"project": "digits", "version": -1, "digest": "a" * 64, "created_at": 1}
    script_server.handler = lambda r: ok(
        {"manifest": manifest, "signature": PROJECT_KEY.sign(manifest)}
    )
    with pytest.raises(UntrustedError, match=r"refused a model.*version"):
        client(script_server).current_model()
    script_server.handler = lambda r: ok({"manifest": "nope"})
    with pytest.raises(UntrustedError, match="not a signed manifest"):
        client(script_server).current_model()


# --- answers are read as their protocol messages ---------------------------------------------
@pytest.mark.parametrize(
    ("call", "answer"),
    [
        ("get_project", {**PROJECT, "public_key": "not a key"}),
        ("get_project", {"name": "digits"}),
        ("heartbeat", {"deadline": "soon"}),
        ("heartbeat", {"deadline": 2.5e9}),  # whole seconds
        ("me", {"credit": 1.0}),
        ("leaderboard", {"contributors": [{"name": "Ada"}], "teams": []}),
    ],
)
def test_an_answer_of_the_wrong_shape_is_unavailable_and_not_retried(
    script_server: ScriptServer, call: str, answer: dict[str, object]
) -> None:
    script_server.handler = lambda r: ok(answer)
    c = client(script_server)
    with pytest.raises(UnavailableError, match="unusable answer"):
        if call == "heartbeat":
            c.heartbeat("task-0001")
        else:
            getattr(c, call)()
    assert len(script_server.requests) == 1


def test_answers_are_typed(script_server: ScriptServer) -> None:
    answers = {
        "/me": to_wire(EXAMPLES[Me]),
        "/leaderboard": to_wire(EXAMPLES[Leaderboard]),
        "/heartbeat": {"deadline": 1764220600, "extra": "ignored"},
    }
    script_server.handler = lambda r: ok(next(v for k, v in answers.items() if r.path.endswith(k)))
    c = client(script_server)
    assert c.me() == EXAMPLES[Me]
    assert c.me().rank == 1
    assert c.leaderboard().contributors[0].name == "Ada"
    assert c.heartbeat("task-0001") == 1764220600.0


# --- downloads -----------------------------------------------------------------------------
MODEL = bytes(range(256)) * 4000  # ~1 MB
DIGEST = hashlib.sha256(MODEL).hexdigest()


def range_server(cut_first: int | None) -> tuple[list[int], object]:
    cuts = [cut_first] if cut_first is not None else []

    def handle(r: Request) -> Reply:
        start = 0
        if "range" in r.headers:
            start = int(r.headers["range"].split("=")[1].split("-")[0])
        body = MODEL[start:]
        status = 206 if start else 200
        headers = {"ETag": f'"{DIGEST}"', "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(MODEL) - 1}/{len(MODEL)}"
        if cuts:
            return Reply(status, body, headers, cut_after=cuts.pop())
        return Reply(status, body, headers)

    return cuts, handle


def test_download_resumes_after_a_cut(script_server: ScriptServer, tmp_path: Path) -> None:
    _, handle = range_server(cut_first=300_000)
    script_server.handler = handle  # type: ignore[assignment]
    path = client(script_server, tmp_path).download_model(DIGEST)
    assert path.read_bytes() == MODEL
    assert len(script_server.requests) == 2
    resumed_at = int(script_server.requests[1].headers["range"].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= 300_000  # only the rest was fetched again


def test_download_is_cached_by_digest(script_server: ScriptServer, tmp_path: Path) -> None:
    _, handle = range_server(cut_first=None)
    script_server.handler = handle  # type: ignore[assignment]
    c = client(script_server, tmp_path)
    c.download_model(DIGEST)
    c.download_model(DIGEST)
    assert len(script_server.requests) == 1


def test_download_that_does_not_match_its_digest_is_refused(
    script_server: ScriptServer, tmp_path: Path
) -> None:
    script_server.handler = lambda r: Reply(200, b"not the model")
    with pytest.raises(IntegrityError, match="does not match"):
        client(script_server, tmp_path).download_model(DIGEST)
    assert not list((tmp_path / "models").iterdir())  # nothing half-written is kept


# --- uploads -------------------------------------------------------------------------------
def test_upload_is_signed_and_idempotent(script_server: ScriptServer) -> None:
    receipts: dict[str, dict[str, object]] = {}

    def handle(r: Request) -> Reply:
        manifest_bytes = base64.b64decode(r.headers["x-barnraise-manifest"])
        verify_key = CLIENT_KEY.public_key_b64
        verify(verify_key, json.loads(manifest_bytes), r.headers["x-barnraise-signature"])
        digest = hashlib.sha256(r.body).hexdigest()
        first = digest not in receipts
        receipts.setdefault(
            digest,
            {
                "update_id": f"u{len(receipts)}",
                "task_id": "task-0001",
                "payload_digest": digest,
                "accepted_at": 1764220001,
                "credit": 1.5,
                "credit_unit": "GFLOP",
            },
        )
        if len(script_server.requests) == 1:
            return error(503, "busy", **{"Retry-After": "0"})  # the first attempt fails
        return ok(receipts[digest], 201 if first else 200)

    script_server.handler = handle
    payload = b"\x01" * 50_000
    manifest = {
        "project": "digits",
        "task_id": "task-0001",
        "payload_digest": hashlib.sha256(payload).hexdigest(),
    }
    c = client(script_server)
    first = c.upload_update("task-0001", payload, manifest, CLIENT_KEY)
    again = c.upload_update("task-0001", payload, manifest, CLIENT_KEY)
    assert first == again
    assert first == Receipt(
        update_id="u0",
        task_id="task-0001",
        payload_digest=hashlib.sha256(payload).hexdigest(),
        accepted_at=1764220001,
        credit=1.5,
    )
    assert all(r.body == payload for r in script_server.requests)
    assert script_server.requests[0].headers["content-length"] == str(len(payload))
    assert canonical_json(manifest) == base64.b64decode(
        script_server.requests[0].headers["x-barnraise-manifest"]
    )


CLIENT_KEY = SigningKey.generate()


def test_throttled_body_honours_the_cap() -> None:
    data = b"x" * 40_000
    body = ThrottledBody(data, kbps=1600, chunk=4000)  # 200 kB/s → 0.2 s for 40 kB
    started = time.monotonic()
    assert b"".join(body) == data
    assert time.monotonic() - started >= 0.17
    assert len(body) == len(data)
    unlimited = ThrottledBody(data, kbps=0)
    assert b"".join(unlimited) == data  # and replayable
