"""The bad-input catalogue: each request gets its documented status and error code, and
changes nothing: the current model, the blob folder and every contributor's credit are the
same before and after."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import torch

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.errors import ERROR_STATUS
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request
from federated.codec import encode_update
from federated.signing import SigningKey

API = f"{IN_PROCESS_URL}/api/v1/projects"

pytestmark = pytest.mark.both_stores  # every test with a coordinator, on SQLite and PostgreSQL
CAP = 256 * 1024


@dataclass
class World:
    coordinator: Coordinator
    http: requests.Session
    clock: FakeClock
    join: Callable[..., DemoContributor]
    a: DemoContributor
    b: DemoContributor
    task_a: dict[str, Any]
    task_b: dict[str, Any]
    spec: Any

    def payload(self, value: float = 1e-3, codec: str = "int8") -> bytes:
        return encode_update(small_delta(self.spec, value), codec).payload

    def upload(
        self, who: DemoContributor, task: dict[str, Any], payload: bytes | None = None, **kw: Any
    ) -> requests.Response:
        return upload_request(
            self.http,
            IN_PROCESS_URL,
            project="cat",
            token=who.token,
            key=who.key,
            task=task,
            client_id=who.client_id,
            payload=self.payload() if payload is None else payload,
            **kw,
        )

    def post_json(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> requests.Response:
        return self.http.post(f"{API}/{path}", json=body, headers=headers or {})

    def join_body(
        self, project: str = "cat", key: SigningKey | None = None, **overrides: Any
    ) -> dict[str, Any]:
        key = key or SigningKey.generate()
        challenge = self.http.post(f"{API}/{project}/challenge").json()["challenge"]
        statement = {
            "challenge": challenge,
            "project": project,
            "public_key": key.public_key_b64,
            "purpose": "join",
        }
        body = {
            "display_name": "Eve",
            "team": None,
            "public_key": key.public_key_b64,
            "challenge": challenge,
            "signature": key.sign(statement),
            "invite": None,
        }
        body.update(overrides)
        return body


@pytest.fixture
def world(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> World:
    make_project(
        "cat",
        clients_per_round=2,
        min_updates=2,
        overprovision=1.5,
        lease_s=60.0,
        max_payload_bytes=CAP,
    )
    make_project("club", invite_required=True)
    a, b = join("cat", "Ada"), join("cat", "Bob")
    task_a, task_b = a.lease(0), b.lease(0)
    assert task_a and task_b
    spec = coordinator.runtime(coordinator.project("cat")).spec
    w = World(coordinator, http, clock, join, a, b, task_a, task_b, spec)
    first = w.upload(a, task_a)  # an accepted update, so there is credit to keep unchanged
    assert first.status_code == 201, first.text
    return w


def snapshot(c: Coordinator) -> dict[str, Any]:
    with c.store.read() as tx:
        projects = {p.name: (p.current_version, p.status) for p in tx.projects()}
        models = {p.name: [v.digest for v in tx.versions(p.id)] for p in tx.projects()}
        credit = {
            cl.id: (cl.credit, cl.accepted, cl.recent_sum)
            for p in tx.projects()
            for cl in tx.clients(p.id)
        }
        updates = {
            p.name: [(u.id, u.payload_digest) for u in tx.updates(p.id)] for p in tx.projects()
        }
    return {
        "projects": projects,
        "models": models,
        "credit": credit,
        "updates": updates,
        "blobs": sorted(c.blobs.digests()),
        "tmp": sorted(p.name for p in c.blobs.tmp_dir.iterdir()),
    }


def poison_first_f32(payload: bytes) -> bytes:
    """The payload with the first float32 value of its first F32 tensor set to NaN."""
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + n + header[name]["data_offsets"][0]
    return payload[:start] + struct.pack("<f", math.nan) + payload[start + 4 :]


Act = Callable[[], requests.Response]


def bad_update_signature(w: World) -> Act:
    other = SigningKey.generate()
    return lambda: upload_request(
        w.http,
        IN_PROCESS_URL,
        project="cat",
        token=w.b.token,
        key=other,
        task=w.task_b,
        client_id=w.b.client_id,
        payload=w.payload(),
    )


def replayed_task_other_payload(w: World) -> Act:
    return lambda: w.upload(w.a, w.task_a, w.payload(2e-3))


def foreign_task(w: World) -> Act:
    return lambda: upload_request(
        w.http,
        IN_PROCESS_URL,
        project="cat",
        token=w.a.token,
        key=w.a.key,
        task=w.task_b,
        client_id=w.a.client_id,
        payload=w.payload(),
    )


def expired_lease(w: World) -> Act:
    w.clock.advance(61)
    return lambda: w.upload(w.b, w.task_b)


def heartbeat_after_expiry(w: World) -> Act:
    w.clock.advance(61)
    return lambda: w.http.post(
        f"{API}/cat/tasks/{w.task_b['task_id']}/heartbeat",
        headers={"Authorization": f"Bearer {w.b.token}"},
    )


def wrong_base_version(w: World) -> Act:
    c = w.join("cat", "Cy")
    task_c = c.lease(0)
    assert task_c is not None
    assert w.upload(w.b, w.task_b).status_code == 201
    assert w.coordinator.worker.run_once()  # round 0 closes: version 1, Cy's lease cancelled
    return lambda: w.upload(c, task_c)


def wrong_shape(w: World) -> Act:
    bad = {
        k: torch.zeros(3, 3) if i == 0 else v
        for i, (k, v) in enumerate(small_delta(w.spec).items())
    }
    return lambda: w.upload(w.b, w.task_b, encode_update(bad, "int8").payload)


def nan_payload(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, poison_first_f32(w.payload()))


def norm_too_large(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, w.payload(50.0))


def wrong_codec(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, w.payload(codec="f32"))


def garbage_payload(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, b"\x00not safetensors at all")


def digest_mismatch(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, manifest_overrides={"payload_digest": "0" * 64})


def manifest_mismatch(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, manifest_overrides={"base_digest": "1" * 64})


def zero_examples(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, num_examples=0)


def oversize_update(w: World) -> Act:
    body = w.payload() + b"\0" * CAP
    return lambda: w.upload(w.b, w.task_b, body)


def oversize_json(w: World) -> Act:
    return lambda: w.post_json("cat/join", {"display_name": "x" * (70 * 1024)})


def malformed_json(w: World) -> Act:
    return lambda: w.http.post(
        f"{API}/cat/join", data=b"{not json", headers={"Content-Type": "application/json"}
    )


def nan_in_json(w: World) -> Act:
    return lambda: w.http.post(
        f"{API}/cat/join",
        data=b'{"display_name": NaN}',
        headers={"Content-Type": "application/json"},
    )


def manifest_not_base64(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, headers={"X-Barnraise-Manifest": "***"})


def missing_manifest_headers(w: World) -> Act:
    return lambda: w.http.put(
        f"{API}/cat/tasks/{w.task_b['task_id']}/update",
        data=w.payload(),
        headers={
            "Authorization": f"Bearer {w.b.token}",
            "Content-Type": "application/octet-stream",
        },
    )


def unknown_project(w: World) -> Act:
    return lambda: w.http.post(f"{API}/nosuch/challenge")


def unknown_task(w: World) -> Act:
    task = dict(w.task_b, task_id="AAAAAAAAAAAAAAAAAAAAAA")
    return lambda: w.upload(w.b, task)


def missing_token(w: World) -> Act:
    return lambda: w.http.post(f"{API}/cat/tasks/lease")


def bad_token(w: World) -> Act:
    return lambda: w.http.post(
        f"{API}/cat/tasks/lease", headers={"Authorization": f"Bearer {w.b.client_id}.wrongsecret"}
    )


def token_of_another_project(w: World) -> Act:
    outsider = w.join("club", "Zed", invite=w.coordinator.create_invite("club"))
    return lambda: w.http.post(
        f"{API}/cat/tasks/lease", headers={"Authorization": f"Bearer {outsider.token}"}
    )


def dotdot_task_id(w: World) -> Act:
    return lambda: w.upload(w.b, dict(w.task_b, task_id="%2E%2E"))


def encoded_traversal_task_id(w: World) -> Act:
    return lambda: w.upload(w.b, dict(w.task_b, task_id="..%2F..%2Fblobs"))


def dotdot_project(w: World) -> Act:
    return lambda: w.http.post(f"{API}/%2E%2E/join", json={})


def bad_digest(w: World) -> Act:
    return lambda: w.http.get(f"{API}/cat/models/..%2F..%2Fkeys%2Fcat.ed25519")


def wrong_content_type_update(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, headers={"Content-Type": "application/json"})


def wrong_content_type_join(w: World) -> Act:
    return lambda: w.http.post(
        f"{API}/cat/join", data=json.dumps(w.join_body()), headers={"Content-Type": "text/plain"}
    )


def bad_invite(w: World) -> Act:
    return lambda: w.post_json("club/join", w.join_body("club", invite="not-a-real-code"))


def invite_missing(w: World) -> Act:
    return lambda: w.post_json("club/join", w.join_body("club"))


def reused_challenge(w: World) -> Act:
    key = SigningKey.generate()
    body = w.join_body(key=key)
    assert w.post_json("cat/join", body).status_code == 201
    return lambda: w.post_json("cat/join", body)


def expired_challenge(w: World) -> Act:
    body = w.join_body()
    w.clock.advance(301)
    return lambda: w.post_json("cat/join", body)


def join_bad_signature(w: World) -> Act:
    body = w.join_body()
    body["signature"] = SigningKey.generate().sign({"challenge": body["challenge"]})
    return lambda: w.post_json("cat/join", body)


def join_short_public_key(w: World) -> Act:
    return lambda: w.post_json(
        "cat/join", w.join_body(public_key=base64.b64encode(b"x" * 31).decode())
    )


def join_empty_name(w: World) -> Act:
    return lambda: w.post_json("cat/join", w.join_body(display_name="   "))


def method_not_allowed(w: World) -> Act:
    return lambda: w.http.get(f"{API}/cat/join")


def lease_paused(w: World) -> Act:
    w.coordinator.set_status("cat", "paused")
    return lambda: w.http.post(
        f"{API}/cat/tasks/lease", headers={"Authorization": f"Bearer {w.b.token}"}
    )


def lease_closed(w: World) -> Act:
    w.coordinator.set_status("cat", "closed")
    return lambda: w.http.post(
        f"{API}/cat/tasks/lease", headers={"Authorization": f"Bearer {w.b.token}"}
    )


def range_past_end(w: World) -> Act:
    digest = w.task_b["base_digest"]
    return lambda: w.http.get(f"{API}/cat/models/{digest}", headers={"Range": "bytes=999999999-"})


def unknown_model_digest(w: World) -> Act:
    return lambda: w.http.get(f"{API}/cat/models/{'e' * 64}")


def bad_wait(w: World) -> Act:
    return lambda: w.http.post(
        f"{API}/cat/tasks/lease?wait=soon", headers={"Authorization": f"Bearer {w.b.token}"}
    )


def manifest_signed_but_not_json(w: World) -> Act:
    raw = b"not json"
    headers = {
        "X-Barnraise-Manifest": base64.b64encode(raw).decode(),
        "X-Barnraise-Signature": w.b.key.sign_bytes(raw),
    }
    return lambda: w.upload(w.b, w.task_b, headers=headers)


def _chunk_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def resume_malformed_range(w: World) -> Act:
    return lambda: w.upload(w.b, w.task_b, headers={"Content-Range": "bytes=0-"})


def resume_without_digest(w: World) -> Act:
    n = len(w.payload())
    return lambda: w.upload(w.b, w.task_b, headers={"Content-Range": f"bytes 0-{n - 1}/{n}"})


def resume_malformed_digest(w: World) -> Act:
    n = len(w.payload())
    headers = {"Content-Range": f"bytes 0-{n - 1}/{n}", "Content-Digest": "sha-256=:nope:"}
    return lambda: w.upload(w.b, w.task_b, headers=headers)


def resume_wrong_digest(w: World) -> Act:
    payload = w.payload()
    n = len(payload)
    headers = {"Content-Range": f"bytes 0-{n - 1}/{n}", "Content-Digest": _chunk_digest(b"x")}
    return lambda: w.upload(w.b, w.task_b, payload, headers=headers)


def resume_past_what_is_held(w: World) -> Act:
    part = w.payload()[10:]
    n = len(part) + 10
    headers = {"Content-Range": f"bytes 10-{n - 1}/{n}", "Content-Digest": _chunk_digest(part)}
    return lambda: w.upload(w.b, w.task_b, part, headers=headers)


def resume_total_over_the_cap(w: World) -> Act:
    part = w.payload()
    headers = {
        "Content-Range": f"bytes 0-{len(part) - 1}/{CAP + 1}",
        "Content-Digest": _chunk_digest(part),
    }
    return lambda: w.upload(w.b, w.task_b, part, headers=headers)


def progress_unsigned(w: World) -> Act:
    return lambda: w.http.get(
        f"{API}/cat/tasks/{w.task_b['task_id']}/update",
        headers={"Authorization": f"Bearer {w.b.token}"},
    )


CASES: list[tuple[Callable[[World], Act], int, str]] = [
    (bad_update_signature, 403, "bad_signature"),
    (replayed_task_other_payload, 409, "task_already_answered"),
    (foreign_task, 403, "not_your_task"),
    (expired_lease, 410, "lease_expired"),
    (heartbeat_after_expiry, 410, "lease_expired"),
    (wrong_base_version, 409, "wrong_base"),
    (wrong_shape, 422, "shape_mismatch"),
    (nan_payload, 422, "non_finite"),
    (norm_too_large, 422, "norm_too_large"),
    (wrong_codec, 422, "unknown_codec"),
    (garbage_payload, 422, "bad_payload"),
    (digest_mismatch, 422, "digest_mismatch"),
    (manifest_mismatch, 422, "manifest_mismatch"),
    (zero_examples, 422, "manifest_mismatch"),
    (oversize_update, 413, "payload_too_large"),
    (oversize_json, 413, "payload_too_large"),
    (malformed_json, 400, "bad_json"),
    (nan_in_json, 400, "bad_json"),
    (manifest_not_base64, 400, "bad_request"),
    (manifest_signed_but_not_json, 400, "bad_json"),
    (missing_manifest_headers, 400, "bad_request"),
    (unknown_project, 404, "unknown_project"),
    (unknown_task, 404, "unknown_task"),
    (missing_token, 401, "missing_token"),
    (bad_token, 401, "bad_token"),
    (token_of_another_project, 401, "bad_token"),
    (dotdot_task_id, 400, "bad_id"),
    (encoded_traversal_task_id, 404, "not_found"),
    (dotdot_project, 400, "bad_id"),
    (bad_digest, 404, "not_found"),
    (wrong_content_type_update, 415, "unsupported_media_type"),
    (wrong_content_type_join, 415, "unsupported_media_type"),
    (bad_invite, 403, "bad_invite"),
    (invite_missing, 403, "invite_required"),
    (reused_challenge, 400, "bad_challenge"),
    (expired_challenge, 400, "bad_challenge"),
    (join_bad_signature, 403, "bad_signature"),
    (join_short_public_key, 400, "bad_request"),
    (join_empty_name, 400, "bad_request"),
    (method_not_allowed, 405, "method_not_allowed"),
    (lease_paused, 503, "project_paused"),
    (lease_closed, 410, "project_closed"),
    (range_past_end, 416, "range_not_satisfiable"),
    (unknown_model_digest, 404, "not_found"),
    (bad_wait, 400, "bad_request"),
    (resume_malformed_range, 400, "bad_content_range"),
    (resume_without_digest, 400, "bad_content_digest"),
    (resume_malformed_digest, 400, "bad_content_digest"),
    (resume_wrong_digest, 400, "chunk_digest_mismatch"),
    (resume_past_what_is_held, 409, "upload_offset_mismatch"),
    (resume_total_over_the_cap, 413, "payload_too_large"),
    (progress_unsigned, 400, "bad_request"),
]


@pytest.mark.parametrize(("case", "status", "code"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_gets_its_error_and_changes_nothing(
    world: World, case: Callable[[World], Act], status: int, code: str
) -> None:
    act = case(world)
    before = snapshot(world.coordinator)
    response = act()
    after = snapshot(world.coordinator)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert ERROR_STATUS[code] == status  # the documented table agrees
    if status in (429, 503):
        assert int(response.headers["Retry-After"]) >= 1
    assert after == before


def _documented_statuses(method: str, path: str) -> set[str]:
    from urllib.parse import unquote, urlsplit

    from backend.openapi import build_openapi

    doc = build_openapi()
    path = unquote(urlsplit(path).path)
    for template, item in doc["paths"].items():
        pattern = "^" + re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return set(item[method.lower()]["responses"])
    return set()


@pytest.mark.parametrize(("case", "status", "code"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_error_status_is_in_the_openapi_document(
    world: World, case: Callable[[World], Act], status: int, code: str
) -> None:
    response = case(world)()
    request = response.request
    documented = _documented_statuses(str(request.method), str(request.url))
    if not documented:
        pytest.skip(f"{request.url} has no documented operation (a path trick or a wrong method)")
    assert str(status) in documented, (
        f"{request.method} {request.url}: {status} not in {sorted(documented)}"
    )


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 20
