"""Idle time from the X server (XFCE, MATE, Cinnamon, i3): a real Xvfb, real input from
xdotool, and every way there is no answer (no display, Wayland, no library, no server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from app.contributor.sensors import FirstKnownIdle, default_idle_source
from app.contributor.x11_idle import X11ScreenSaverIdle, x11_session
from tests.support import wait_until

needs_x = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("xdotool") is None,
    reason="needs Xvfb and xdotool (apt install xvfb xdotool)",
)


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private Xvfb server (its display name), as tests/e2e/test_tray_xvfb.py runs one.

    ``-noreset``: an X server resets (and its idle time with it) when its last client
    leaves; a desktop always has clients (the window manager), this test only short ones."""
    read, write = os.pipe()
    argv = ["Xvfb", "-displayfd", str(write), "-screen", "0", "640x480x24", "-nolisten", "tcp"]
    server = subprocess.Popen(
        [*argv, "-noreset"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    assert number, "Xvfb did not report a display"
    yield f":{number}"
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


def _move_pointer(display: str, x: int, y: int) -> None:
    subprocess.run(
        ["xdotool", "mousemove", str(x), str(y)],
        env={**os.environ, "DISPLAY": display},
        check=True,
        timeout=10,
    )


@needs_x
def test_idle_time_grows_and_drops_when_the_pointer_moves(xvfb: str) -> None:
    source = X11ScreenSaverIdle(xvfb)
    first = source.idle_seconds()
    assert first is not None and first >= 0.0
    # Nobody touches this server: its idle time grows past a second.
    idle = wait_until(
        lambda: (v := source.idle_seconds()) is not None and v >= 1.0 and v,
        30,
        "the X server's idle time to pass one second",
    )
    _move_pointer(xvfb, 100, 120)
    wait_until(
        lambda: (v := source.idle_seconds()) is not None and v < idle,
        10,
        f"the idle time to drop below {idle:.2f} s after moving the pointer",
    )


@needs_x
def test_default_linux_chain_reads_x11_without_a_desktop_bus(
    xvfb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the Linux chain")
    monkeypatch.setenv("DISPLAY", xvfb)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("XDG_SESSION_TYPE", "x11")
    # No session bus: GNOME's and KDE's monitors cannot answer, as on XFCE or i3.
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
    chain = default_idle_source()
    assert isinstance(chain, FirstKnownIdle)
    _move_pointer(xvfb, 10, 10)
    value = chain.idle_seconds()
    assert value is not None and value < 5.0
    assert isinstance(chain._sources[0], X11ScreenSaverIdle)  # remembered as the one that works


def test_not_an_x11_session() -> None:
    assert x11_session({}) is None
    assert x11_session({"DISPLAY": ""}) is None
    assert x11_session({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}) is None
    assert x11_session({"DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}) is None
    assert x11_session({"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"}) == ":0"


def test_unknown_without_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    assert X11ScreenSaverIdle().idle_seconds() is None


def test_unknown_when_no_server_answers() -> None:
    # A display number nobody serves: XOpenDisplay fails, nothing exits the process.
    assert X11ScreenSaverIdle(":987").idle_seconds() is None


@needs_x
def test_unknown_when_the_library_is_missing(xvfb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    source = X11ScreenSaverIdle(xvfb, xss_libraries=("libXss-not-here.so.1",))
    assert source.idle_seconds() is None
    assert source.idle_seconds() is None  # and it does not try to load it again
    assert source._missing
