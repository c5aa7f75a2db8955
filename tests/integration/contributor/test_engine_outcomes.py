"""How the engine ends a task that is not accepted, and how it treats a project that is
closed, unreachable or signed by a new key: real engines against a real coordinator."""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_e2e_helpers import EventLog, barnraise, make_controller, running_settings

from app.contributor.client import RetryPolicy
from app.contributor.credentials import FileCredentialStore
from app.contributor.events import EngineState, Error, Progress, StateChanged, TaskFinished
from app.contributor.ledger import Ledger
from backend.cli import DEMO_HPARAMS
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app
from federated.signing import SigningKey, fingerprint

SYNC_ONE = {"mode": "sync", "clients_per_round": 1, "min_updates": 1, "codec": "int8"}
ASYNC_ONE = {"mode": "async", "buffer_size": 1, "codec": "int8"}


class Tap:
    """WSGI middleware in front of the real app: counts uploads and leases per project and
    task, and can spoil uploads (the real coordinator then refuses them) or cut answers."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.uploads: Counter[str] = Counter()
        self.leases: Counter[str] = Counter()
        self.spoil_uploads = 0  # this many uploads arrive with a byte changed in transit
        self.lose_receipts = 0  # this many accepted uploads are answered 503 instead

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        parts = path.strip("/").split("/")  # api v1 projects NAME tasks ID update
        if environ["REQUEST_METHOD"] == "POST" and path.endswith("/tasks/lease"):
            with self.lock:
                self.leases[parts[3]] += 1
        if environ["REQUEST_METHOD"] == "PUT" and path.endswith("/update"):
            with self.lock:
                self.uploads[parts[5]] += 1
                spoil, self.spoil_uploads = self.spoil_uploads > 0, self.spoil_uploads - 1
                lose = not spoil and self.lose_receipts > 0
                self.lose_receipts -= int(lose)
            if spoil:
                body = bytearray(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
                body[-1] ^= 0xFF
                environ["wsgi.input"] = io.BytesIO(bytes(body))
            if lose:
                for _ in self.app(environ, lambda *_a: None):
                    pass
                start_response("503 Service Unavailable", [("Content-Type", "application/json")])
                return [b'{"error": {"code": "unavailable", "message": "lost"}}']
        return self.app(environ, start_response)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Tap, str]]:
    app = create_app(tmp_path / "backend", rate=None)
    for name, settings in (("digits", SYNC_ONE), ("other", SYNC_ONE), ("async", ASYNC_ONE)):
        app.coordinator.create_project(
            name, recipe="digits-mlp", strategy="fedavg", hparams=DEMO_HPARAMS, settings=settings
        )
    tap = Tap(app)
    server = make_server(tap, "127.0.0.1", 0, threads=16)
    start_in_thread(server)
    yield app, tap, f"http://127.0.0.1:{bound_port(server)}"
    server.stop()
    app.close()


def _run(controller: Any, events: EventLog) -> None:
    controller.subscribe(events)
    controller.start()


def _stop(controller: Any) -> None:
    controller.stop()
    assert controller.wait(60)


def _task_files(root: Path) -> list[str]:
    names = (".ckpt", ".update", ".upload.json", "task.json")
    return sorted(p.name for p in (root / "state").rglob("*") if p.name.endswith(names))


def test_a_refused_update_is_sent_once_recorded_and_never_retrained(
    served: tuple[Any, Tap, str], tmp_path: Path
) -> None:
    _app, tap, url = served
    tap.spoil_uploads = 1
    c = make_controller(tmp_path / "c")
    # Async: in a sync round a contributor gets one task per round, so the next would wait
    # for the round to close.
    c.join(f"{url}/p/async", display_name="refused")
    events = EventLog()
    _run(c, events)
    try:
        refused = events.wait_for(lambda e: isinstance(e, TaskFinished) and not e.accepted)
        accepted = events.wait_for(lambda e: isinstance(e, TaskFinished) and e.accepted, 90)
    finally:
        _stop(c)
    assert refused.reason == "digest_mismatch"
    assert accepted.task_id != refused.task_id, "the refused task was never handed out again"
    assert tap.uploads[refused.task_id] == 1, "one rejection, exactly one upload"
    trainings = Counter(
        e.task_id
        for e in events.events
        if isinstance(e, StateChanged) and e.state is EngineState.TRAINING
    )
    assert trainings[refused.task_id] == 1
    ledger = Ledger(tmp_path / "c" / "ledger.sqlite")
    key = c.credentials.list_projects()[0].key
    assert ledger.totals(key).rejected == 1
    assert [r.reason for r in ledger.recent(key, accepted=False)] == ["digest_mismatch"]
    assert _task_files(tmp_path / "c") == []


def test_an_update_over_the_task_bounds_is_not_sent(tmp_path: Path) -> None:
    app = create_app(tmp_path / "backend", rate=None)
    app.coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        strategy="fedavg",
        hparams=DEMO_HPARAMS,
        settings={**SYNC_ONE, "max_update_norm": 1e-6},
    )
    tap = Tap(app)
    server = make_server(tap, "127.0.0.1", 0, threads=8)
    start_in_thread(server)
    c = make_controller(tmp_path / "c")
    c.join(f"http://127.0.0.1:{bound_port(server)}/p/digits", display_name="bounded")
    events = EventLog()
    _run(c, events)
    try:
        refused = events.wait_for(lambda e: isinstance(e, TaskFinished) and not e.accepted)
        error = events.wait_for(lambda e: isinstance(e, Error) and e.code == "norm_too_large")
        with app.coordinator.store.read() as tx:
            task = tx.task(refused.task_id)
    finally:
        _stop(c)
        server.stop()
        app.close()
    assert refused.reason == "norm_too_large"
    assert "exceeds the limit" in error.message
    assert sum(tap.uploads.values()) == 0, "nothing the coordinator would refuse is sent"
    assert task is not None and task.status == "released", "the task was given back"


def test_a_lost_receipt_is_recovered_after_a_restart_without_retraining(
    served: tuple[Any, Tap, str], tmp_path: Path
) -> None:
    app, tap, url = served
    tap.lose_receipts = 1
    root = tmp_path / "c"
    first = make_controller(root, retry=RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01))
    first.join(f"{url}/p/digits", display_name="unlucky")
    events = EventLog()
    # Stop as soon as the lost receipt is reported, before the engine's own retry.
    first.subscribe(lambda e: isinstance(e, Error) and e.code == "unavailable" and first.stop())
    _run(first, events)
    events.wait_for(lambda e: isinstance(e, Error) and e.code == "unavailable")
    assert first.wait(60)
    co = app.coordinator
    with co.store.read() as tx:
        (update,) = tx.updates(co.project("digits").id)
    assert _task_files(root), "the unacknowledged update was kept"

    second = make_controller(root)
    again = EventLog()
    _run(second, again)
    try:
        finished = again.wait_for(lambda e: isinstance(e, TaskFinished), 60)
    finally:
        _stop(second)
    assert finished.accepted and finished.task_id == update.task_id
    assert not [
        e for e in again.events if isinstance(e, StateChanged) and e.state is EngineState.TRAINING
    ]
    ledger = Ledger(root / "ledger.sqlite")
    rows = ledger.recent(second.credentials.list_projects()[0].key)
    assert [r.update_id for r in rows if r.task_id == update.task_id] == [update.id], (
        "the ledger holds the first receipt, once"
    )
    assert tap.uploads[update.task_id] == 2
    assert _task_files(root) == []


def test_a_closed_project_is_not_asked_again_and_does_not_hold_up_the_other(
    served: tuple[Any, Tap, str], tmp_path: Path
) -> None:
    app, tap, url = served
    c = make_controller(tmp_path / "c", lease_wait_s=1)
    c.join(f"{url}/p/digits", display_name="both")
    c.join(f"{url}/p/other", display_name="both")
    app.coordinator.set_status("digits", "closed")
    events = EventLog()
    _run(c, events)
    try:
        events.wait_for(lambda e: isinstance(e, Error) and e.code == "project_closed")
        events.wait_for(
            lambda e: (
                isinstance(e, TaskFinished)
                and sum(isinstance(x, TaskFinished) and x.accepted for x in events.events) >= 3
            ),
            120,
        )
        snapshot = c.snapshot()
    finally:
        _stop(c)
    assert tap.leases["digits"] == 1, "a closed project is not asked again"
    closed = {p["project"]: p["closed"] for p in snapshot["projects"]}
    assert closed == {"digits": True, "other": False}


def test_a_finished_project_stops_with_thanks_and_is_not_asked_again(
    served: tuple[Any, Tap, str], tmp_path: Path
) -> None:
    app, tap, url = served
    c = make_controller(tmp_path / "c", lease_wait_s=1)
    c.join(f"{url}/p/digits", display_name="done")
    app.coordinator.finish("digits", "accurate enough")
    events = EventLog()
    _run(c, events)
    try:
        finished = events.wait_for(lambda e: isinstance(e, Error) and e.code == "project_finished")
        snapshot = c.snapshot()
    finally:
        _stop(c)
    assert "thank you" in finished.message
    assert tap.leases["digits"] == 1, "a finished project is not asked again"
    (project,) = snapshot["projects"]
    assert project["finished"] and project["closed"]


def test_an_unreachable_coordinator_is_offline_and_retry_now_asks_at_once(
    tmp_path: Path,
) -> None:
    app = create_app(tmp_path / "backend", rate=None)
    app.coordinator.create_project(
        "digits", recipe="digits-mlp", strategy="fedavg", hparams=DEMO_HPARAMS, settings=SYNC_ONE
    )
    server = make_server(app, "127.0.0.1", 0, threads=8)
    start_in_thread(server)
    c = make_controller(tmp_path / "c", retry=RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01))
    c.join(f"http://127.0.0.1:{bound_port(server)}/p/digits", display_name="offline")
    server.stop()  # the coordinator goes away after the join
    events = EventLog()
    _run(c, events)
    try:
        events.wait_for(lambda e: isinstance(e, StateChanged) and e.state is EngineState.OFFLINE)
        # The backoff doubles (2, 4, 8 s): after the third failure the next try is 8 s away.
        third = events.wait_for(
            lambda e: (
                isinstance(e, Error) and sum(isinstance(x, Error) for x in events.events) >= 3
            ),
            30,
        )
        assert "can't reach the server" in third.message
        assert c.snapshot()["projects"][0]["offline"] is True
        c.retry_now()
        events.wait_for(lambda e: isinstance(e, Error) and e.at > third.at, timeout=4)
    finally:
        _stop(c)
        app.close()


def test_a_changed_project_key_is_refused_until_the_volunteer_accepts_it(
    served: tuple[Any, Tap, str], tmp_path: Path
) -> None:
    _app, _tap, url = served
    root = tmp_path / "c"
    c = make_controller(root)
    creds = c.join(f"{url}/p/digits", display_name="careful")
    # As if the coordinator had changed its key since: our pin no longer matches it.
    store = FileCredentialStore(root / "credentials.json")
    stale = SigningKey.generate().public_key_b64
    store.save(creds.key, dataclasses.replace(creds, project_public_key_b64=stale))
    events = EventLog()
    _run(c, events)
    try:
        changed = events.wait_for(lambda e: isinstance(e, Error) and e.code == "key_changed")
        assert changed.fatal
        change = c.snapshot()["projects"][0]["key_change"]
        real = fingerprint(creds.project_public_key_b64)
        assert change["pinned_fingerprint"] == fingerprint(stale)
        assert change["new_fingerprint"] == real
        assert fingerprint(stale) in changed.message and real in changed.message
        assert not [e for e in events.events if isinstance(e, TaskFinished)]
        with pytest.raises(Exception, match="nothing was changed"):
            c.accept_new_key(creds.key, fingerprint(stale))
        kept = c.accept_new_key(creds.key, real)
        finished = events.wait_for(lambda e: isinstance(e, TaskFinished), 60)
    finally:
        _stop(c)
    assert finished.accepted
    assert kept.client_id == creds.client_id and kept.private_key_b64 == creds.private_key_b64
    assert kept.project_public_key_b64 == creds.project_public_key_b64


def test_joining_again_keeps_the_identity(served: tuple[Any, Tap, str], cli_env: Any) -> None:
    app, _tap, url = served
    env = cli_env("twice")
    first = barnraise("join", f"{url}/p/digits", "--name", "Ada", "--yes", env=env)
    assert first.returncode == 0, first.stderr
    second = barnraise("join", f"{url}/p/digits", "--name", "Ada L.", "--yes", env=env)
    assert second.returncode == 0, second.stderr
    assert "already joined digits" in second.stdout and "keeps that identity" in second.stdout
    co = app.coordinator
    with co.store.read() as tx:
        clients = tx.clients(co.project("digits").id)
    assert [c.display_name for c in clients] == ["Ada L."], "one identity, renamed"
    assert clients[0].id in first.stdout and clients[0].id in second.stdout


def test_headless_exits_non_zero_when_the_engine_stops_on_an_error(
    served: tuple[Any, Tap, str], cli_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service manager restarts an engine that exits non-zero: an engine that stopped on
    an unexpected error must not exit 0 as if it had been asked to stop."""
    from app import cli
    from app.contributor.controller import Controller

    _app, _tap, url = served
    env = cli_env("broken")
    assert barnraise("join", f"{url}/p/digits", "--name", "B", "--yes", env=env).returncode == 0
    for name in ("BARNRAISE_DATA_DIR", "BARNRAISE_CONFIG_DIR", "BARNRAISE_CREDENTIALS"):
        monkeypatch.setenv(name, env[name])

    def broken_restore(self: Controller) -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(Controller, "_restore", broken_restore)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(["--headless", "--lease-wait", "1"], out=io.StringIO()) == 1
    assert "the engine stopped: RuntimeError: the disk went away" in err.getvalue()


