"""Responses match the OpenAPI document the contributor app is written against."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from backend.coordinator import Coordinator
from backend.openapi import build_openapi
from backend.testing import IN_PROCESS_URL, small_delta, upload_request
from federated.codec import encode_update

jsonschema = pytest.importorskip("jsonschema")
API = f"{IN_PROCESS_URL}/api/v1/projects"


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, item in doc["paths"].items():
        pattern = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            op: dict[str, Any] = item[method.lower()]
            return op
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def check(doc: dict[str, Any], response: requests.Response) -> None:
    method = str(response.request.method)
    path = urlsplit(str(response.request.url)).path
    op = _operation(doc, method, path)
    spec = op["responses"].get(str(response.status_code))
    assert spec is not None, f"{method} {path}: {response.status_code} is not documented"
    while "$ref" in spec:
        spec = doc["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    schema = (spec.get("content") or {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    root = {**schema, "components": doc["components"]}
    jsonschema.Draft202012Validator(root).validate(response.json())


def test_responses_of_a_whole_round_match_the_document(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    doc = build_openapi()
    make_project("digits", clients_per_round=2, min_updates=2)
    a, b = join("digits", "Ada", team="T"), join("digits", "Bob")
    auth_a = {"Authorization": f"Bearer {a.token}"}
    responses = [
        http.get(f"{IN_PROCESS_URL}/healthz"),
        http.get(f"{API}"),
        http.get(f"{API}/digits"),
        http.post(f"{API}/digits/challenge"),
        http.post(f"{API}/digits/join", json={}),  # 400: the error body has its schema too
    ]
    lease_a = http.post(f"{API}/digits/tasks/lease?wait=0", headers=auth_a)
    responses.append(lease_a)
    task_a = lease_a.json()["manifest"]
    responses.append(http.post(f"{API}/digits/tasks/{task_a['task_id']}/heartbeat", headers=auth_a))
    task_b = b.lease(0)
    assert task_b is not None
    spec = coordinator.runtime(coordinator.project("digits")).spec
    for c, t in ((a, task_a), (b, task_b)):
        payload = encode_update(small_delta(spec), "int8").payload
        r = upload_request(
            http,
            IN_PROCESS_URL,
            project="digits",
            token=c.token,
            key=c.key,
            task=t,
            client_id=c.client_id,
            payload=payload,
        )
        responses.append(r)
        responses.append(
            upload_request(
                http,
                IN_PROCESS_URL,
                project="digits",
                token=c.token,
                key=c.key,
                task=t,
                client_id=c.client_id,
                payload=payload,
            )
        )
    assert coordinator.worker.run_once()
    responses.append(
        http.post(
            f"{API}/digits/tasks/lease?wait=0", headers={"Authorization": f"Bearer {b.token}"}
        )
    )
    current = http.get(f"{API}/digits/models/current")
    responses.append(current)
    responses += [
        http.get(f"{API}/digits/leaderboard"),
        http.get(f"{API}/digits/stats"),
        http.get(f"{API}/digits/me", headers=auth_a),
        http.post(f"{API}/digits/tasks/lease?wait=0", headers=auth_a),
    ]
    lease_c = responses[-1]
    if lease_c.status_code == 200:
        tid = lease_c.json()["manifest"]["task_id"]
        responses.append(http.post(f"{API}/digits/tasks/{tid}/release", headers=auth_a))
    statuses = set()
    for r in responses:
        check(doc, r)
        statuses.add(r.status_code)
    assert {200, 201} <= statuses
