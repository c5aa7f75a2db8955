"""What the machine is doing: idle time, power, temperatures, other programs' CPU.

``SystemSensors().read()`` takes a ``SensorReadings`` snapshot and never raises: anything
that cannot be read is None ("unknown"); ``app.contributor.policy`` documents how each
unknown is treated. Each reading comes from a small source object (a Protocol) so tests and
other platforms swap one without touching the rest; ``FakeSensors`` is the test double.

On Linux, idle time comes from GNOME's or KDE's D-Bus idle monitor, else the X server's
screen-saver extension (``x11_idle``: XFCE, MATE, Cinnamon, i3), else the login terminals.

No Qt and no torch here; external tools (``gdbus``, ``ioreg``, ``nvidia-smi``) are run with
a short timeout and only if found on PATH.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import psutil

from app.contributor.x11_idle import X11ScreenSaverIdle

__all__ = [
    "COMMAND_TIMEOUT_S",
    "BatterySource",
    "CpuLoadSource",
    "FakeSensors",
    "IdleSource",
    "PsutilBattery",
    "PsutilCpuLoad",
    "SensorReadings",
    "Sensors",
    "SystemSensors",
    "SystemTemperatures",
    "TemperatureSource",
    "default_idle_source",
]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 3.0  # an external sensor tool that hangs must not stall the engine


@dataclass(frozen=True)
class SensorReadings:
    """One snapshot. None means unknown."""

    idle_seconds: float | None = None  # since the last keyboard/mouse input
    on_battery: bool | None = None  # False on mains or with no battery at all
    battery_percent: float | None = None
    cpu_temp_c: float | None = None  # hottest CPU sensor
    gpu_temp_c: float | None = None  # hottest GPU
    other_cpu_percent: float | None = None  # % of all cores' time used by other programs
    cpu_count: int | None = None  # logical cores


class Sensors(Protocol):
    def read(self) -> SensorReadings: ...


class IdleSource(Protocol):
    def idle_seconds(self) -> float | None: ...


class BatterySource(Protocol):
    def battery(self) -> tuple[bool | None, float | None]:
        """(on_battery, percent)."""
        ...


class TemperatureSource(Protocol):
    def cpu_temp_c(self) -> float | None: ...

    def gpu_temp_c(self) -> float | None: ...


class CpuLoadSource(Protocol):
    def other_cpu_percent(self) -> float | None: ...


# ---------------------------------------------------------------------------------------------
# Running tools

Runner = Callable[[list[str]], str | None]


def run_tool(argv: list[str]) -> str | None:
    """stdout of ``argv`` if it exists on PATH and exits 0 within the timeout, else None."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# Idle time

_GVARIANT_NUMBER = re.compile(r"\((?:u?int\d+\s+)?(\d+),?\)")


def parse_gdbus_number(output: str | None) -> int | None:
    """The number in a gdbus reply such as ``(uint64 12345,)``."""
    if not output:
        return None
    match = _GVARIANT_NUMBER.search(output.strip())
    return int(match.group(1)) if match else None


class _GdbusMillisecondsIdle:
    """An idle-time D-Bus method answering milliseconds, called through ``gdbus``."""

    ARGV: ClassVar[tuple[str, ...]]

    def __init__(self, run: Runner = run_tool) -> None:
        self._run = run

    def idle_seconds(self) -> float | None:
        ms = parse_gdbus_number(self._run(list(self.ARGV)))
        return None if ms is None else ms / 1000.0


class GnomeMutterIdle(_GdbusMillisecondsIdle):
    """GNOME (X11 and Wayland): org.gnome.Mutter.IdleMonitor.GetIdletime, milliseconds."""

    ARGV: ClassVar[tuple[str, ...]] = (
        "gdbus", "call", "--session", "--dest", "org.gnome.Mutter.IdleMonitor",
        "--object-path", "/org/gnome/Mutter/IdleMonitor/Core",
        "--method", "org.gnome.Mutter.IdleMonitor.GetIdletime",
    )  # fmt: skip


class FreedesktopScreenSaverIdle(_GdbusMillisecondsIdle):
    """KDE and others: org.freedesktop.ScreenSaver.GetSessionIdleTime.

    KDE's implementation answers in milliseconds (KIdleTime); GNOME does not implement it.
    """

    ARGV: ClassVar[tuple[str, ...]] = (
        "gdbus", "call", "--session", "--dest", "org.freedesktop.ScreenSaver",
        "--object-path", "/org/freedesktop/ScreenSaver",
        "--method", "org.freedesktop.ScreenSaver.GetSessionIdleTime",
    )  # fmt: skip


