"""The demo: a `digits` project served on loopback with K in-process contributors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, TextIO

from backend.demo_clients import DemoContributor
from backend.demo_headless import (
    DEMO_HPARAMS,
    DEMO_PROJECT,
    HeadlessContributor,
    barnraise_command,
)
from backend.demo_privacy import budget_line, privacy_settings
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app

DEMO_TIMEOUT_S = 600.0
"""The demo gives up (exit 1) if the rounds asked for take longer than this."""


def run_demo(
    data_dir: Path,
    *,
    rounds: int | None,
    contributors: int = 3,
    mode: str = "sync",
    port: int = 0,
    out: TextIO | None = None,
    kind: str = "auto",
    privacy: str = "none",
) -> dict[str, Any]:
    """Serve a demo project and run ``contributors`` volunteers against it.

    ``kind``: ``headless`` (real `barnraise --headless` processes), ``in-process`` (simple
    clients speaking the same API), or ``auto`` (headless when the app is installed).
    """
    started = time.monotonic()
    app = create_app(data_dir, rate=None)
    coordinator = app.coordinator
    names = {p.name for p in coordinator.projects()}
    if DEMO_PROJECT not in names:
        coordinator.create_project(
            DEMO_PROJECT,
            recipe="digits-mlp",
            strategy="fedavg",
            hparams=DEMO_HPARAMS,
            settings={
                "mode": mode,
                "clients_per_round": contributors,
                "min_updates": contributors,
                "buffer_size": contributors,
                "codec": "int8",
                **privacy_settings(privacy, rounds=rounds, hparams=DEMO_HPARAMS),
            },
        )
    server = make_server(app, "127.0.0.1", port)
    start_in_thread(server)
    base = app.public_url = f"http://127.0.0.1:{bound_port(server)}"

    def say(text: str) -> None:
        if out is not None:
            print(text, file=out, flush=True)

    say(f"leaderboard: {base}/p/{DEMO_PROJECT}")
    stop = threading.Event()
    command = barnraise_command() if kind != "in-process" else None
    if kind == "headless" and command is None:
        raise RuntimeError("`barnraise` (the contributor app) is not installed beside this backend")
    clients: list[DemoContributor | HeadlessContributor] = []
    threads: list[threading.Thread] = []
    for i in range(contributors):
        name, team = f"contributor-{i + 1}", "demo" if i % 2 == 0 else None
        if command is not None:
            volunteer = HeadlessContributor(
                command, data_dir / "contributors" / name, f"{base}/p/{DEMO_PROJECT}", name, team
            )
            volunteer.start()
            clients.append(volunteer)
        else:
            simple = DemoContributor(base, DEMO_PROJECT, name, team=team)
            clients.append(simple)
            threads.append(threading.Thread(target=simple.run, args=(stop,), daemon=True))
    say(
        f"contributors: {contributors} x "
        + ("`barnraise --headless`" if command is not None else "in-process demo clients")
    )
    for t in threads:
        t.start()

    def all_gone() -> bool:
        if command is not None:
            return not any(c.alive() for c in clients if isinstance(c, HeadlessContributor))
        return any(c.errors for c in clients) and not any(t.is_alive() for t in threads)

    project = coordinator.project(DEMO_PROJECT)
    shown = project.current_version
    target = None if rounds is None else project.current_version + rounds
    last: dict[str, Any] = {}
    ok = True
    try:
        while True:
            seen = coordinator.notifier.generation(DEMO_PROJECT)
            stats = coordinator.stats(coordinator.project(DEMO_PROJECT))
            for v in stats["versions"]:
                if v["version"] > shown:
                    shown = v["version"]
                    last = v
                    acc = v["metrics"].get("accuracy")
                    view = coordinator.project_view(coordinator.project(DEMO_PROJECT))
                    say(
                        f"version {v['version']}: accuracy {acc:.3f}, contributors "
                        f"{v['contributors']}, updates {v['updates']}{budget_line(view)}"
                    )
            if target is not None and shown >= target:
                break
            if all_gone():
                ok = False
                break
            if target is not None and time.monotonic() - started > DEMO_TIMEOUT_S:
                ok = False
                break
            coordinator.notifier.wait(DEMO_PROJECT, seen, 1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for c in clients:
            if isinstance(c, HeadlessContributor):
                c.stop()
        final = coordinator.stats(coordinator.project(DEMO_PROJECT))
        spent = coordinator.project_view(coordinator.project(DEMO_PROJECT)).get("privacy_spent")
        server.stop()
        app.close()
        for t in threads:
            t.join(timeout=10)
    return {
        "ok": ok,
        "project": DEMO_PROJECT,
        "mode": mode,
        "versions": final["current_version"],
        "final_accuracy": (last.get("metrics") or {}).get("accuracy"),
        "contributors": final["contributors"],
        "updates_accepted": final["updates_accepted"],
        "updates_rejected": final["updates_rejected"],
        "total_credit": final["total_credit"],
        "credit_unit": final["credit_unit"],
        "seconds": round(time.monotonic() - started, 3),
        "data_dir": str(data_dir),
        "client_errors": [e for c in clients for e in c.errors],
        "privacy": privacy,
        "epsilon_spent": spent["epsilon"] if spent else None,
    }
