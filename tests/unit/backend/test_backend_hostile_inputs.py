"""Hostile inputs that once answered 500 with a traceback in the log (issue 12): a huge
``num_examples`` or metric in the signed manifest, a manifest or JSON body nested 50,000
deep, a 5,000-digit ``Range``. Each is a clear 4xx naming what was wrong and where, changes
nothing (no blob or temp file is left behind, no credit or update appears) and logs no
traceback."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.testing import IN_PROCESS_URL, small_delta
from federated import protocol
from federated.codec import encode_update

API = f"{IN_PROCESS_URL}/api/v1/projects"

pytestmark = pytest.mark.both_stores  # every test with a coordinator, on SQLite and PostgreSQL
DEEP = 50_000


@pytest.fixture
def cat(make_project: Any, join: Any) -> Iterator[Any]:
    make_project("cat", clients_per_round=8, min_updates=8)
    yield join


def snapshot(c: Coordinator) -> dict[str, Any]:
    with c.store.read() as tx:
        project = tx.project_by_name("cat")
        assert project is not None
        versions = [v.digest for v in tx.versions(project.id)]
        updates = [(u.id, u.payload_digest) for u in tx.updates(project.id)]
        credit = [(cl.id, cl.credit, cl.accepted) for cl in tx.clients(project.id)]
    return {
        "version": project.current_version,
        "versions": versions,
        "updates": updates,
        "credit": credit,
        "blobs": sorted(c.blobs.digests()),
        "tmp": sorted(p.name for p in c.blobs.tmp_dir.iterdir()),
    }


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not logged, [r.getMessage() for r in logged]


def refused(response: requests.Response, status: int, code: str, *names: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for name in names:
        assert name in error["message"], error["message"]
    return str(error["message"])


def put_manifest(
    http: requests.Session, coordinator: Coordinator, who: DemoContributor, raw: bytes
) -> requests.Response:
    """Upload a valid payload for a fresh task of ``who`` with ``raw`` as the signed manifest
    (its exact bytes signed by ``who``'s key)."""
    task = who.lease(0)
    assert task is not None
    spec = coordinator.runtime(coordinator.project("cat")).spec
    payload = encode_update(small_delta(spec), "int8").payload
    raw = raw.replace(b"@TASK@", task["task_id"].encode()).replace(
        b"@PAYLOAD@", hashlib.sha256(payload).hexdigest().encode()
    )
    return http.put(
        f"{API}/cat/tasks/{task['task_id']}/update",
        data=payload,
        headers={
            "Authorization": f"Bearer {who.token}",
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(raw).decode("ascii"),
            "X-Barnraise-Signature": who.key.sign_bytes(raw),
        },
    )


def manifest_bytes(who: DemoContributor, base_digest: str, **fields: str) -> bytes:
    """A canonical manifest with each of ``fields`` spliced in as raw JSON text."""
    values = {
        "base_digest": f'"{base_digest}"',
        "client_id": f'"{who.client_id}"',
        "codec": '"int8"',
        "metrics": '{"loss_after":1.0}',
        "num_examples": "10",
        "payload_digest": '"@PAYLOAD@"',
        "project": '"cat"',
        "task_id": '"@TASK@"',
    }
    values.update(fields)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in sorted(values.items())) + "}").encode()


def base_digest(http: requests.Session) -> str:
    return str(http.get(f"{API}/cat/models/current").json()["manifest"]["digest"])