class TerminalIdle:
    """Linux fallback without a desktop session: like ``w``, the time since the most recently
    used login terminal (``/dev/pts/N``, ``/dev/ttyN``) was touched. None without any login."""

    def __init__(
        self,
        users: Callable[[], Iterable[Any]] = psutil.users,
        dev: str = "/dev",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._dev = dev
        self._clock = clock

    def idle_seconds(self) -> float | None:
        latest: float | None = None
        for user in self._users():
            terminal = getattr(user, "terminal", None)
            if not terminal or terminal.startswith(":"):
                continue  # ":0" is an X display, not a device
            try:
                atime = os.stat(os.path.join(self._dev, terminal)).st_atime
            except OSError:
                continue
            latest = atime if latest is None else max(latest, atime)
        if latest is None:
            return None
        return max(0.0, self._clock() - latest)


class FirstKnownIdle:
    """Tries sources in order and answers with the first that knows; remembers which works."""

    def __init__(self, sources: list[IdleSource]) -> None:
        self._sources = sources

    def idle_seconds(self) -> float | None:
        for index, source in enumerate(self._sources):
            value = source.idle_seconds()
            if value is not None:
                if index:  # try the working one first next time
                    self._sources.insert(0, self._sources.pop(index))
                return value
        return None


class WindowsIdle:
    """Windows: GetLastInputInfo (the session's last input) against GetTickCount."""

    def idle_seconds(self) -> float | None:
        import ctypes  # Windows-only attributes below
        from ctypes import wintypes

        class LastInputInfo(ctypes.Structure):
            _fields_ = [("cbSize", wintypes.UINT), ("dwTime", wintypes.DWORD)]

        info = LastInputInfo()
        info.cbSize = ctypes.sizeof(LastInputInfo)
        windll: Any = getattr(ctypes, "windll", None)
        if windll is None or not windll.user32.GetLastInputInfo(ctypes.byref(info)):
            return None
        ticks = windll.kernel32.GetTickCount() & 0xFFFFFFFF
        return ((ticks - info.dwTime) & 0xFFFFFFFF) / 1000.0  # both wrap at 2**32 ms


_HID_IDLE = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')


def parse_ioreg_idle(output: str | None) -> float | None:
    """Seconds from ``ioreg -c IOHIDSystem`` output (HIDIdleTime is in nanoseconds)."""
    if not output:
        return None
    match = _HID_IDLE.search(output)
    return int(match.group(1)) / 1e9 if match else None


class MacIdle:
    """macOS: HIDIdleTime from ``ioreg -c IOHIDSystem``."""

    def __init__(self, run: Runner = run_tool) -> None:
        self._run = run

    def idle_seconds(self) -> float | None:
        return parse_ioreg_idle(self._run(["ioreg", "-c", "IOHIDSystem", "-d", "4"]))


def default_idle_source() -> IdleSource:
    if sys.platform == "win32":
        return WindowsIdle()
    if sys.platform == "darwin":
        return MacIdle()
    # X11 after the D-Bus monitors (GNOME, KDE), before the login terminals: XFCE, MATE,
    # Cinnamon, i3 and other X11 desktops have no D-Bus idle monitor that answers.
    return FirstKnownIdle(
        [GnomeMutterIdle(), FreedesktopScreenSaverIdle(), X11ScreenSaverIdle(), TerminalIdle()]
    )


# ---------------------------------------------------------------------------------------------
# Power, temperatures, CPU


class PsutilBattery:
    def battery(self) -> tuple[bool | None, float | None]:
        battery = psutil.sensors_battery()
        if battery is None:
            return False, None  # no battery: a desktop on mains
        plugged = battery.power_plugged
        return (None if plugged is None else not plugged), float(battery.percent)


# psutil.sensors_temperatures() keys that describe the CPU package/cores, most precise first.
CPU_SENSOR_NAMES = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "acpitz")


def hottest_cpu(temps: dict[str, list[Any]]) -> float | None:
    for name in CPU_SENSOR_NAMES:
        values = [float(t.current) for t in temps.get(name, []) if t.current is not None]
        values = [v for v in values if 0.0 < v < 150.0]  # drop absent/garbage sensors
        if values:
            return max(values)
    return None


