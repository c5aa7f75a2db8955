"""Idle time on X11 desktops without a D-Bus idle monitor (XFCE, MATE, Cinnamon, i3, …).

``X11ScreenSaverIdle().idle_seconds()`` asks the X server's MIT-SCREEN-SAVER extension
(``XScreenSaverQueryInfo`` in libXss, through ctypes) how long since the last keyboard or
pointer input. It answers None, never raises and never exits the process, when there is no
``$DISPLAY``, the session is Wayland (an X server there is XWayland, which sees only the
input of X programs, so it would call a busy computer idle), libX11 or libXss is missing,
the server cannot be reached or lacks the extension.

Each reading opens its own connection and closes it: Xlib's default handler for a lost
connection exits the process, and a connection held between readings is one the X server
can drop at any time (a logout, a restarted server). The extension is checked before the
query, because a query the server does not know is a protocol error, whose default handler
exits too. No Qt here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Mapping

__all__ = ["X11ScreenSaverIdle", "x11_session"]

log = logging.getLogger(__name__)

# Tried in order: the runtime sonames first (no -dev package needed), then whatever the
# linker's search finds.
X11_LIBRARIES = ("libX11.so.6", "libX11.so")
XSS_LIBRARIES = ("libXss.so.1", "libXss.so")


class _ScreenSaverInfo(ctypes.Structure):
    """``XScreenSaverInfo`` from <X11/extensions/scrnsaver.h>."""

    _fields_ = [
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),  # milliseconds since the last input
        ("eventMask", ctypes.c_ulong),
    ]


def x11_session(environ: Mapping[str, str] | None = None) -> str | None:
    """The X display to ask, or None when this is not an X11 session (no ``$DISPLAY``, or a
    Wayland session, whose XWayland does not see the input of Wayland programs)."""
    env = os.environ if environ is None else environ
    display = env.get("DISPLAY", "")
    if not display:
        return None
    if env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return None
    return display


def _load(names: tuple[str, ...], short: str) -> ctypes.CDLL | None:
    found = ctypes.util.find_library(short)
    for name in (*names, *([found] if found else [])):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class X11ScreenSaverIdle:
    """Seconds since the last input on the X display, from the MIT-SCREEN-SAVER extension.

    ``display``: the display to ask (default: ``$DISPLAY`` at each reading, unless this is
    a Wayland session). The libraries are loaded on the first reading; when either is
    missing this source answers None from then on (and says so once in the log).
    """

    def __init__(
        self,
        display: str | None = None,
        *,
        x11_libraries: tuple[str, ...] = X11_LIBRARIES,
        xss_libraries: tuple[str, ...] = XSS_LIBRARIES,
    ) -> None:
        self._display = display
        self._x11_names = x11_libraries
        self._xss_names = xss_libraries
        self._libs: tuple[ctypes.CDLL, ctypes.CDLL] | None = None
        self._missing = False
        self._lock = threading.Lock()  # one Xlib call sequence at a time

    def _libraries(self) -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
        if self._libs is not None or self._missing:
            return self._libs
        x11 = _load(self._x11_names, "X11")
        xss = _load(self._xss_names, "Xss")
        if x11 is None or xss is None:
            self._missing = True
            log.info(
                "idle time from X11 unavailable: %s not found (install libxss1)",
                "libX11" if x11 is None else "libXss",
            )
            return None
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        x11.XDefaultRootWindow.restype = ctypes.c_ulong
        x11.XFree.argtypes = [ctypes.c_void_p]
        xss.XScreenSaverQueryExtension.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_int),
        ]
        xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_ScreenSaverInfo)
        xss.XScreenSaverQueryInfo.argtypes = [
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.POINTER(_ScreenSaverInfo),
        ]
        self._libs = (x11, xss)
        return self._libs

    def idle_seconds(self) -> float | None:
        display = self._display if self._display is not None else x11_session()
        if not display:
            return None
        with self._lock:
            libs = self._libraries()
            if libs is None:
                return None
            x11, xss = libs
            connection = x11.XOpenDisplay(display.encode())
            if not connection:
                return None  # no server there, or not allowed to connect
            try:
                event_base, error_base = ctypes.c_int(), ctypes.c_int()
                if not xss.XScreenSaverQueryExtension(
                    connection, ctypes.byref(event_base), ctypes.byref(error_base)
                ):
                    return None
                info = xss.XScreenSaverAllocInfo()
                if not info:
                    return None
                try:
                    root = x11.XDefaultRootWindow(connection)
                    if not xss.XScreenSaverQueryInfo(connection, root, info):
                        return None
                    return float(info.contents.idle) / 1000.0
                finally:
                    x11.XFree(info)
            finally:
                x11.XCloseDisplay(connection)