MANIFESTS: list[tuple[str, dict[str, str], int, str, tuple[str, ...]]] = [
    ("num_examples_10e30", {"num_examples": str(10**30)}, 422, "manifest_mismatch",
     ("X-Barnraise-Manifest", "$.num_examples", "2147483647")),
    ("num_examples_10e400", {"num_examples": str(10**400)}, 400, "bad_json",
     ("X-Barnraise-Manifest", "401 digits")),
    ("num_examples_negative", {"num_examples": "-5"}, 422, "manifest_mismatch",
     ("$.num_examples",)),
    ("num_examples_float", {"num_examples": "1e+30"}, 422, "manifest_mismatch",
     ("$.num_examples",)),
    ("metric_10e400", {"metrics": '{"loss_after":' + str(10**400) + "}"}, 400, "bad_json",
     ("X-Barnraise-Manifest", "401 digits")),
    ("metric_10e30", {"metrics": '{"loss_after":' + str(10**30) + "}"}, 422,
     "manifest_mismatch", ("$.metrics",)),
    ("metric_1e300", {"metrics": '{"loss_after":1e+300}'}, 422, "manifest_mismatch",
     ("$.metrics", "1000000000")),
    ("metric_1e400", {"metrics": '{"loss_after":1e400}'}, 400, "bad_json",
     ("X-Barnraise-Manifest", "too large")),
    ("metrics_nested_50000", {"metrics": '{"x":' + "[" * DEEP + "]" * DEEP + "}"}, 400,
     "bad_json", ("X-Barnraise-Manifest", "nest deeper than 32")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "status", "code", "names"),
    [m[1:] for m in MANIFESTS],
    ids=[m[0] for m in MANIFESTS],
)
def test_out_of_range_signed_manifest_is_refused_and_leaves_nothing(
    coordinator: Coordinator,
    http: requests.Session,
    cat: Any,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, str],
    status: int,
    code: str,
    names: tuple[str, ...],
) -> None:
    digest = base_digest(http)
    before = snapshot(coordinator)
    for i in range(3):  # once left an unreferenced blob each time
        who = cat("cat", f"Eve{i}")
        raw = manifest_bytes(who, digest, **fields)
        refused(put_manifest(http, coordinator, who, raw), status, code, *names)
    after = snapshot(coordinator)
    assert after["blobs"] == before["blobs"] and after["tmp"] == []
    assert after["updates"] == before["updates"] and after["versions"] == before["versions"]
    assert all(credit == 0 for _id, credit, _n in after["credit"])
    no_traceback(caplog)


