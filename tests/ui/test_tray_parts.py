"""Parts without windows: autostart on three platforms, notifications, GPU parsing, the
single instance, the status model, and the rule that the tray never imports torch."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.tray import autostart
from app.tray.gpus import parse_nvidia_smi
from app.tray.notifications import BURST, ERROR_REPEAT_S, Notifier

REPO = Path(__file__).resolve().parents[2]


def test_xdg_autostart_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    where = autostart.set_autostart(
        True, platform="linux", command=["/opt/Barn Raise/barnraise", "--minimized"]
    )
    path = tmp_path / "autostart" / "org.barnraise.Barnraise.desktop"
    assert where == str(path) and autostart.autostart_enabled(platform="linux")
    text = path.read_text()
    assert 'Exec="/opt/Barn Raise/barnraise" --minimized' in text
    assert autostart.set_autostart(True, platform="linux") == str(path)  # idempotent
    autostart.set_autostart(False, platform="linux")
    autostart.set_autostart(False, platform="linux")
    assert not path.exists() and not autostart.autostart_enabled(platform="linux")


def test_desktop_file_validates(tmp_path, monkeypatch):
    import shutil

    import pytest

    tool = shutil.which("desktop-file-validate")
    if tool is None:
        pytest.skip("desktop-file-validate is not installed (apt install desktop-file-utils)")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = autostart.set_autostart(True, platform="linux")
    result = subprocess.run([tool, path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_macos_launch_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    where = autostart.set_autostart(
        True, platform="darwin", command=["/Applications/Barnraise.app/Contents/MacOS/Barnraise"]
    )
    plist = plistlib.loads(Path(where).read_bytes())
    assert plist["Label"] == "org.barnraise.Barnraise" and plist["RunAtLoad"] is True
    assert plist["ProgramArguments"] == ["/Applications/Barnraise.app/Contents/MacOS/Barnraise"]
    assert Path(where).parent == tmp_path / "Library" / "LaunchAgents"
    autostart.set_autostart(False, platform="darwin")
    assert not Path(where).exists()


def test_windows_run_key(monkeypatch):
    """HKCU\\...\\Run through a stand-in winreg (the real one exists only on Windows)."""
    import types

    values: dict[str, str] = {}

    class Key:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.SimpleNamespace(
        HKEY_CURRENT_USER=1,
        REG_SZ=1,
        CreateKey=lambda root, path: Key(),
        OpenKey=lambda root, path: Key(),
        SetValueEx=lambda key, name, _r, _t, value: values.__setitem__(name, value),
        DeleteValue=lambda key, name: values.pop(name),
        QueryValueEx=lambda key, name: (
            (values[name], 1) if name in values else (_ for _ in ()).throw(FileNotFoundError())
        ),
    )
    monkeypatch.setitem(sys.modules, "winreg", fake)
    where = autostart.set_autostart(
        True,
        platform="win32",
        command=["C:\\Program Files\\Barnraise\\barnraise.exe", "--minimized"],
    )
    assert where.endswith("CurrentVersion\\Run\\Barnraise")
    assert values["Barnraise"] == '"C:\\Program Files\\Barnraise\\barnraise.exe" --minimized'
    assert autostart.autostart_enabled(platform="win32")
    autostart.set_autostart(False, platform="win32")
    assert values == {}


def test_notifications_never_spam():
    clock = [0.0]
    shown = []
    notifier = Notifier(lambda t, m, k: shown.append(t), clock=lambda: clock[0])
    assert notifier.error("coordinator unreachable", "unavailable")
    assert not notifier.error("coordinator unreachable", "unavailable")  # same error again
    clock[0] += ERROR_REPEAT_S + 1
    assert notifier.error("coordinator unreachable", "unavailable")
    assert notifier.update_accepted("digits")
    assert not notifier.update_accepted("digits")  # only the first
    clock[0] += 1000
    for i in range(BURST + 3):
        notifier.project_joined(f"p{i}")
    assert len(shown) == 3 + BURST
    notifier.enabled = False
    clock[0] += 1000
    assert not notifier.project_joined("quiet")


def test_parse_nvidia_smi():
    out = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA GeForce RTX 4090, 24564\nbad line\n"
    gpus = parse_nvidia_smi(out)
    assert [(g.index, g.name, g.memory_mb) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559),
        (1, "NVIDIA GeForce RTX 4090", 24564),
    ]


def test_single_instance_forwards_to_the_first(qtbot, tmp_path):
    """A second process fails to take the lock and hands its request to the first."""
    from app.tray.instance import SingleInstance

    first = SingleInstance(tmp_path)
    assert first.acquire()
    second = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from PySide6.QtCore import QCoreApplication
        app = QCoreApplication([])
        from app.tray.instance import SingleInstance
        other = SingleInstance(Path(sys.argv[1]))
        print("acquired" if other.acquire() else "refused")
        print("sent" if other.send({"command": "join", "url": "https://x.org/p/digits"}) else "unanswered")
        """
    )
    try:
        with qtbot.waitSignal(first.message, timeout=20_000) as got:
            proc = subprocess.Popen(
                [sys.executable, "-c", second, str(tmp_path)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            qtbot.waitUntil(lambda: proc.poll() is not None, timeout=20_000)
        assert proc.stdout is not None and proc.stdout.read().split() == ["refused", "sent"]
        assert got.args == [{"command": "join", "url": "https://x.org/p/digits"}]
    finally:
        first.release()
    third = SingleInstance(tmp_path)  # the lock is free again
    assert third.acquire()
    third.release()


def test_the_tray_process_never_imports_torch(tmp_path):
    """Build every window in a fresh interpreter (tests/conftest.py imports torch here)."""
    script = textwrap.dedent(
        """
        import os, sys, json
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        from app.tray.adapter import make_engine
        from app.tray.tray import TrayApp
        engine = make_engine(credentials_file=__import__("pathlib").Path(sys.argv[1]))
        tray = TrayApp(engine, tray_available=True, gpus=[])
        tray.start(show_window=True)
        tray.open_join()
        tray.open_preferences()
        for _ in range(20):
            app.processEvents()
        tray.dashboard._confirm_leave()
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print(json.dumps({"engine": type(engine).__name__, "torch": bad}))
        tray.shutdown()
        """
    )
    env = dict(
        os.environ, BARNRAISE_CONFIG_DIR=str(tmp_path / "c"), BARNRAISE_DATA_DIR=str(tmp_path / "d")
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "creds.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"engine": "ControllerEngine", "torch": []}, result.stderr


def test_status_model_text():
    from app.contributor.events import EngineState, Progress, StateChanged
    from app.tray.status import StatusModel, TrayLook

    model = StatusModel()
    model.apply(
        StateChanged(
            state=EngineState.WAITING, previous=EngineState.IDLE, reasons=("outside schedule",)
        )
    )
    assert model.status_line() == "Waiting (outside schedule)" and model.look is TrayLook.IDLE
    model.apply(
        StateChanged(
            state=EngineState.SUSPENDED, previous=EngineState.TRAINING, reasons=("too hot",)
        )
    )
    assert model.look is TrayLook.THROTTLED
    model.apply(
        StateChanged(state=EngineState.TRAINING, previous=EngineState.SUSPENDED, project="digits")
    )
    model.apply(
        Progress(
            project="digits",
            task_id="t",
            step=1,
            total_steps=4,
            examples=16,
            loss=1.0,
            examples_per_second=10,
        )
    )
    assert model.status_line() == "Training — 25%"
    model.apply(StateChanged(state=EngineState.BACKOFF, previous=EngineState.TRAINING))
    assert model.look is TrayLook.ERROR and model.progress is None


@pytest.mark.slow
def test_the_running_engine_keeps_torch_out_of_the_tray(tmp_path):
    """With the engine started and its trainer child up, the tray process still has no torch."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from app.tray.adapter import make_engine
        engine = make_engine(credentials_file=Path(sys.argv[1]))
        engine.start()
        deadline = time.monotonic() + 60
        while not engine.controller.trainer.ready and time.monotonic() < deadline:
            time.sleep(0.1)  # until the child's "ready" message has been read
        print(json.dumps({"trainer": engine.controller.trainer.ready, "torch": "torch" in sys.modules}))
        engine.stop()
        """
    )
    env = dict(
        os.environ, BARNRAISE_CONFIG_DIR=str(tmp_path / "c"), BARNRAISE_DATA_DIR=str(tmp_path / "d")
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "creds.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"trainer": True, "torch": False}
