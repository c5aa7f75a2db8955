"""The declarations of every contributor setting: name, type, default, help and check.

Every setting is one ``SettingSpec`` in ``SETTINGS``. Profile settings are declared once in
``PROFILE_FIELDS`` and appear twice, as ``in_use.<field>`` and ``idle.<field>``. The typed
values, loading and saving are in ``app.contributor.settings``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.contributor.energy import DEFAULT_CPU_TDP_WATTS
from app.contributor.schedule import WeeklySchedule, schedule_problem

__all__ = [
    "PROFILE_FIELDS",
    "PROFILE_NAMES",
    "PROFILE_TITLES",
    "SETTINGS",
    "SPECS_BY_NAME",
    "TEMP_HYSTERESIS_C",
    "Check",
    "SettingSpec",
]

# A component that hit its temperature limit must cool this many degrees below it before
# training resumes, so a temperature hovering at the limit does not toggle training.
TEMP_HYSTERESIS_C = 5.0


Check = Callable[[Any], str | None]


def _int_range(low: int, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
        if value < low or (high is not None and value > high):
            return f"must be between {low} and {high}" if high is not None else f"must be ≥ {low}"
        return None

    return check


def _float_range(low: float, high: float, *, optional: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number" + (" or null (off)" if optional else "")
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}"
        return None

    return check


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _schedule_check(value: Any) -> str | None:
    if isinstance(value, WeeklySchedule):
        return None
    problem = schedule_problem(value)
    return None if problem is None else f"must be 7 strings of 24 '0'/'1' ({problem})"


def _all_cores_but_one() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass(frozen=True)
class SettingSpec:
    """One setting. ``default`` may be a zero-argument callable for machine-dependent
    defaults; ``default_text`` then says in words what it is (for the docs)."""

    name: str
    type: str
    default: Any
    help: str
    check: Check
    default_text: str | None = None

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return json.dumps(self.default)


PROFILE_NAMES = ("in_use", "idle")
PROFILE_TITLES = {"in_use": "while I use the computer", "idle": "while idle"}

# (field, type, help, check, {profile: default}, default_text per profile)
PROFILE_FIELDS: tuple[tuple[str, str, str, Check, dict[str, Any], dict[str, str]], ...] = (
    (
        "cpu_cores",
        "int",
        "CPU cores training may use (capped at this machine's core count).",
        _int_range(1, 1024),
        {"in_use": 1, "idle": _all_cores_but_one},
        {"idle": "all cores but one (at least 1)"},
    ),
    (
        "cpu_percent",
        "int",
        "Share of those cores' time training may take, 1–100 %.",
        _int_range(1, 100),
        {"in_use": 50, "idle": 100},
        {},
    ),
    (
        "gpu_enabled",
        "bool",
        "Whether training may use the GPU.",
        _is_bool,
        {"in_use": False, "idle": False},
        {},
    ),
    (
        "gpu_memory_fraction",
        "float",
        "Largest share of GPU memory training may allocate, 0.05–1.0.",
        _float_range(0.05, 1.0),
        {"in_use": 0.25, "idle": 0.5},
        {},
    ),
    (
        "gpu_percent",
        "int",
        "Share of GPU time training may take, 1–100 %.",
        _int_range(1, 100),
        {"in_use": 25, "idle": 100},
        {},
    ),
    (
        "memory_cap_mb",
        "int",
        "Most memory the training process may use, in MiB (≥ 128).",
        _int_range(128),
        {"in_use": 1024, "idle": 4096},
        {},
    ),
)


def _profile_specs() -> tuple[SettingSpec, ...]:
    specs = []
    for profile in PROFILE_NAMES:
        for field, type_, help_, check, defaults, default_texts in PROFILE_FIELDS:
            specs.append(
                SettingSpec(
                    name=f"{profile}.{field}",
                    type=type_,
                    default=defaults[profile],
                    help=f"{help_} Profile “{PROFILE_TITLES[profile]}”.",
                    check=check,
                    default_text=default_texts.get(profile),
                )
            )
    return tuple(specs)


_DEFAULT_SCHEDULE = WeeklySchedule.always().rows

SETTINGS: tuple[SettingSpec, ...] = (
    *_profile_specs(),
    SettingSpec(
        "schedule",
        "list of 7 str",
        list(_DEFAULT_SCHEDULE),
        "Allowed hours: 7 strings (Monday first) of 24 characters, '1' = may compute in that "
        "local hour, '0' = may not.",
        _schedule_check,
        default_text="every hour of every day ('1' × 24, × 7)",
    ),
    SettingSpec(
        "run_on_battery",
        "bool",
        False,
        "Compute while the computer runs on battery.",
        _is_bool,
    ),
    SettingSpec(
        "idle_minutes_before_start",
        "int",
        5,
        "Minutes without keyboard/mouse input before the “while idle” profile applies "
        "(0 = always use it, e.g. on a headless server).",
        _int_range(0, 24 * 60),
    ),
    SettingSpec(
        "other_cpu_suspend_percent",
        "int",
        60,
        "Suspend when other programs use more than this % of all CPU time.",
        _int_range(1, 100),
    ),
    SettingSpec(
        "other_cpu_resume_percent",
        "int",
        30,
        "Resume after such a suspension only when other programs use less than this % "
        "(must be below other_cpu_suspend_percent).",
        _int_range(0, 99),
    ),
    SettingSpec(
        "cpu_temp_limit_c",
        "float | null",
        90.0,
        f"Suspend when the CPU reaches this temperature (°C), resume {TEMP_HYSTERESIS_C:g} °C "
        "below it; null = no limit.",
        _float_range(40.0, 110.0, optional=True),
    ),
    SettingSpec(
        "gpu_temp_limit_c",
        "float | null",
        85.0,
        f"Suspend when the GPU reaches this temperature (°C), resume {TEMP_HYSTERESIS_C:g} °C "
        "below it; null = no limit.",
        _float_range(40.0, 110.0, optional=True),
    ),
    SettingSpec(
        "cpu_tdp_watts",
        "float",
        DEFAULT_CPU_TDP_WATTS,
        "This CPU's TDP in watts (65 is a common desktop's, 15–28 a laptop's): where the "
        "energy counters cannot be read, the energy given is estimated as training's CPU "
        "seconds × this ÷ the core count, and labelled estimated. 1–1000.",
        _float_range(1.0, 1000.0),
    ),
    SettingSpec(
        "upload_kbps_cap",
        "int",
        0,
        "Upload bandwidth cap in kilobits per second; 0 = unlimited.",
        _int_range(0),
    ),
    SettingSpec(
        "cache_size_mb",
        "int",
        1024,
        "Disk space for downloaded model versions, in MiB (≥ 64); the least recently used go first, never the one in use.",
        _int_range(64),
    ),
    SettingSpec(
        "checkpoint_interval_s",
        "int",
        60,
        "Seconds between training checkpoints (work lost on pause or quit is at most this).",
        _int_range(5, 3600),
    ),
    SettingSpec(
        "notifications",
        "bool",
        True,
        "Show desktop notifications (update accepted, errors).",
        _is_bool,
    ),
    SettingSpec(
        "start_at_login",
        "bool",
        False,
        "Start the contributor when you log in.",
        _is_bool,
    ),
)

SPECS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in SETTINGS}
