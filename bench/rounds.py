"""Wall time per model version with N contributor engines on loopback, against pure training.

    python -m bench.rounds [--contributors 10] [--versions 10]

A real coordinator (the embedded server on loopback) hosts digits-mlp in sync mode with one round per
N updates; N contributor engines (the same Controller that `barnraise --headless` runs,
each with its own long-lived training child) join and train one local epoch per task.
After a warm-up version, the bench times ``--versions`` versions. In the same run it
measures the pure training time of the same work: the N shards' one-epoch local training
done back to back in this process, with no HTTP, no child process and no engine.

Prints a markdown table. Aim: under 0.5 s per version on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from app.contributor.controller import Controller, EngineOptions, EnginePaths
from app.contributor.credentials import FileCredentialStore
from app.contributor.sensors import FakeSensors
from app.contributor.settings import default_settings
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app
from federated.recipes import get_recipe
from federated.training import train_locally

HPARAMS: dict[str, Any] = {"lr": 0.1, "batch_size": 32, "local_epochs": 1.0, "hidden": 64}


def pure_training_s(contributors: int, repeats: int = 3) -> float:
    """One version's training, serially, in this process (best of ``repeats``)."""
    torch.set_num_threads(1)
    recipe = get_recipe("digits-mlp")
    hp = recipe.resolve_hparams({**HPARAMS, "num_shards": contributors})
    base = recipe.initial_state(hp)
    shards = [recipe.load_shard(hp, i) for i in range(contributors)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i, data in enumerate(shards):
            train_locally(recipe, hp, base, data, seed=i)
        best = min(best, time.perf_counter() - started)
    return best


def wait_version(co: Any, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        seen = co.notifier.generation("digits")
        if co.project("digits").current_version >= target:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise SystemExit(f"version {target} did not arrive within {timeout:.0f}s")
        co.notifier.wait("digits", seen, 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contributors", type=int, default=10)
    parser.add_argument("--versions", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n = args.contributors
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        app = create_app(tmp / "backend", rate=None)
        app.coordinator.create_project(
            "digits",
            recipe="digits-mlp",
            strategy="fedavg",
            hparams={**HPARAMS, "num_shards": n},
            settings={"mode": "sync", "clients_per_round": n, "min_updates": n, "codec": "int8"},
        )
        server = make_server(app, "127.0.0.1", 0, threads=max(32, 3 * n))
        start_in_thread(server)
        url = f"http://127.0.0.1:{bound_port(server)}/p/digits"
        settings = default_settings().updated(
            {
                "idle_minutes_before_start": 0,
                "idle.cpu_cores": 1,
                "idle.cpu_percent": 100,
                "other_cpu_suspend_percent": 100,
                "other_cpu_resume_percent": 99,
            }
        )
        sensors = FakeSensors(
            idle_seconds=1e6, on_battery=False, other_cpu_percent=0.0, cpu_count=psutil.cpu_count()
        )
        controllers = []
        for i in range(n):
            c = Controller(
                credentials=FileCredentialStore(tmp / f"c{i}" / "credentials.json"),
                paths=EnginePaths(tmp / f"c{i}"),
                settings=settings,
                sensors=sensors,
                options=EngineOptions(lease_wait_s=25),
            )
            c.join(url, display_name=f"bench-{i}")
            controllers.append(c)
        co = app.coordinator
        try:
            for c in controllers:
                c.start()
            wait_version(co, 1, timeout=600)  # warm-up: children started, data loaded
            start_version = co.project("digits").current_version
            started = time.perf_counter()
            ended = wait_version(co, start_version + args.versions, timeout=600)
        finally:
            for c in controllers:
                c.stop()
            for c in controllers:
                c.wait(60)
            accuracy = co.stats(co.project("digits"))["versions"][-1]["metrics"].get(
                "accuracy", float("nan")
            )
            server.stop()
            app.close()
        per_version = (ended - started) / args.versions
    pure = pure_training_s(n)
    cores = psutil.cpu_count()
    print(
        f"## Rounds: {n} contributor engines on loopback, digits-mlp, one local epoch each ({cores} CPUs)\n"
    )
    print("| measure | seconds per version |")
    print("| --- | --- |")
    print(
        f"| wall time per version (sync round of {n} updates, {args.versions} versions) | {per_version:.3f} |"
    )
    print(f"| pure training of the same work, serial in one process | {pure:.3f} |")
    print(f"| pure training / {cores} cores (ideal parallel) | {pure / cores:.3f} |")
    print(f"| overhead per version (wall - pure/{cores}) | {per_version - pure / cores:.3f} |")
    print(
        f"\nfinal accuracy {accuracy:.3f}; load average {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