def test_the_model_cache_is_held_to_its_size(served: tuple[Any, Tap, str], tmp_path: Path) -> None:
    _app, _tap, url = served
    root = tmp_path / "c"
    models = root / "cache" / "models"
    models.mkdir(parents=True)
    old = models / f"{'0' * 64}.safetensors"
    with open(old, "wb") as f:
        f.truncate(70 * 1024 * 1024)  # an old model, larger than the 64 MiB allowed
    os.utime(old, (1, 1))
    c = make_controller(root, settings=running_settings(cache_size_mb=64))
    c.join(f"{url}/p/digits", display_name="tidy")
    events = EventLog()
    _run(c, events)
    try:
        finished = events.wait_for(lambda e: isinstance(e, TaskFinished), 60)
    finally:
        _stop(c)
    assert finished.accepted
    assert not old.exists(), "the least recently used model was removed"
    assert [p.name for p in models.glob("*.safetensors")], "the model in use was kept"


def test_a_task_that_cannot_be_finished_in_time_is_given_back_at_once(tmp_path: Path) -> None:
    """Snoozed for an hour in the middle of a task whose update is useful for 2 minutes: the
    task goes back to the project now, not after the engine's 5-minute hold."""
    app = create_app(tmp_path / "backend", rate=None)
    app.coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        strategy="fedavg",
        hparams={**DEMO_HPARAMS, "max_steps": 3000},
        # Useful for lease_s x (max_staleness + 1) = 120 s while the project has one version.
        settings={**ASYNC_ONE, "max_staleness": 0, "lease_s": 120, "codec": "f32"},
    )
    server = make_server(app, "127.0.0.1", 0, threads=8)
    start_in_thread(server)
    c = make_controller(tmp_path / "c")
    c.join(f"http://127.0.0.1:{bound_port(server)}/p/digits", display_name="sleepy")
    events = EventLog()
    _run(c, events)
    try:
        progress = events.wait_for(lambda e: isinstance(e, Progress) and e.step > 0)
        c.snooze(3600)
        gave_back = events.wait_for(lambda e: isinstance(e, TaskFinished), 30)
        with app.coordinator.store.read() as tx:
            task = tx.task(gave_back.task_id)
    finally:
        _stop(c)
        server.stop()
        app.close()
    assert gave_back.task_id == progress.task_id and not gave_back.accepted
    assert gave_back.reason == "gave_back_late"
    assert task is not None and task.status == "released"
    assert gave_back.at - progress.at < 30, "well before the 300 s hold of a suspended task"


def test_joining_again_while_running_carries_on_with_the_new_token(
    served: tuple[Any, Tap, str], tmp_path: Path
) -> None:
    _app, _tap, url = served
    c = make_controller(tmp_path / "c")
    creds = c.join(f"{url}/p/async", display_name="Ada")
    events = EventLog()
    _run(c, events)
    try:
        first = events.wait_for(lambda e: isinstance(e, TaskFinished) and e.accepted)
        again = c.join(f"{url}/p/async", display_name="Ada L.")  # the old token stops working
        later = events.wait_for(
            lambda e: isinstance(e, TaskFinished) and e.accepted and e.at > first.at + 1, 60
        )
    finally:
        _stop(c)
    assert again.client_id == creds.client_id and again.token != creds.token
    assert later.accepted
    assert not [e for e in events.events if isinstance(e, Error) and e.fatal]