def test_a_valid_manifest_built_the_same_way_is_accepted(
    coordinator: Coordinator, http: requests.Session, cat: Any
) -> None:
    """The splicing of the cases above makes a good manifest when given good values."""
    who = cat("cat", "Ada")
    response = put_manifest(http, coordinator, who, manifest_bytes(who, base_digest(http)))
    assert response.status_code == 201, response.text


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "status", "code", "names"),
    [
        # 100 KB: over the 64 KiB JSON cap, refused before a byte of it is parsed
        ('{"display_name":' + deep(DEEP) + "}", 413, "payload_too_large", ("65536",)),
        # under the cap, but nested 30,000 deep: refused before parsing too
        ('{"display_name":' + deep(30_000) + "}", 400, "bad_json", ("body", "nest deeper")),
        ("[" * 30_000, 400, "bad_json", ("body", "nest deeper")),
        ('{"a":' + '{"a":' * 100 + "1" + "}" * 101, 400, "bad_json", ("nest deeper than 32",)),
        ('{"display_name":' + str(10**400) + "}", 400, "bad_json", ("401 digits",)),
        ('{"display_name":' + str(10**30) + "}", 400, "bad_request", ("$.display_name",)),
        ('{"display_name":"Eve","team":1e300}', 400, "bad_request", ("$.team",)),
    ],
    ids=["nested_50000", "nested_30000", "unclosed_30000", "objects_101", "int_10e400",
         "int_10e30", "float_1e300"],
)  # fmt: skip
def test_hostile_join_body_is_refused_without_a_token(
    coordinator: Coordinator,
    http: requests.Session,
    cat: Any,
    caplog: pytest.LogCaptureFixture,
    body: str,
    status: int,
    code: str,
    names: tuple[str, ...],
) -> None:
    before = snapshot(coordinator)
    response = http.post(
        f"{API}/cat/join", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    refused(response, status, code, *names)
    assert snapshot(coordinator) == before
    no_traceback(caplog)


def test_hostile_lease_body_is_refused(
    coordinator: Coordinator, http: requests.Session, cat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    who = cat("cat", "Ada")
    response = http.post(
        f"{API}/cat/tasks/lease",
        data=deep(30_000).encode(),
        headers={"Authorization": f"Bearer {who.token}", "Content-Type": "application/json"},
    )
    refused(response, 400, "bad_json", "nest deeper")
    no_traceback(caplog)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 40 + '\\"{{' + "]" * 40
    raw = ('{"display_name":"' + text + '","n":[[[1]]]}').encode()
    assert protocol.parse_json(raw, what="x")["display_name"] == text.replace('\\"', '"')
    flat = ('{"a":[' + ",".join(["[]"] * 10_000) + "]}").encode()  # many brackets, depth 3
    assert len(protocol.parse_json(flat, what="x")["a"]) == 10_000
    with pytest.raises(protocol.ProtocolError, match="nest deeper than 32"):
        protocol.parse_json(b'{"a":' + b"[" * 32 + b"]" * 32 + b"}", what="x")
    assert protocol.parse_json(b'{"a":' + b"[" * 31 + b"]" * 31 + b"}", what="x")


RANGES: list[tuple[str, str, int, str | None, tuple[str, ...]]] = [
    ("first_5000_digits", "bytes=" + "9" * 5000 + "-", 400, "bad_request", ("Range", "200")),
    ("suffix_5000_digits", "bytes=-" + "9" * 5000, 400, "bad_request", ("Range",)),
    ("last_5000_digits", "bytes=0-" + "9" * 5000, 400, "bad_request", ("Range",)),
    ("first_100_digits", "bytes=" + "9" * 100 + "-", 416, "range_not_satisfiable",
     ("Range", "100 digits", "past the end")),
    ("last_100_digits", "bytes=0-" + "9" * 100, 206, None, ()),
    ("suffix_100_digits", "bytes=-" + "9" * 100, 206, None, ()),
    ("zeros_then_one", "bytes=" + "0" * 100 + "1-", 206, None, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "status", "code", "names"), [r[1:] for r in RANGES], ids=[r[0] for r in RANGES]
)
def test_huge_range_values_are_bounded(
    http: requests.Session,
    cat: Any,
    caplog: pytest.LogCaptureFixture,
    header: str,
    status: int,
    code: str | None,
    names: tuple[str, ...],
) -> None:
    digest = base_digest(http)
    whole = http.get(f"{API}/cat/models/{digest}").content
    response = http.get(f"{API}/cat/models/{digest}", headers={"Range": header})
    if code is None:
        assert response.status_code == status, response.text
        start = 1 if header.endswith("1-") else 0
        assert response.content == whole[start:]
        assert response.headers["Content-Range"] == f"bytes {start}-{len(whole) - 1}/{len(whole)}"
    else:
        refused(response, status, code, *names)
        if status == 416:
            assert response.headers["Content-Range"] == f"bytes */{len(whole)}"
    no_traceback(caplog)


def test_request_messages_bound_every_number() -> None:
    """Every number a request message (JoinRequest, UpdateManifest) takes has a range."""
    from federated.protocol.schema import message_schemas

    schemas = message_schemas()

    def numbers(schema: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(schema, dict):
            if schema.get("type") in ("integer", "number"):
                yield path, schema
            for key, value in schema.items():
                yield from numbers(value, f"{path}.{key}")
        elif isinstance(schema, list):
            for i, value in enumerate(schema):
                yield from numbers(value, f"{path}[{i}]")

    found = []
    for message in (protocol.JoinRequest, protocol.UpdateManifest):
        for path, schema in numbers(schemas[message.__name__], message.__name__):
            found.append(path)
            assert "minimum" in schema or "exclusiveMinimum" in schema, path
            assert "maximum" in schema or "exclusiveMaximum" in schema, path
    assert any("num_examples" in p for p in found) and any("metrics" in p for p in found)
