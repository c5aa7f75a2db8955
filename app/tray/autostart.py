"""Start at login: an XDG autostart entry (Linux), the HKCU Run key (Windows), a LaunchAgent
(macOS). No Qt. Each function is idempotent and says where it wrote.

The command started is ``launch_command()``: the frozen executable of a packaged build, else
this Python running ``-m app.tray``, so a development checkout starts itself too.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import shlex
import sys
from pathlib import Path

__all__ = [
    "APP_ID",
    "autostart_enabled",
    "launch_command",
    "set_autostart",
]

APP_ID = "org.barnraise.Barnraise"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "Barnraise"


def launch_command() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, "--minimized"]
    return [sys.executable, "-m", "app.tray", "--minimized"]


# --- Linux (and other XDG desktops) ---------------------------------------------------------
def xdg_autostart_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "autostart" / f"{APP_ID}.desktop"


def _desktop_entry(command: list[str]) -> str:
    # Desktop Entry spec: Exec arguments are quoted with double quotes where needed.
    def quote(arg: str) -> str:
        if any(c in arg for c in " \t\n\"'\\><~|&;$*?#()`"):
            escaped = (
                arg.replace("\\", "\\\\")
                .replace('"', '\\"')
                .replace("`", "\\`")
                .replace("$", "\\$")
            )
            return f'"{escaped}"'
        return arg

    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Barnraise\n"
        "Comment=Train AI models together on the computers you already own\n"
        f"Exec={' '.join(quote(a) for a in command)}\n"
        "Icon=barnraise\n"
        "Terminal=false\n"
        "Categories=Science;Network;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- macOS ----------------------------------------------------------------------------------
def launch_agent_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{APP_ID}.plist"


def _launch_agent(command: list[str]) -> bytes:
    return plistlib.dumps(
        {
            "Label": APP_ID,
            "ProgramArguments": command,
            "RunAtLoad": True,
            "KeepAlive": False,
            "ProcessType": "Interactive",
        }
    )


# --- Windows --------------------------------------------------------------------------------
def _windows_set(enabled: bool, command: list[str]) -> str:
    import winreg  # type: ignore[import-not-found,unused-ignore]

    with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:  # type: ignore[attr-defined,unused-ignore]
        if enabled:
            value = " ".join(f'"{a}"' if " " in a else a for a in command)
            winreg.SetValueEx(key, RUN_VALUE, 0, winreg.REG_SZ, value)  # type: ignore[attr-defined,unused-ignore]
        else:
            with contextlib.suppress(FileNotFoundError):
                winreg.DeleteValue(key, RUN_VALUE)  # type: ignore[attr-defined,unused-ignore]
    return f"HKEY_CURRENT_USER\\{RUN_KEY}\\{RUN_VALUE}"


def _windows_enabled() -> bool:
    import winreg  # type: ignore[import-not-found,unused-ignore]

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:  # type: ignore[attr-defined,unused-ignore]
            winreg.QueryValueEx(key, RUN_VALUE)  # type: ignore[attr-defined,unused-ignore]
    except OSError:
        return False
    return True


# --- the one entry point --------------------------------------------------------------------
def set_autostart(
    enabled: bool, *, platform: str | None = None, command: list[str] | None = None
) -> str:
    """Turn start-at-login on or off; return where (a path or a registry value)."""
    platform = platform or sys.platform
    command = command or launch_command()
    if platform == "win32":
        return _windows_set(enabled, command)
    path = launch_agent_path() if platform == "darwin" else xdg_autostart_path()
    if enabled:
        if platform == "darwin":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_launch_agent(command))
        else:
            _write_text(path, _desktop_entry(command))
    else:
        path.unlink(missing_ok=True)
    return str(path)


def autostart_enabled(*, platform: str | None = None) -> bool:
    platform = platform or sys.platform
    if platform == "win32":
        return _windows_enabled()
    path = launch_agent_path() if platform == "darwin" else xdg_autostart_path()
    return path.exists()


def describe(command: list[str]) -> str:
    return shlex.join(command)
