"""End to end: the real `barnraise` process in a real X server with a real tray host.

Xvfb on a free display, trayer as the system tray, then `barnraise` (no arguments: the
tray). The app reports through BARNRAISE_TRAY_READY_FILE that a tray is available and where
its icon is; xdotool right-clicks the icon; the app logs that its menu opened; ImageMagick's
`import` takes screenshots into tests/e2e/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
TOOLS = ("Xvfb", "trayer", "xdotool", "import")
BARNRAISE = Path(sys.executable).parent / "barnraise"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="needs "
        + ", ".join(t for t in TOOLS if shutil.which(t) is None)
        + " (apt install xvfb trayer xdotool imagemagick)",
    ),
]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def display() -> Iterator[str]:
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    assert number, "Xvfb did not report a display"
    yield f":{number}"
    _stop(xvfb)


def _panel_geometry(env: dict[str, str]) -> tuple[int, int, int, int]:
    found = subprocess.run(
        ["xdotool", "search", "--name", "^panel$"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    best = (0, 0, 0, 0)
    for window in found.stdout.split():
        shell = subprocess.run(
            ["xdotool", "getwindowgeometry", "--shell", window],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        values = dict(line.split("=", 1) for line in shell.split() if "=" in line)
        geometry = (int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"]))
        best = max(best, geometry, key=lambda g: g[2])
    return best


def _shot(env: dict[str, str], name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    subprocess.run(["import", "-window", "root", str(path)], env=env, check=True, timeout=30)
    return path


def test_tray_icon_and_menu_under_xvfb_with_trayer(display, tmp_path):
    env = dict(
        os.environ,
        DISPLAY=display,
        QT_QPA_PLATFORM="xcb",
        BARNRAISE_CONFIG_DIR=str(tmp_path / "config"),
        BARNRAISE_DATA_DIR=str(tmp_path / "data"),
        BARNRAISE_TRAY_READY_FILE=str(tmp_path / "ready.json"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
    )
    (tmp_path / "run").mkdir(mode=0o700)
    # xsetroot is not always there: paint the root with ImageMagick so screenshots read.
    subprocess.run(
        ["display", "-window", "root", "-size", "1280x800", "xc:#3b4252"],
        env=env,
        timeout=10,
        check=False,
    )
    trayer = subprocess.Popen(
        [
            "trayer",
            "--edge",
            "top",
            "--align",
            "right",
            "--widthtype",
            "request",
            "--height",
            "32",
            "--SetDockType",
            "true",
            "--transparent",
            "false",
            "--tint",
            "0x2e3440",
            "--expand",
            "true",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    command = [str(BARNRAISE)] if BARNRAISE.exists() else [sys.executable, "-m", "app.tray"]
    log = tmp_path / "barnraise.log"
    started = time.monotonic()
    with log.open("w") as log_file:
        app = subprocess.Popen(
            [*command, "--credentials", str(tmp_path / "credentials.json")],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(0.5)  # trayer must own the tray selection before Qt asks for it
        ready = tmp_path / "ready.json"
        wait_until(ready.exists, 60, "the tray icon (ready file)", interval=0.1)
        report = json.loads(ready.read_text())
        seconds_to_icon = time.monotonic() - started
        assert report["tray_available"] is True, log.read_text()
        assert report["icon_visible"] is True
        assert "system tray available: True" in log.read_text()
        wait_until(
            lambda: _panel_geometry(env)[2] >= 16, 15, "trayer to lay out the icon", interval=0.1
        )
        time.sleep(0.3)
        _shot(env, "01-tray-icon.png")

        # trayer's "panel" window grows to hold the embedded icon: click the icon's middle.
        x, y, w, h = _panel_geometry(env)
        assert w >= 16, f"trayer shows no icon (panel {w}x{h})"
        cx, cy = x + w // 2, y + h // 2
        subprocess.run(
            ["xdotool", "mousemove", str(cx), str(cy), "click", "3"],
            env=env,
            check=True,
            timeout=10,
        )
        wait_until(
            lambda: "tray menu opened" in log.read_text(),
            15,
            "the tray menu to open on a right click",
            interval=0.1,
        )
        time.sleep(0.7)
        menu_shot = _shot(env, "02-tray-menu.png")
        assert menu_shot.stat().st_size > 0
        subprocess.run(["xdotool", "key", "Escape"], env=env, check=False, timeout=10)

        # A second launch reaches the first and brings its window forward.
        second = subprocess.run(
            [*command, "--credentials", str(tmp_path / "credentials.json")],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        time.sleep(1.5)
        _shot(env, "03-window-forward.png")
        (ARTIFACTS / "timing.txt").write_text(
            f"seconds from launch to tray icon: {seconds_to_icon:.2f} (app: {report['seconds_to_icon']})\n"
        )
    finally:
        _stop(app)
        _stop(trayer)
    assert app.returncode == 0, log.read_text()
