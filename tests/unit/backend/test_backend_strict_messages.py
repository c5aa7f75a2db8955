"""Strict messages (issue 10): what breaks the contract is refused by name and changes nothing.

A join request and an update manifest each arrive with an unknown field, a duplicate key
(`{"num_examples": 10, …, "num_examples": 100000}`: two parsers could read two values) and a
non-canonical encoding. Each answer is a 4xx whose message names the problem, and neither a
new member nor an accepted update comes of it."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.testing import IN_PROCESS_URL, small_delta
from federated.codec import encode_update
from federated.signing import SigningKey, canonical_json

API = f"{IN_PROCESS_URL}/api/v1/projects/digits"


def join_body(http: requests.Session, key: SigningKey) -> dict[str, Any]:
    challenge = http.post(f"{API}/challenge").json()["challenge"]
    statement = {
        "challenge": challenge,
        "project": "digits",
        "public_key": key.public_key_b64,
        "purpose": "join",
    }
    return {
        "display_name": "Mallory",
        "public_key": key.public_key_b64,
        "challenge": challenge,
        "signature": key.sign(statement),
    }


def members(coordinator: Coordinator) -> int:
    board = coordinator.leaderboard(coordinator.project("digits"))
    return len(board["contributors"])


def post_raw(http: requests.Session, raw: bytes) -> requests.Response:
    return http.post(f"{API}/join", data=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("spoil", "status", "code", "named"),
    [
        (lambda raw: raw[:-1] + b',"admin":true}', 400, "bad_request", "unknown field `admin`"),
        (
            lambda raw: raw.replace(
                b'"display_name":"Mallory"', b'"display_name":"Mallory","display_name":"Ada"'
            ),
            400,
            "bad_json",
            "duplicate key 'display_name'",
        ),
        (lambda raw: raw.decode().encode("utf-16"), 400, "bad_json", "not UTF-8"),
        (lambda raw: raw.replace(b'"Mallory"', b'"Mallory\xff"'), 400, "bad_json", "not UTF-8"),
    ],
    ids=["unknown-field", "duplicate-key", "utf-16", "invalid-utf-8"],
)
def test_a_join_request_that_breaks_the_contract_is_refused(
    coordinator: Coordinator,
    make_project: Any,
    http: requests.Session,
    spoil: Any,
    status: int,
    code: str,
    named: str,
) -> None:
    make_project("digits")
    before = members(coordinator)
    raw = canonical_json(join_body(http, SigningKey.generate()))
    r = post_raw(http, spoil(raw))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and named in error["message"]
    assert members(coordinator) == before
    ok = post_raw(http, raw)  # the same challenge, unspoiled: it was not used up
    assert ok.status_code == 201, ok.text


def spoiled_upload(
    http: requests.Session, coordinator: Coordinator, who: DemoContributor, spoil: Any
) -> requests.Response:
    """PUT a real update whose canonical manifest ``spoil`` changed, validly signed."""
    task = who.lease(0)
    assert task is not None
    spec = coordinator.runtime(coordinator.project("digits")).spec
    payload = encode_update(small_delta(spec), "int8").payload
    manifest = {
        "project": "digits",
        "task_id": task["task_id"],
        "client_id": who.client_id,
        "base_digest": task["base_digest"],
        "payload_digest": hashlib.sha256(payload).hexdigest(),
        "codec": task["codec"],
        "num_examples": 10,
        "metrics": {"loss_after": 0.5},
    }
    raw = spoil(canonical_json(manifest))
    return http.put(
        f"{API}/tasks/{task['task_id']}/update",
        data=payload,
        headers={
            "Authorization": f"Bearer {who.token}",
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(raw).decode(),
            "X-Barnraise-Signature": who.key.sign_bytes(raw),  # a valid signature over them
        },
    )


@pytest.mark.parametrize(
    ("spoil", "status", "code", "named"),
    [
        (
            lambda raw: raw[:-1] + b',"zz_bonus":1}',
            422,
            "manifest_mismatch",
            "unknown field `zz_bonus`",
        ),
        (
            lambda raw: raw.replace(
                b'"num_examples":10', b'"num_examples":10,"num_examples":100000'
            ),
            400,
            "bad_json",
            "duplicate key 'num_examples'",
        ),
        (
            lambda raw: json.dumps(json.loads(raw), indent=1).encode(),
            400,
            "bad_json",
            "not in canonical form",
        ),
        (
            lambda raw: (
                json.dumps(
                    json.loads(raw), ensure_ascii=True, sort_keys=True, separators=(",", ":")
                )
                .replace('"digits"', '"\\u0064igits"')
                .encode()
            ),
            400,
            "bad_json",
            "not in canonical form",
        ),
    ],
    ids=["unknown-field", "duplicate-key", "spaces", "escaped-letters"],
)
def test_an_update_manifest_that_breaks_the_contract_is_refused(
    coordinator: Coordinator,
    make_project: Any,
    http: requests.Session,
    join: Any,
    spoil: Any,
    status: int,
    code: str,
    named: str,
) -> None:
    make_project("digits")
    who = join("digits", "Mallory")
    r = spoiled_upload(http, coordinator, who, spoil)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and named in error["message"]
    stats = coordinator.stats(coordinator.project("digits"))
    assert stats["pending_updates"] == 0
    assert (
        coordinator.me(
            coordinator.project("digits"),
            coordinator.authenticate(coordinator.project("digits"), f"Bearer {who.token}"),
        )["credit"]
        == 0
    )
