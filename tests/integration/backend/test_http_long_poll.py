"""Parked long polls on the embedded server (issue 12): a waiting lease is a socket and a
timer on the event loop, not a worker thread (``backend.serving.parking``).

Against a real coordinator and real projects: contributors join and hand tasks back in
process (``wsgi_session``), while the long polls themselves are raw loopback sockets to a
server started per test with few threads, so that a poll holding a thread would show."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from backend.demo_clients import DemoContributor
from backend.server import bound_port, make_server, start_in_thread
from backend.serving import Server, ServerLimits
from backend.testing import IN_PROCESS_URL, small_delta, upload_request, wsgi_session
from backend.wsgi import App, create_app
from federated.codec import encode_update

READ_S = 15.0
"""Longest wait for any one answer: generous for a loaded two-core machine, and well
short of ``POLL_S``, so an answer that comes at all came long before its deadline."""

POLL_S = 40
"""The ``wait`` of a poll that should be answered by a wake-up, not by its deadline."""

SMALL_DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}
API = f"{IN_PROCESS_URL}/api/v1/projects"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    app = create_app(tmp_path_factory.mktemp("long-poll"), rate=None)
    yield app
    app.close()


@pytest.fixture
def http(app: App) -> requests.Session:
    return wsgi_session(app)


@contextmanager
def serving(app: Any, *, threads: int) -> Iterator[Server]:
    limits = ServerLimits(
        header_timeout_s=5.0, idle_timeout_s=60.0, max_connections_per_address=200
    )
    server = make_server(app, "127.0.0.1", 0, threads=threads, limits=limits)
    start_in_thread(server)
    try:
        yield server
    finally:
        server.stop()


_made = iter(range(1_000_000))


def project(app: App, **settings: Any) -> str:
    """A fresh digits project; by default async with one lease at a time (one task)."""
    name = f"poll-{next(_made)}"
    base = {"mode": "async", "max_concurrent_leases": 1, "codec": "int8", "spot_check_rate": 0}
    app.coordinator.create_project(
        name, recipe="digits-mlp", hparams=SMALL_DIGITS, settings={**base, **settings}
    )
    return name


def join(http: requests.Session, name: str, who: str) -> DemoContributor:
    contributor = DemoContributor(IN_PROCESS_URL, name, who, session=http)
    contributor.join()
    return contributor


def release(http: requests.Session, who: DemoContributor, task: dict[str, Any]) -> None:
    r = http.post(
        f"{API}/{who.project}/tasks/{task['task_id']}/release",
        headers={"Authorization": f"Bearer {who.token}"},
    )
    assert r.status_code == 204, r.text


# ---------------------------------------------------------------------- raw polls


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def task(self) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.body)["manifest"]
        return manifest


class Poll:
    """``POST .../tasks/lease?wait=S`` on its own socket."""

    def __init__(self, server: Server, who: DemoContributor, wait: float = POLL_S) -> None:
        self.who = who
        self.sock = socket.create_connection(("127.0.0.1", bound_port(server)), timeout=READ_S)
        self.sock.sendall(
            f"POST /api/v1/projects/{who.project}/tasks/lease?wait={wait} HTTP/1.1\r\n"
            f"Host: t\r\nAuthorization: Bearer {who.token}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        self.buf = b""

    def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before an answer")
            self.buf += data
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed in the middle of a body")
            rest += data
        self.buf = rest[length:]
        return Reply(int(lines[0].split(" ")[1]), headers, rest[:length])

    def close(self) -> None:
        self.sock.close()


def healthz(server: Server) -> int:
    with socket.create_connection(("127.0.0.1", bound_port(server)), timeout=READ_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def first_answered(polls: list[Poll], timeout: float = READ_S) -> list[Poll]:
    """The polls with bytes to read, once any has some (none after ``timeout``)."""
    with selectors.DefaultSelector() as sel:
        for poll in polls:
            sel.register(poll.sock, selectors.EVENT_READ, poll)
        return [key.data for key, _ in sel.select(timeout)]


def eventually(condition: Callable[[], bool], timeout: float = READ_S) -> bool:
    """Poll a server-side count (kept on the loop thread) until ``condition`` holds."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True


# ---------------------------------------------------------------------- tests


def test_fifty_parked_polls_hold_no_thread_and_a_freed_task_wakes_one(
    app: App, http: requests.Session
) -> None:
    """threads=2 and 50 volunteers waiting: /healthz is still answered; when the one task
    is handed back, one waiting poll gets it at once (its deadline is far off); the rest
    stay parked and are answered 204 when the server stops."""
    name = project(app)
    holder = join(http, name, "holder")
    task = holder.lease(0)
    assert task is not None
    waiters = [join(http, name, f"w{i}") for i in range(50)]
    with serving(app, threads=2) as server:
        polls = [Poll(server, who) for who in waiters]
        assert eventually(lambda: len(server.parking) == 50), f"{len(server.parking)} parked"
        assert healthz(server) == 200
        release(http, holder, task)
        woken = first_answered(polls)
        assert len(woken) == 1, f"{len(woken)} polls answered for one freed task"
        reply = woken[0].reply()
        assert reply.status == 200
        granted = reply.task()
        assert (granted["project"], granted["client_id"]) == (name, woken[0].who.client_id)
        assert eventually(lambda: len(server.parking) == 49)
        assert healthz(server) == 200
        rest = [p for p in polls if p is not woken[0]]
        assert first_answered(rest, timeout=0.5) == []  # the others still wait
        server.stop()
        for poll in rest:
            reply = poll.reply()
            assert reply.status == 204 and int(reply.headers["retry-after"]) > 0
        for poll in polls:
            poll.close()


