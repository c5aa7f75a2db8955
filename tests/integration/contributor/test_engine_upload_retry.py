"""A trained update the coordinator cannot take yet is kept and sent again, not retrained."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine_e2e_helpers import EventLog, make_controller

from app.contributor.client import RetryPolicy
from app.contributor.events import EngineState, Error, StateChanged, TaskFinished
from backend.cli import DEMO_HPARAMS
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app


class RefuseFirstUploads:
    """WSGI middleware: answer the first ``count`` update uploads 503, as an overloaded
    coordinator or proxy would; everything else reaches the real app."""

    def __init__(self, app: Callable[..., Iterable[bytes]], count: int) -> None:
        self.app, self.left, self.lock = app, count, threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].endswith("/update"):
            with self.lock:
                refuse, self.left = self.left > 0, self.left - 1
            if refuse:
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                body = b'{"error": {"code": "unavailable", "message": "try again"}}'
                start_response(
                    "503 Service Unavailable",
                    [("Content-Type", "application/json"), ("Retry-After", "0")],
                )
                return [body]
        return self.app(environ, start_response)


def test_unsent_update_is_uploaded_after_the_backoff_without_retraining(tmp_path: Path) -> None:
    app = create_app(tmp_path / "backend", rate=None)
    app.coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        strategy="fedavg",
        hparams=DEMO_HPARAMS,
        settings={"mode": "sync", "clients_per_round": 1, "min_updates": 1, "codec": "int8"},
    )
    attempts = 2
    server = make_server(RefuseFirstUploads(app, count=attempts), "127.0.0.1", 0, threads=8)
    start_in_thread(server)
    url = f"http://127.0.0.1:{bound_port(server)}"
    c = make_controller(
        tmp_path / "c", retry=RetryPolicy(attempts=attempts, base_s=0.01, cap_s=0.05)
    )
    c.join(f"{url}/p/digits", display_name="patient")
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        finished = events.wait_for(lambda e: isinstance(e, TaskFinished), timeout=120)
        assert finished.accepted
        failures = [e for e in events.events if isinstance(e, Error)]
        assert failures, "the refused uploads were reported"
        before = [e for e in events.events if isinstance(e, StateChanged) and e.at <= finished.at]
        trainings = [e for e in before if e.state == EngineState.TRAINING]
        uploads = [e for e in before if e.state == EngineState.UPLOADING]
        assert len(trainings) == 1, "the update was trained once"
        assert len(uploads) == 2, "and sent twice: refused, then accepted after the backoff"
        assert {e.task_id for e in trainings + uploads} == {finished.task_id}
        stats = app.coordinator.stats(app.coordinator.project("digits"))
        assert stats["updates_accepted"] >= 1 and stats["updates_rejected"] == 0
    finally:
        c.stop()
        assert c.wait(60)
        server.stop()
        app.close()
