"""The demo: a `digits` project served on loopback with K in-process contributors."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from backend.demo_clients import DemoContributor
from backend.demo_headless import HeadlessContributor, barnraise_command
from backend.demo_privacy import budget_line, privacy_settings
from backend.demo_projects import demo_project
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app

DEMO_TIMEOUT_S = 600.0
"""The demo gives up (exit 1) if the rounds asked for take longer than this."""

DEMO_PORT_FILE = "demo-port"
"""In the data folder: the port its last demo served on, taken again when free, so the
page's address and the contributors' joins stay good from one run to the next."""


def demo_port(data_dir: Path, asked: int) -> int:
    """The port to serve on: ``asked``, else (0) the folder's last one when free, else 0
    (any free port; the headless contributors then join again)."""
    if asked:
        return asked
    try:
        saved = int((data_dir / DEMO_PORT_FILE).read_text())
    except (OSError, ValueError):
        return 0
    with socket.socket() as probe:  # as the server binds: SO_REUSEADDR, so TIME_WAIT is no bar
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", saved))
        except OSError:
            return 0
    return saved


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
    recipe: str = "digits-mlp",
    until_loss: float | None = None,
) -> dict[str, Any]:
    """Serve a demo project and run ``contributors`` volunteers against it.

    ``kind``: ``headless`` (real `barnraise --headless` processes), ``in-process`` (simple
    clients speaking the same API), or ``auto`` (headless when the app is installed).
    ``recipe`` byte-lm: a language model trained with DiLoCo (``demo_lm``). The demo ends
    after ``rounds`` versions or, with ``until_loss``, at the first version whose
    held-out loss is below it.
    """
    started = time.monotonic()
    app = create_app(data_dir, rate=None)
    coordinator = app.coordinator
    names = {p.name for p in coordinator.projects()}
    demo = demo_project(recipe, contributors)
    project_name = demo.name
    if project_name not in names:
        coordinator.create_project(
            project_name,
            recipe=demo.recipe,
            strategy=demo.strategy,
            strategy_params=demo.strategy_params,
            hparams=demo.hparams,
            settings={
                "mode": mode,
                "clients_per_round": contributors,
                "min_updates": contributors,
                "buffer_size": contributors,
                "codec": "int8",
                **demo.settings,
                **privacy_settings(privacy, rounds=rounds, hparams=demo.hparams),
            },
        )
    server = make_server(app, "127.0.0.1", demo_port(data_dir, port))
    start_in_thread(server)
    base = app.public_url = f"http://127.0.0.1:{bound_port(server)}"
    (data_dir / DEMO_PORT_FILE).write_text(f"{bound_port(server)}\n")

    def say(text: str) -> None:
        if out is not None:
            print(text, file=out, flush=True)

    say(f"leaderboard: {base}/p/{project_name}")
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
                command, data_dir / "contributors" / name, f"{base}/p/{project_name}", name, team
            )
            volunteer.start()
            clients.append(volunteer)
        else:
            simple = DemoContributor(base, project_name, name, team=team)
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

    project = coordinator.project(project_name)
    shown = project.current_version
    target = None if rounds is None else project.current_version + rounds
    last: dict[str, Any] = {}
    ok = True
    try:
        while True:
            seen = coordinator.notifier.generation(project_name)
            stats = coordinator.stats(coordinator.project(project_name))
            for v in stats["versions"]:
                if v["version"] > shown:
                    shown = v["version"]
                    last = v
                    view = coordinator.project_view(coordinator.project(project_name))
                    say(
                        f"version {v['version']}: {demo.progress(v['metrics'])}, contributors "
                        f"{v['contributors']}, updates {v['updates']}{budget_line(view)}"
                    )
            if target is not None and shown >= target:
                break
            loss = (last.get("metrics") or {}).get("loss")
            if until_loss is not None and isinstance(loss, float) and loss < until_loss:
                break
            if all_gone():
                ok = False
                break
            if (target is not None or until_loss is not None) and (
                time.monotonic() - started > DEMO_TIMEOUT_S
            ):
                ok = False
                break
            coordinator.notifier.wait(project_name, seen, 1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for c in clients:
            if isinstance(c, HeadlessContributor):
                c.stop()
        final = coordinator.stats(coordinator.project(project_name))
        spent = coordinator.project_view(coordinator.project(project_name)).get("privacy_spent")
        server.stop()
        app.close()
        for t in threads:
            t.join(timeout=10)
    return {
        "ok": ok,
        "project": project_name,
        "mode": mode,
        "versions": final["current_version"],
        "final_accuracy": (last.get("metrics") or {}).get("accuracy"),
        "final_loss": (last.get("metrics") or {}).get("loss"),
        "recipe": demo.recipe,
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
