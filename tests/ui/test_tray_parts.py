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


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"PK\x03\x04 a zip file, not a database " * 40, "is not a Barnraise ledger"),
        (b"", "is empty (0 bytes)"),
    ],
    ids=["not-sqlite", "zero-bytes"],
)
def test_a_damaged_ledger_is_shown_and_the_tray_exits_non_zero(tmp_path, content, problem):
    """The real tray process, offscreen: no traceback, a window that names the file and
    says what to do, staying until closed, then a non-zero exit; the file is left as is."""
    import signal
    import time

    from app.tray.application import EXIT_CANNOT_START

    data = tmp_path / "data"
    data.mkdir()
    ledger = data / "ledger.sqlite"
    ledger.write_bytes(content)
    ready = tmp_path / "ready.json"
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        BARNRAISE_CONFIG_DIR=str(tmp_path / "config"),
        BARNRAISE_DATA_DIR=str(data),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.tray",
            "--credentials",
            str(tmp_path / "creds.json"),
            "--ready-file",
            str(ready),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the process to report, not for time to pass
        assert ready.exists(), f"no report; rc={proc.poll()}"
        report = json.loads(ready.read_text())
        assert proc.poll() is None, "the message waits for the volunteer to read it"
        proc.send_signal(signal.SIGTERM)  # as closing it would
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_CANNOT_START != 0
    assert "Traceback" not in stderr, stderr
    assert f"barnraise: the contribution ledger {ledger} {problem}" in stderr
    dialog = report["dialog"]
    assert dialog["visible"] and dialog["title"] == "Barnraise cannot start"
    assert dialog["text"].startswith(f"The contribution ledger {ledger} {problem}")
    assert "Move it aside" in dialog["text"] and "start Barnraise again" in dialog["text"]
    assert report["error"] in stderr
    assert ledger.read_bytes() == content  # never wiped or replaced


def test_status_model_text():
    from app.contributor.events import EngineState, Progress, StateChanged
    from app.tray.status import StatusModel, TrayLook

    model = StatusModel()
    model.apply(
        StateChanged(
            state=EngineState.WAITING, previous=EngineState.IDLE, reasons=("outside the schedule",)
        )
    )
    assert model.status_line() == "Waiting: outside your schedule" and model.look is TrayLook.IDLE
    model.apply(
        StateChanged(
            state=EngineState.SUSPENDED, previous=EngineState.TRAINING, reasons=("CPU too hot",)
        )
    )
    assert model.status_line() == "Waiting: the computer is too hot"
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
    assert model.status_line() == "Waiting to try again"


@pytest.mark.parametrize(
    ("reasons", "line"),
    [
        # The engine's own words (app/contributor/policy.py), as the volunteer reads them.
        (("idle time unknown (treated as in use)",), "Waiting: you're using the computer"),
        (("you are using the computer",), "Waiting: you're using the computer"),
        (("power source unknown (treated as battery)",), "Waiting: on battery"),
        (("paused", "on battery"), "Waiting: on battery"),
        (("outside the schedule", "on battery"), "Waiting: outside your schedule"),
        (("a reason from a newer engine",), "Waiting: a reason from a newer engine"),
        ((), "Waiting"),
    ],
)
def test_status_line_is_plain_and_short(reasons, line):
    from app.contributor.events import EngineState, StateChanged
    from app.tray.status import STATUS_MAX_CHARS, StatusModel

    model = StatusModel()
    model.apply(StateChanged(state=EngineState.WAITING, previous=EngineState.IDLE, reasons=reasons))
    assert model.status_line() == line
    assert "(" not in model.status_line() and len(model.status_line()) <= STATUS_MAX_CHARS
    if len(reasons) > 1 and "paused" not in reasons:
        assert "Why: outside your schedule, on battery" in model.tooltip()


def test_throttled_training_says_so_briefly_and_the_tooltip_says_why():
    from app.contributor.events import EngineState, PolicyChanged, StateChanged
    from app.tray.status import StatusModel

    model = StatusModel()
    model.apply(
        PolicyChanged(action="throttle", reasons=("idle time unknown (treated as in use)",))
    )
    model.apply(StateChanged(state=EngineState.TRAINING, previous=EngineState.DOWNLOADING))
    assert model.status_line() == "Training slowly"
    assert "Why: you're using the computer" in model.tooltip()


def test_offline_is_its_own_state_not_asking_for_work():
    from app.contributor.events import EngineState, Error, StateChanged
    from app.tray.status import StatusModel, TrayLook

    model = StatusModel()
    model.apply(StateChanged(state=EngineState.OFFLINE, previous=EngineState.LEASING))
    # The engine reports the network error right after the state: the line stays plain.
    model.apply(Error(message="can't reach the server of digits; retrying in 8s", code="x"))
    assert model.offline and model.status_line() == "Can't reach the server"
    assert model.look is TrayLook.ERROR
    model.apply(StateChanged(state=EngineState.LEASING, previous=EngineState.OFFLINE))
    assert not model.offline and model.status_line() == "Asking for work"


def test_a_long_error_makes_a_short_status_line():
    from app.contributor.events import Error
    from app.tray.status import STATUS_MAX_CHARS, StatusModel

    model = StatusModel()
    model.apply(Error(message="the coordinator said: " + "very long words " * 300))
    line = model.status_line()
    assert line.startswith("Problem: the coordinator said: very long")
    assert line.endswith("…") and len(line) <= STATUS_MAX_CHARS
    model.apply(Error(message="x" * 5000))  # no space to cut at
    assert len(model.status_line()) <= STATUS_MAX_CHARS


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


def test_the_adapter_reads_closed_projects_and_key_changes_from_the_engine(tmp_path, monkeypatch):
    """ControllerEngine.snapshot() carries the engine's per-project closed flag and key
    change (the fields the tray shows) into the port's JoinedProject."""
    from app.contributor.snapshot import EngineSnapshot as EngineStatus
    from app.tray.adapter import ControllerEngine
    from app.tray.engine_port import KeyChangeNotice

    monkeypatch.setenv("BARNRAISE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BARNRAISE_CONFIG_DIR", str(tmp_path / "config"))
    engine = ControllerEngine(credentials_file=tmp_path / "creds.json")
    real = engine.controller.snapshot()
    base = {"server_url": "https://barn.example.org", "credit": 0, "tasks": 0, "rank": None}
    change = {
        "project": "digits",
        "pinned_fingerprint": "aa:bb",
        "new_fingerprint": "cc:dd",
        "new_public_key_b64": "x",
    }
    raw = {
        **real,
        "projects": [
            {**base, "project": "digits", "disabled": "untrusted", "key_change": change},
            {**base, "project": "done", "closed": True, "key_change": None},
            {**base, "project": "busy"},
        ],
    }
    # The engine's typed snapshot, as read back from the control channel's JSON.
    monkeypatch.setattr(engine.controller, "status", lambda: EngineStatus.from_json(raw))
    projects = {p.name: p for p in engine.snapshot().projects}
    assert projects["digits"].key_change == KeyChangeNotice(
        project="digits",
        pinned_fingerprint="aa:bb",
        new_fingerprint="cc:dd",
        server_url="https://barn.example.org",
    )
    assert projects["digits"].state == "stopped: untrusted" and not projects["digits"].closed
    assert projects["done"].closed and projects["done"].key_change is None
    assert not projects["busy"].closed and projects["busy"].key_change is None
