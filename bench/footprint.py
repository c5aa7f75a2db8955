"""The tray's footprint idle and while training, and the time from launch to icon.

    python bench/footprint.py [--seconds 30] [--platform offscreen|xcb] [--max-steps N]

Three phases, each a fresh tray (`python -m app.tray`) in private config/data folders:

1. idle: no project joined, icon only (the aims: < 150 MB RSS, < 1 % CPU);
2. training: joined to a real coordinator on loopback (served from this process, one update
   closes a round, so tasks follow one another), icon only, as a volunteer runs it;
3. training with the window open: the same, with the main window and its charts repainting.

Without a system tray (offscreen, or a desktop without one) the app always opens its window,
so phases 2 and 3 are alike there; each phase prints whether its window was open.

Each phase waits until it is in its steady state (the icon is shown; for training, the
coordinator has accepted the phase's first update), then samples for ``--seconds``: the tray
process's RSS and CPU time (psutil, the tray process only; its GUI thread's share apart, as
the engine's network, codec and signing threads run in the tray process too), and its
children apart: the training child (which imports torch; the tray never does) and
multiprocessing's resource tracker. Ratios are against the idle phase of the same run. The
demo's tasks take well under a second, so the engine threads' per-task work is at its most
per second; ``--max-steps N`` sets the task length (2000 steps: about a second on one core).
Under Xvfb + trayer pass --platform xcb with DISPLAY set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.cli import DEMO_HPARAMS  # noqa: E402
from backend.demo_headless import DEMO_CONTRIBUTOR_SETTINGS  # noqa: E402

RSS_AIM_MB = 150
CPU_AIM_PERCENT = 1.0
SETTLE_S = 3.0  # after the steady state is reached: let start-up work finish
START_TIMEOUT_S = 120.0
SAMPLE_S = 0.5
PROJECT = "footprint"


@dataclass
class Phase:
    name: str
    to_icon_s: float
    app_to_icon_s: float
    tray_available: bool
    rss_mb: float
    peak_rss_mb: float
    cpu_percent: float
    gui_cpu_percent: float  # the main (Qt) thread alone; the rest is the engine's threads
    wall_s: float
    trainer_rss_mb: float
    trainer_cpu_percent: float
    other_children_rss_mb: float
    children: int
    torch_in_tray: bool
    chart_paints: int | None
    accepted: int | None
    window_visible: bool


@contextmanager
def coordinator(folder: Path, max_steps: int) -> Iterator[tuple[str, Any]]:
    """A real coordinator on a free loopback port, in this process; yields (url, app)."""
    from backend.server import bound_port, make_server, start_in_thread
    from backend.wsgi import create_app

    app = create_app(folder / "backend", rate=None)
    app.coordinator.create_project(
        PROJECT,
        recipe="digits-mlp",
        strategy="fedavg",
        hparams={**DEMO_HPARAMS, "max_steps": max_steps},
        settings={"mode": "sync", "clients_per_round": 1, "min_updates": 1, "codec": "int8"},
    )
    server = make_server(app, "127.0.0.1", 0, threads=8)
    start_in_thread(server)
    try:
        yield f"http://127.0.0.1:{bound_port(server)}", app
    finally:
        server.stop()
        app.close()


def accepted(app: Any) -> int:
    co = app.coordinator
    return int(co.stats(co.project(PROJECT))["updates_accepted"])


def volunteer_env(folder: Path, platform: str) -> dict[str, str]:
    config = folder / "config"
    config.mkdir(parents=True)
    # Compute at once, whatever else this machine is doing (as the demo's volunteers do).
    (config / "settings.json").write_text(json.dumps(DEMO_CONTRIBUTOR_SETTINGS))
    os.chmod(config / "settings.json", 0o600)
    return dict(
        os.environ,
        QT_QPA_PLATFORM=platform,
        BARNRAISE_CONFIG_DIR=str(config),
        BARNRAISE_DATA_DIR=str(folder / "data"),
        BARNRAISE_CREDENTIALS=str(folder / "credentials.json"),
        BARNRAISE_TRAY_READY_FILE=str(folder / "ready.json"),
        BARNRAISE_TRAY_STATS_FILE=str(folder / "stats.json"),
        XDG_CONFIG_HOME=str(folder / "xdg"),
    )


def _wait(proc: subprocess.Popen[bytes], done: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not done():
        if proc.poll() is not None:
            raise SystemExit(f"the tray exited with status {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def run_phase(
    name: str,
    folder: Path,
    *,
    platform: str,
    seconds: float,
    show: bool,
    server: tuple[str, Any] | None,
) -> Phase:
    env = volunteer_env(folder, platform)
    if server is not None:
        joined = subprocess.run(
            [sys.executable, "-m", "app.cli", "join", f"{server[0]}/p/{PROJECT}", "--yes",
             "--name", name.replace(" ", "-")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if joined.returncode != 0:
            raise SystemExit(f"{name}: joining failed: {joined.stderr or joined.stdout}")
    ready = folder / "ready.json"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.tray", "--show" if show else "--minimized"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(proc, ready.exists, "showing its icon")
        to_icon = time.monotonic() - started
        report = json.loads(ready.read_text())
        first = None
        if server is not None:
            first = accepted(server[1])
            _wait(proc, lambda: accepted(server[1]) > first, "its first accepted update")
        tray = psutil.Process(proc.pid)
        time.sleep(SETTLE_S)
        children = tray.children(recursive=True)
        cpu_before = tray.cpu_times()
        gui_before = _main_thread_cpu(tray)
        child_cpu_before = {c.pid: sum(c.cpu_times()[:2]) for c in children}
        accepted_before = accepted(server[1]) if server is not None else None
        wall_before = time.monotonic()
        peak_rss = 0
        while time.monotonic() - wall_before < seconds:
            peak_rss = max(peak_rss, tray.memory_info().rss)
            time.sleep(SAMPLE_S)
        wall = time.monotonic() - wall_before
        cpu_after = tray.cpu_times()
        gui_seconds = _main_thread_cpu(tray) - gui_before
        cpu_seconds = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        rss = tray.memory_info().rss
        trainer_rss = other_rss = trainer_cpu = 0.0
        for child in children:
            if not child.is_running():
                continue
            child_rss = child.memory_info().rss / 2**20
            if "resource_tracker" in " ".join(child.cmdline()):
                other_rss += child_rss
            else:
                trainer_rss += child_rss
                trainer_cpu += sum(child.cpu_times()[:2]) - child_cpu_before.get(child.pid, 0.0)
        torch_loaded = any("torch" in m.path for m in tray.memory_maps())
        stats_path = folder / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        window_visible = bool(stats.get("window_visible"))
        paints = stats.get("charts", {}).get("loss", {}).get("paints") if window_visible else None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return Phase(
        name=name,
        to_icon_s=to_icon,
        app_to_icon_s=float(report["seconds_to_icon"]),
        tray_available=bool(report["tray_available"]),
        rss_mb=rss / 2**20,
        peak_rss_mb=peak_rss / 2**20,
        cpu_percent=100.0 * cpu_seconds / wall,
        gui_cpu_percent=100.0 * gui_seconds / wall,
        wall_s=wall,
        trainer_rss_mb=trainer_rss,
        trainer_cpu_percent=100.0 * trainer_cpu / wall,
        other_children_rss_mb=other_rss,
        children=len(children),
        torch_in_tray=torch_loaded,
        chart_paints=paints,
        accepted=accepted(server[1]) - accepted_before
        if server is not None and accepted_before is not None
        else None,
        window_visible=window_visible,
    )


def _main_thread_cpu(process: psutil.Process) -> float:
    """CPU seconds of the process's main thread (on Linux its thread id is the pid)."""
    for thread in process.threads():
        if thread.id == process.pid:
            return float(thread.user_time + thread.system_time)
    return 0.0


