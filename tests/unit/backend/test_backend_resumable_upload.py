"""Resumable uploads (issue 13), in process: a cut upload's prefix is kept for the owner of
the live lease, the rest arrives in checked chunks, the pipeline runs once; every hostile
chunk gets a clear 4xx and changes nothing (the partial, the updates, the credit)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.errors import ERROR_STATUS
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta
from backend.wsgi import App
from federated import protocol
from federated.codec import encode_update
from federated.signing import canonical_json

API = f"{IN_PROCESS_URL}/api/v1/projects/cat"


@dataclass
class Upload:
    who: DemoContributor
    task: dict[str, Any]
    payload: bytes
    headers: dict[str, str]

    @property
    def url(self) -> str:
        return f"{API}/tasks/{self.task['task_id']}/update"

    @property
    def path(self) -> str:
        return self.url.removeprefix(IN_PROCESS_URL)


def signed(who: DemoContributor, task: dict[str, Any], payload: bytes, **over: Any) -> Upload:
    manifest = protocol.to_wire(
        protocol.UpdateManifest(
            project="cat",
            task_id=task["task_id"],
            client_id=who.client_id,
            base_digest=task["base_digest"],
            payload_digest=hashlib.sha256(payload).hexdigest(),
            codec=task["codec"],
            num_examples=int(task["max_examples"]),
            metrics={"loss_before": 2.3, "loss_after": 1.0},
        )
    )
    manifest.update(over)
    raw = canonical_json(manifest)
    headers = {
        "Authorization": f"Bearer {who.token}",
        "Content-Type": "application/octet-stream",
        "X-Barnraise-Manifest": base64.b64encode(raw).decode("ascii"),
        "X-Barnraise-Signature": who.key.sign_bytes(raw),
    }
    return Upload(who, task, payload, headers)


def cut_put(app: App, up: Upload, keep: int) -> int:
    """A whole PUT whose body stops after ``keep`` bytes (the connection cut): its status."""
    environ = {
        "REQUEST_METHOD": "PUT",
        "PATH_INFO": up.path,
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(up.payload[:keep]),
        "CONTENT_TYPE": "application/octet-stream",
        "CONTENT_LENGTH": str(len(up.payload)),
    }
    for name, value in up.headers.items():
        if name.lower() != "content-type":
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    status: list[str] = []
    b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    return int(status[0].split()[0])


def chunk(
    http: requests.Session, up: Upload, first: int, last: int, **over: Any
) -> requests.Response:
    piece = up.payload[first : last + 1]
    digest = base64.b64encode(hashlib.sha256(piece).digest()).decode()
    headers = {
        **up.headers,
        "Content-Range": f"bytes {first}-{last}/{len(up.payload)}",
        "Content-Digest": f"sha-256=:{digest}:",
    }
    body = over.pop("body", piece)
    headers.update(over)
    return http.put(up.url, data=body, headers={k: v for k, v in headers.items() if v is not None})


def progress(http: requests.Session, up: Upload) -> requests.Response:
    signed_only = {k: v for k, v in up.headers.items() if k != "Content-Type"}
    return http.get(up.url, headers=signed_only)


@pytest.fixture
def cat(make_project: Any, join: Any, coordinator: Coordinator) -> tuple[Any, ...]:
    make_project("cat", codec="f32", lease_s=60.0, clients_per_round=2, min_updates=2)
    a, b = join("cat", "Ada"), join("cat", "Bob")
    task_a, task_b = a.lease(0), b.lease(0)
    assert task_a and task_b
    spec = coordinator.runtime(coordinator.project("cat")).spec
    payload = encode_update(small_delta(spec, 1e-3), "f32").payload
    assert len(payload) > 4_000
    return a, b, task_a, task_b, payload


def state(c: Coordinator) -> dict[str, Any]:
    project = c.project("cat")
    with c.store.read() as tx:
        updates = [(u.id, u.payload_digest) for u in tx.updates(project.id)]
        credit = {cl.id: (cl.credit, cl.accepted) for cl in tx.clients(project.id)}
    partials = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in c.blobs.partials_dir.iterdir()
    }
    return {"updates": updates, "credit": credit, "partials": partials}


def test_a_cut_upload_resumes_where_it_stopped_and_is_accepted_once(
    app: App, http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    up = signed(a, task_a, payload)
    held = progress(http, up)
    assert held.status_code == 200 and held.json()["offset"] == 0, held.text
    cut = len(payload) * 2 // 5
    assert cut_put(app, up, cut) == 400  # incomplete_body, as before
    held = progress(http, up)
    assert held.json() == {
        "payload_digest": hashlib.sha256(payload).hexdigest(),
        "offset": cut,
        "length": len(payload),
        "receipt": None,
    }
    assert held.headers["Upload-Offset"] == str(cut)
    middle = cut + (len(payload) - cut) // 2
    first = chunk(http, up, cut, middle - 1)
    assert first.status_code == 202, first.text
    assert first.json()["offset"] == middle and first.headers["Upload-Offset"] == str(middle)
    last = chunk(http, up, middle, len(payload) - 1)
    assert last.status_code == 201, last.text
    receipt = last.json()
    assert list(coordinator.blobs.partials_dir.iterdir()) == []
    assert coordinator.blobs.exists(receipt["payload_digest"])
    again = chunk(http, up, middle, len(payload) - 1)  # the answer was lost: sent again
    assert again.status_code == 200 and again.json() == receipt
    done = progress(http, up).json()
    assert done["receipt"] == receipt
    whole = http.put(up.url, data=payload, headers=up.headers)
    assert whole.status_code == 200 and whole.json() == receipt
    assert len(state(coordinator)["updates"]) == 1
    me = a.session.get(f"{API}/me", headers=a._auth()).json()
    assert me["updates_accepted"] == 1


def test_a_chunked_upload_can_start_from_nothing(
    http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    up = signed(a, task_a, payload)
    step = len(payload) // 3 + 1
    answers = [
        chunk(http, up, i, min(i + step, len(payload)) - 1) for i in range(0, len(payload), step)
    ]
    assert [r.status_code for r in answers] == [202, 202, 201], [r.text for r in answers]


def _held(app: App, http: requests.Session, up: Upload) -> int:
    cut = len(up.payload) // 2
    assert cut_put(app, up, cut) == 400
    assert progress(http, up).json()["offset"] == cut
    return cut


def _hostile_cases(up: Upload, cut: int, other: Upload) -> dict[str, tuple[Any, int, str]]:
    n = len(up.payload)
    return {
        "skips ahead": (lambda h: chunk(h, up, cut + 10, n - 1), 409, "upload_offset_mismatch"),
        "overlaps": (lambda h: chunk(h, up, cut - 10, n - 1), 409, "upload_offset_mismatch"),
        "from zero again": (lambda h: chunk(h, up, 0, n - 1), 409, "upload_offset_mismatch"),
        "another total": (
            lambda h: chunk(h, up, cut, n - 1, **{"Content-Range": f"bytes {cut}-{n - 1}/{n + 5}"}),
            400,
            "bad_content_range",
        ),
        "range longer than body": (
            lambda h: chunk(h, up, cut, n - 1, body=up.payload[cut:-1]),
            400,
            "bad_content_range",
        ),
        "malformed range": (
            lambda h: chunk(h, up, cut, n - 1, **{"Content-Range": f"bytes={cut}-"}),
            400,
            "bad_content_range",
        ),
        "backwards range": (
            lambda h: chunk(h, up, cut, n - 1, **{"Content-Range": f"bytes {cut}-{cut - 1}/{n}"}),
            400,
            "bad_content_range",
        ),
        "huge numbers": (
            lambda h: chunk(h, up, cut, n - 1, **{"Content-Range": "bytes 0-1/" + "9" * 30}),
            400,
            "bad_content_range",
        ),
        "long range header": (
            lambda h: chunk(h, up, cut, n - 1, **{"Content-Range": "bytes " + " " * 200}),
            400,
            "bad_content_range",
        ),
        "no digest": (
            lambda h: chunk(h, up, cut, n - 1, **{"Content-Digest": None}),
            400,
            "bad_content_digest",
        ),
        "md5 digest": (
            lambda h: chunk(
                h, up, cut, n - 1, **{"Content-Digest": "md5=:AAAAAAAAAAAAAAAAAAAAAA==:"}
            ),
            400,
            "bad_content_digest",
        ),
        "wrong digest": (
            lambda h: chunk(h, up, cut, n - 1, body=bytes(b ^ 1 for b in up.payload[cut:])),
            400,
            "chunk_digest_mismatch",
        ),
        "another contributor": (lambda h: chunk(h, other, cut, n - 1), 403, "not_your_task"),
        "progress of another's task": (lambda h: progress(h, other), 403, "not_your_task"),
        "progress unsigned": (
            lambda h: h.get(up.url, headers={"Authorization": up.headers["Authorization"]}),
            400,
            "bad_request",
        ),
        "progress without token": (
            lambda h: h.get(up.url, headers={"X-Barnraise-Manifest": "AAAA"}),
            401,
            "missing_token",
        ),
    }


CASES = [
    "skips ahead",
    "overlaps",
    "from zero again",
    "another total",
    "range longer than body",
    "malformed range",
    "backwards range",
    "huge numbers",
    "long range header",
    "no digest",
    "md5 digest",
    "wrong digest",
    "another contributor",
    "progress of another's task",
    "progress unsigned",
    "progress without token",
]


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_chunk_gets_a_clear_4xx_and_changes_nothing(
    app: App, http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...], case: str
) -> None:
    a, b, task_a, _, payload = cat
    up = signed(a, task_a, payload)
    cut = _held(app, http, up)
    other = signed(b, task_a, payload)  # Bob's token and key on Ada's task
    act, status, code = _hostile_cases(up, cut, other)[case]
    before = state(coordinator)
    response = act(http)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert ERROR_STATUS[code] == status
    assert state(coordinator) == before
    if code == "upload_offset_mismatch":
        assert response.headers["Upload-Offset"] == str(cut)
    # and the honest rest still completes the upload
    assert progress(http, up).json()["offset"] == cut
    assert chunk(http, up, cut, len(payload) - 1).status_code == 201


def test_a_chunk_past_nothing_held_creates_nothing(
    http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    up = signed(a, task_a, payload)
    response = chunk(http, up, 100, len(payload) - 1)
    assert response.status_code == 409 and response.headers["Upload-Offset"] == "0"
    assert list(coordinator.blobs.partials_dir.iterdir()) == []


def test_a_chunk_while_another_request_writes_is_told_to_wait(
    app: App, http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    up = signed(a, task_a, payload)
    cut = _held(app, http, up)
    (path,) = coordinator.blobs.partials_dir.iterdir()
    with open(path, "rb") as held:  # as a request of another process would hold it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        busy = chunk(http, up, cut, len(payload) - 1)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "upload_in_progress"
    assert int(busy.headers["Retry-After"]) >= 1
    assert path.stat().st_size == cut


def test_the_total_is_capped_by_the_project(
    http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    up = signed(a, task_a, payload)
    cap = 64 * 1024 * 1024
    response = chunk(http, up, 0, 9, **{"Content-Range": f"bytes 0-9/{cap + 1}"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert list(coordinator.blobs.partials_dir.iterdir()) == []


def test_an_assembled_payload_that_is_not_the_signed_one_is_refused_and_removed(
    app: App, http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    up = signed(a, task_a, payload, payload_digest=hashlib.sha256(b"other").hexdigest())
    cut = _held(app, http, up)
    last = chunk(http, up, cut, len(payload) - 1)
    assert last.status_code == 422 and last.json()["error"]["code"] == "digest_mismatch"
    assert list(coordinator.blobs.partials_dir.iterdir()) == []
    assert state(coordinator)["updates"] == []


def test_a_new_payload_replaces_the_tasks_partial(
    app: App, http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    a, _, task_a, _, payload = cat
    spec = coordinator.runtime(coordinator.project("cat")).spec
    _held(app, http, signed(a, task_a, payload))
    retrained = encode_update(small_delta(spec, 2e-3), "f32").payload
    second = signed(a, task_a, retrained)
    _held(app, http, second)
    (path,) = coordinator.blobs.partials_dir.iterdir()
    assert hashlib.sha256(retrained).hexdigest() in path.name


def test_partials_go_with_their_task(
    app: App,
    http: requests.Session,
    coordinator: Coordinator,
    clock: FakeClock,
    cat: tuple[Any, ...],
) -> None:
    a, b, task_a, task_b, payload = cat
    _held(app, http, signed(a, task_a, payload))
    _held(app, http, signed(b, task_b, payload))
    assert len(list(coordinator.blobs.partials_dir.iterdir())) == 2
    released = http.post(
        f"{API}/tasks/{task_a['task_id']}/release", headers={"Authorization": f"Bearer {a.token}"}
    )
    assert released.status_code == 204
    (left,) = coordinator.blobs.partials_dir.iterdir()
    assert left.name.startswith(task_b["task_id"])
    clock.advance(3600)  # Bob's lease expires
    assert coordinator.services.uploads.resume.sweep() == 1
    assert list(coordinator.blobs.partials_dir.iterdir()) == []


def test_a_cut_prefix_of_someone_else_is_not_kept(
    app: App, http: requests.Session, coordinator: Coordinator, cat: tuple[Any, ...]
) -> None:
    _, b, task_a, _, payload = cat
    assert cut_put(app, signed(b, task_a, payload), len(payload) // 2) == 400
    assert list(coordinator.blobs.partials_dir.iterdir()) == []
    assert os.listdir(coordinator.blobs.tmp_dir) == []