def parse_nvidia_smi_temps(output: str | None) -> float | None:
    if not output:
        return None
    values = []
    for line in output.splitlines():
        try:
            values.append(float(line.strip()))
        except ValueError:
            continue
    return max(values) if values else None


class SystemTemperatures:
    """CPU from psutil.sensors_temperatures (Linux/BSD); GPU from ``nvidia-smi``."""

    NVIDIA_ARGV: ClassVar[tuple[str, ...]] = (
        "nvidia-smi",
        "--query-gpu=temperature.gpu",
        "--format=csv,noheader,nounits",
    )

    def __init__(self, run: Runner = run_tool) -> None:
        self._run = run

    def cpu_temp_c(self) -> float | None:
        read = getattr(psutil, "sensors_temperatures", None)
        if read is None:
            return None  # Windows and macOS: psutil has none
        return hottest_cpu(read())

    def gpu_temp_c(self) -> float | None:
        return parse_nvidia_smi_temps(self._run(list(self.NVIDIA_ARGV)))


def _busy_and_total(times: Any) -> tuple[float, float]:
    total = float(sum(times))
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return total - idle, total


class PsutilCpuLoad:
    """System-wide CPU minus this process and its children (the trainer), in % of all cores.

    Measures since the previous call (its own counters, so other callers of
    ``psutil.cpu_percent`` do not disturb it); the first call returns None (no interval yet).
    A child that appeared since the last call counts from its first sighting.
    """

    def __init__(self, root_pid: int | None = None) -> None:
        self._root = psutil.Process(root_pid or os.getpid())
        self._procs: dict[int, psutil.Process] = {}
        self._last: tuple[float, float] | None = None

    def _tree(self) -> list[psutil.Process]:
        try:
            tree = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            tree = [self._root]
        alive: dict[int, psutil.Process] = {}
        for proc in tree:
            # Keep the same Process object so its cpu_percent measures since the last call.
            alive[proc.pid] = self._procs.get(proc.pid, proc)
        self._procs = alive
        return list(alive.values())

    def other_cpu_percent(self) -> float | None:
        ours = 0.0
        for proc in self._tree():
            try:
                ours += proc.cpu_percent(interval=None)  # % of one core since last call
            except psutil.Error:
                continue
        busy, total = _busy_and_total(psutil.cpu_times())
        last, self._last = self._last, (busy, total)
        if last is None or total <= last[1]:
            return None
        system = 100.0 * (busy - last[0]) / (total - last[1])  # % of all cores
        cores = psutil.cpu_count() or 1
        return min(100.0, max(0.0, system - ours / cores))


class SystemSensors:
    """Reads every source; a source that raises reads as unknown (and is logged once)."""

    def __init__(
        self,
        *,
        idle: IdleSource | None = None,
        battery: BatterySource | None = None,
        temperatures: TemperatureSource | None = None,
        cpu_load: CpuLoadSource | None = None,
    ) -> None:
        self._idle = idle or default_idle_source()
        self._battery = battery or PsutilBattery()
        self._temperatures = temperatures or SystemTemperatures()
        self._cpu_load = cpu_load if cpu_load is not None else PsutilCpuLoad()
        self._warned: set[str] = set()

    def _safe(self, what: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception as exc:
            if what not in self._warned:
                self._warned.add(what)
                log.warning("cannot read %s (%s); treating it as unknown", what, exc)
            return None

    def read(self) -> SensorReadings:
        battery = self._safe("battery", self._battery.battery) or (None, None)
        return SensorReadings(
            idle_seconds=self._safe("idle time", self._idle.idle_seconds),
            on_battery=battery[0],
            battery_percent=battery[1],
            cpu_temp_c=self._safe("CPU temperature", self._temperatures.cpu_temp_c),
            gpu_temp_c=self._safe("GPU temperature", self._temperatures.gpu_temp_c),
            other_cpu_percent=self._safe("CPU load", self._cpu_load.other_cpu_percent),
            cpu_count=self._safe("CPU count", psutil.cpu_count),
        )


class FakeSensors:
    """Test double: ``read()`` returns the current readings; ``set(**fields)`` changes them."""

    def __init__(self, readings: SensorReadings | None = None, **fields: Any) -> None:
        self.readings = dataclasses.replace(readings or SensorReadings(), **fields)

    def set(self, **fields: Any) -> SensorReadings:
        self.readings = dataclasses.replace(self.readings, **fields)
        return self.readings

    def read(self) -> SensorReadings:
        return self.readings