def test_a_poll_is_answered_204_with_retry_after_at_its_deadline(
    app: App, http: requests.Session
) -> None:
    name = project(app)
    holder = join(http, name, "holder")
    assert holder.lease(0) is not None
    waiter = join(http, name, "waiter")
    with serving(app, threads=1) as server:
        poll = Poll(server, waiter, wait=3)
        assert eventually(lambda: len(server.parking) == 1)
        assert healthz(server) == 200  # its one thread is free while the poll waits
        reply = poll.reply()
        assert reply.status == 204
        assert int(reply.headers["retry-after"]) > 0
        assert len(server.parking) == 0
        poll.close()


def test_a_second_poll_with_the_same_token_answers_the_first(
    app: App, http: requests.Session
) -> None:
    name = project(app)
    holder = join(http, name, "holder")
    task = holder.lease(0)
    assert task is not None
    waiter = join(http, name, "waiter")
    with serving(app, threads=2) as server:
        first = Poll(server, waiter)
        assert eventually(lambda: len(server.parking) == 1)
        second = Poll(server, waiter)
        reply = first.reply()  # long before the first one's deadline
        assert reply.status == 204 and int(reply.headers["retry-after"]) > 0
        assert eventually(lambda: len(server.parking) == 1)  # the second one waits
        release(http, holder, task)
        reply = second.reply()
        assert reply.status == 200 and reply.task()["client_id"] == waiter.client_id
        first.close()
        second.close()


class Gate:
    """The app, but ``GET /gate`` holds its worker thread until ``opened`` is set."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] != "/gate":
            return self.app(environ, start_response)
        self.entered.set()
        self.opened.wait(READ_S)
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]


def test_a_newer_poll_wins_over_an_older_one_woken_meanwhile(
    app: App, http: requests.Session
) -> None:
    """The owner polls again while its first poll was woken and waits for a thread to run
    again (threads=1, held at a gate): when that first poll finds nothing, it is the one
    answered 204, and the newer poll stays parked and gets the next task."""
    name = project(app)
    holder = join(http, name, "holder")
    task = holder.lease(0)
    assert task is not None
    waiter = join(http, name, "waiter")
    gate = Gate(app)
    with serving(gate, threads=1) as server:
        first = Poll(server, waiter)
        assert eventually(lambda: len(server.parking) == 1)
        blocker = socket.create_connection(("127.0.0.1", bound_port(server)), timeout=READ_S)
        blocker.sendall(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n")
        assert gate.entered.wait(READ_S)
        second = Poll(server, waiter)
        assert eventually(lambda: len(server._in_flight) == 2)  # queued behind the gate
        app.coordinator.notifier.notify(name)  # a wake-up with nothing new to lease
        assert eventually(lambda: len(server.parking) == 0)  # the first is queued to run again
        gate.opened.set()
        reply = first.reply()
        assert reply.status == 204
        assert eventually(lambda: len(server.parking) == 1)
        release(http, holder, task)
        reply = second.reply()
        assert reply.status == 200 and reply.task()["client_id"] == waiter.client_id
        for sock in (first, second):
            sock.close()
        blocker.close()


def test_a_client_that_disconnects_while_parked_is_dropped(
    app: App, http: requests.Session
) -> None:
    name = project(app)
    holder = join(http, name, "holder")
    task = holder.lease(0)
    assert task is not None
    gone, stays = join(http, name, "gone"), join(http, name, "stays")
    with serving(app, threads=2) as server:
        leaving = Poll(server, gone)
        assert eventually(lambda: len(server.parking) == 1)
        waiting = Poll(server, stays)
        assert eventually(lambda: len(server.parking) == 2)
        leaving.close()
        assert eventually(lambda: len(server.parking) == 1), "a closed poll stayed parked"
        assert eventually(lambda: server.open_connections == 1)
        release(http, holder, task)
        reply = waiting.reply()
        assert reply.status == 200 and reply.task()["client_id"] == stays.client_id
        waiting.close()
    assert gone.lease(0) is None  # nothing was leased to the poll that went away


def test_a_new_version_wakes_a_parked_poll(app: App, http: requests.Session) -> None:
    """Sync, one contributor a round: the second waits until the first's update makes
    version 1, then gets a task on it."""
    name = project(app, mode="sync", clients_per_round=1, min_updates=1, overprovision=1.0)
    first, second = join(http, name, "first"), join(http, name, "second")
    task = first.lease(0)
    assert task is not None and task["base_version"] == 0
    with serving(app, threads=2) as server:
        poll = Poll(server, second)
        assert eventually(lambda: len(server.parking) == 1)
        spec = app.coordinator.runtime(app.coordinator.project(name)).spec
        payload = encode_update(small_delta(spec, 1e-3, task["task_id"]), "int8").payload
        up = upload_request(
            http,
            IN_PROCESS_URL,
            project=name,
            token=first.token,
            key=first.key,
            task=task,
            client_id=first.client_id,
            payload=payload,
        )
        assert up.status_code == 201, up.text
        reply = poll.reply()  # after aggregation, long before the poll's deadline
        assert reply.status == 200
        assert (reply.task()["client_id"], reply.task()["base_version"]) == (second.client_id, 1)
        poll.close()