def _ratio(value: float, base: float) -> str:
    return f"×{value / base:.1f}" if base > 0 else "×∞"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="sampling time per phase")
    parser.add_argument("--platform", default=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    parser.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="steps per task (0: the demo's tasks, well under a second each: the most "
        "per-task work per second for the tray's engine threads)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="barnraise-footprint-") as tmp:
        folder = Path(tmp)
        common = {"platform": args.platform, "seconds": args.seconds}
        idle = run_phase("idle", folder / "idle", show=False, server=None, **common)
        with coordinator(folder / "coordinator", args.max_steps) as server:
            training = run_phase(
                "training", folder / "training", show=False, server=server, **common
            )
            window = run_phase(
                "training, window open", folder / "window", show=True, server=server, **common
            )

    print(
        f"platform: {args.platform}; tray available: {idle.tray_available}; "
        f"tasks: {args.max_steps or 'demo'} steps"
    )
    print(
        f"launch to tray icon:      {idle.to_icon_s:.2f} s (the app's own count: {idle.app_to_icon_s:.2f} s)"
    )
    print(
        f"idle tray RSS:            {idle.rss_mb:.1f} MB now, {idle.peak_rss_mb:.1f} MB peak (aim < {RSS_AIM_MB} MB)"
    )
    print(
        f"idle tray CPU:            {idle.cpu_percent:.2f} % over {idle.wall_s:.0f} s (aim < {CPU_AIM_PERCENT:g} %); "
        f"GUI thread {idle.gui_cpu_percent:.2f} %"
    )
    print(
        f"idle engine children:     {idle.children}, trainer {idle.trainer_rss_mb:.1f} MB RSS, "
        f"other {idle.other_children_rss_mb:.1f} MB"
    )
    for phase in (training, window):
        print(
            f"-- {phase.name}: {phase.accepted} updates accepted in {phase.wall_s:.0f} s; "
            f"window {'open' if phase.window_visible else 'closed'}"
        )
        print(
            f"   tray RSS:              {phase.rss_mb:.1f} MB now, {phase.peak_rss_mb:.1f} MB peak "
            f"({_ratio(phase.rss_mb, idle.rss_mb)} idle)"
        )
        print(
            f"   tray CPU:              {phase.cpu_percent:.2f} % "
            f"({_ratio(phase.cpu_percent, idle.cpu_percent)} idle); GUI thread "
            f"{phase.gui_cpu_percent:.2f} %, the rest is the engine's threads"
        )
        print(
            f"   training child:        {phase.trainer_rss_mb:.1f} MB RSS "
            f"({_ratio(phase.trainer_rss_mb, idle.trainer_rss_mb)} idle), "
            f"{phase.trainer_cpu_percent:.0f} % CPU"
        )
        if phase.chart_paints is not None:
            print(f"   loss chart paints:     {phase.chart_paints} since start")
    phases = (idle, training, window)
    torch_loaded = any(p.torch_in_tray for p in phases)
    print(f"torch mapped in the tray: {'yes (BUG)' if torch_loaded else 'no'}")
    ok = idle.rss_mb < RSS_AIM_MB and idle.cpu_percent < CPU_AIM_PERCENT and not torch_loaded
    print("result: " + ("within the aims" if ok else "OUTSIDE the aims"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
