"""Sensors: parsing of OS tool output, fallbacks, and a read() that never raises."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from app.contributor import sensors as sensors_module
from app.contributor.sensors import (
    FakeSensors,
    FirstKnownIdle,
    FreedesktopScreenSaverIdle,
    GnomeMutterIdle,
    MacIdle,
    PsutilBattery,
    PsutilCpuLoad,
    SensorReadings,
    SystemSensors,
    SystemTemperatures,
    TerminalIdle,
    hottest_cpu,
    parse_gdbus_number,
    parse_ioreg_idle,
    parse_nvidia_smi_temps,
    run_tool,
)


def runner(output: str | None) -> object:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str | None:
        calls.append(argv)
        return output

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_parse_gdbus_number() -> None:
    assert parse_gdbus_number("(uint64 12345,)\n") == 12345
    assert parse_gdbus_number("(uint32 7,)") == 7
    assert parse_gdbus_number("(42,)") == 42
    assert parse_gdbus_number("") is None
    assert parse_gdbus_number(None) is None
    assert (
        parse_gdbus_number("Error: GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown") is None
    )


def test_gnome_and_freedesktop_idle_are_milliseconds() -> None:
    gnome = GnomeMutterIdle(runner("(uint64 90500,)"))  # type: ignore[arg-type]
    assert gnome.idle_seconds() == 90.5
    kde = FreedesktopScreenSaverIdle(runner("(uint32 2000,)"))  # type: ignore[arg-type]
    assert kde.idle_seconds() == 2.0
    assert GnomeMutterIdle(runner(None)).idle_seconds() is None  # type: ignore[arg-type]


def test_first_known_idle_falls_through_and_remembers() -> None:
    unknown = SimpleNamespace(idle_seconds=lambda: None)
    known = SimpleNamespace(idle_seconds=lambda: 12.0)
    chain = FirstKnownIdle([unknown, known])
    assert chain.idle_seconds() == 12.0
    assert chain._sources[0] is known
    assert FirstKnownIdle([unknown]).idle_seconds() is None


def test_terminal_idle_from_tty_atime(tmp_path: Path) -> None:
    (tmp_path / "pts").mkdir()
    tty = tmp_path / "pts" / "3"
    tty.write_text("")
    os.utime(tty, (1000.0, 1000.0))
    users = [
        SimpleNamespace(terminal="pts/3"),
        SimpleNamespace(terminal=":0"),  # X display, skipped
        SimpleNamespace(terminal="pts/99"),  # gone
        SimpleNamespace(terminal=None),
    ]
    idle = TerminalIdle(users=lambda: users, dev=str(tmp_path), clock=lambda: 1300.0)
    assert idle.idle_seconds() == 300.0
    assert TerminalIdle(users=lambda: [], dev=str(tmp_path)).idle_seconds() is None


def test_parse_ioreg_idle() -> None:
    text = '    | |   "HIDIdleTime" = 5123456789\n    | |   "Other" = 1\n'
    assert parse_ioreg_idle(text) == pytest.approx(5.123456789)
    assert parse_ioreg_idle("nothing") is None
    assert MacIdle(runner(text)).idle_seconds() == pytest.approx(5.123456789)  # type: ignore[arg-type]


def test_parse_nvidia_smi() -> None:
    assert parse_nvidia_smi_temps("45\n71\n") == 71.0
    assert parse_nvidia_smi_temps("[N/A]\n") is None
    assert parse_nvidia_smi_temps(None) is None
    run = runner("63\n")
    temps = SystemTemperatures(run)  # type: ignore[arg-type]
    assert temps.gpu_temp_c() == 63.0
    assert run.calls[0][0] == "nvidia-smi"  # type: ignore[attr-defined]


def test_hottest_cpu_prefers_cpu_sensors() -> None:
    t = lambda c: SimpleNamespace(current=c)  # noqa: E731
    temps = {"nvme": [t(80.0)], "coretemp": [t(55.0), t(61.0), t(0.0)], "acpitz": [t(30.0)]}
    assert hottest_cpu(temps) == 61.0
    assert hottest_cpu({"acpitz": [t(42.0)]}) == 42.0
    assert hottest_cpu({"nvme": [t(80.0)]}) is None
    assert hottest_cpu({}) is None


def test_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    assert PsutilBattery().battery() == (False, None)  # desktop: no battery = mains
    monkeypatch.setattr(
        psutil, "sensors_battery", lambda: SimpleNamespace(percent=40, power_plugged=False)
    )
    assert PsutilBattery().battery() == (True, 40.0)
    monkeypatch.setattr(
        psutil, "sensors_battery", lambda: SimpleNamespace(percent=90, power_plugged=None)
    )
    assert PsutilBattery().battery() == (None, 90.0)


def test_cpu_load_first_call_unknown_then_percent() -> None:
    load = PsutilCpuLoad()
    assert load.other_cpu_percent() is None
    sum(i * i for i in range(200_000))  # let some CPU time pass
    value = load.other_cpu_percent()
    assert value is None or 0.0 <= value <= 100.0


def test_cpu_load_subtracts_our_process_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([(0.0, 0.0), (60.0, 100.0)])  # 60 % busy over the interval
    monkeypatch.setattr(sensors_module, "_busy_and_total", lambda _t: next(samples))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    load = PsutilCpuLoad()
    monkeypatch.setattr(load, "_tree", lambda: [SimpleNamespace(cpu_percent=lambda interval: 80.0)])
    assert load.other_cpu_percent() is None
    assert load.other_cpu_percent() == pytest.approx(40.0)  # 60 % minus 80 %/4 cores


def test_system_sensors_read_never_raises() -> None:
    def boom() -> float:
        raise RuntimeError("sensor exploded")

    broken = SimpleNamespace(
        idle_seconds=boom, battery=boom, cpu_temp_c=boom, gpu_temp_c=boom, other_cpu_percent=boom
    )
    sensors = SystemSensors(idle=broken, battery=broken, temperatures=broken, cpu_load=broken)
    readings = sensors.read()
    assert readings.idle_seconds is None and readings.on_battery is None
    assert readings.cpu_temp_c is None and readings.gpu_temp_c is None
    assert readings.other_cpu_percent is None
    assert readings.cpu_count == psutil.cpu_count()


def test_real_system_sensors_smoke() -> None:
    readings = SystemSensors().read()
    assert isinstance(readings, SensorReadings)
    assert readings.cpu_count and readings.cpu_count >= 1
    assert readings.on_battery in (True, False, None)


def test_run_tool_missing_and_failing() -> None:
    assert run_tool(["barnraise-no-such-tool-xyz"]) is None
    assert run_tool([sys.executable, "-c", "import sys; sys.exit(3)"]) is None
    assert run_tool([sys.executable, "-c", "print('ok')"]) == "ok\n"


def test_fake_sensors() -> None:
    fake = FakeSensors(idle_seconds=5.0)
    assert fake.read().idle_seconds == 5.0 and fake.read().on_battery is None
    fake.set(on_battery=True)
    assert fake.read() == SensorReadings(idle_seconds=5.0, on_battery=True)
