"""The policy, one rule at a time, with a fake clock and fake sensor readings."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from app.contributor.policy import (
    Action,
    Decision,
    PolicyState,
    Reason,
    decide,
    next_change,
)
from app.contributor.schedule import WeeklySchedule
from app.contributor.sensors import FakeSensors, SensorReadings
from app.contributor.settings import TEMP_HYSTERESIS_C, Settings, default_settings

TZ = timezone(timedelta(hours=1))
MONDAY = datetime(2026, 11, 23, tzinfo=TZ)  # a Monday


def at(weekday: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """Local time in the test week; weekday 0 = Monday, 7 = next Monday."""
    return MONDAY + timedelta(days=weekday, hours=hour, minutes=minute, seconds=second)


# A machine idle for an hour, on mains, cool, quiet: nothing should hold training back.
CALM = SensorReadings(
    idle_seconds=3600.0,
    on_battery=False,
    battery_percent=None,
    cpu_temp_c=50.0,
    gpu_temp_c=40.0,
    other_cpu_percent=5.0,
    cpu_count=8,
)


def settings(**changes: object) -> Settings:
    base = default_settings().updated({"idle.cpu_cores": 7})
    return base.updated({k.replace("__", "."): v for k, v in changes.items()})


def run(
    s: Settings | None = None,
    now: datetime | None = None,
    state: PolicyState | None = None,
    **readings: object,
) -> Decision:
    sensors = FakeSensors(CALM, **readings)
    return decide(s or settings(), now or at(2, 12), sensors.read(), state or PolicyState())


def test_calm_machine_runs_idle_profile() -> None:
    d = run()
    assert d.action is Action.RUN
    assert d.limits == settings().idle
    assert d.reasons == ()
    assert d.computing and d.summary() == "Running"


def test_paused_suspends_until_resumed() -> None:
    state = PolicyState().pause()
    d = run(state=state)
    assert d.action is Action.SUSPEND and d.limits is None
    assert d.reasons == (Reason.PAUSED,)
    assert d.state.paused
    assert run(state=d.state.resume()).action is Action.RUN


def test_snoozed_until_time_then_runs() -> None:
    now = at(2, 12)
    state = PolicyState().snooze(now + timedelta(minutes=30))
    d = run(now=now, state=state)
    assert d.action is Action.SUSPEND and d.reasons == (Reason.SNOOZED,)
    assert d.describe() == ["snoozed until 12:30"]
    assert d.state.snoozed_until == now + timedelta(minutes=30)
    later = run(now=now + timedelta(minutes=30), state=d.state)
    assert later.action is Action.RUN
    assert later.state.snoozed_until is None


def test_resume_clears_snooze() -> None:
    state = PolicyState().snooze(at(3, 0)).resume()
    assert run(state=state).action is Action.RUN


def test_outside_schedule_suspends() -> None:
    working_hours_off = WeeklySchedule.from_hours(lambda day, hour: not 9 <= hour < 17)
    s = settings(schedule=working_hours_off)
    assert run(s, at(2, 8, 59)).action is Action.RUN
    d = run(s, at(2, 9, 0))
    assert d.action is Action.SUSPEND and d.reasons == (Reason.OUTSIDE_SCHEDULE,)
    assert run(s, at(2, 16, 59)).action is Action.SUSPEND
    assert run(s, at(2, 17, 0)).action is Action.RUN


def test_schedule_window_across_midnight() -> None:
    nights = WeeklySchedule.from_hours(lambda day, hour: hour >= 22 or hour < 6)
    s = settings(schedule=nights)
    assert run(s, at(2, 21, 59)).action is Action.SUSPEND
    assert run(s, at(2, 22, 0)).action is Action.RUN
    assert run(s, at(2, 23, 59, 59)).action is Action.RUN
    assert run(s, at(3, 0, 0)).action is Action.RUN
    assert run(s, at(3, 5, 59)).action is Action.RUN
    assert run(s, at(3, 6, 0)).action is Action.SUSPEND


def test_schedule_window_across_week_boundary() -> None:
    # Sunday 20:00 → Monday 04:00 only.
    s = settings(
        schedule=WeeklySchedule.from_hours(lambda d, h: (d == 6 and h >= 20) or (d == 0 and h < 4))
    )
    assert run(s, at(6, 19, 59)).action is Action.SUSPEND
    assert run(s, at(6, 20)).action is Action.RUN
    assert run(s, at(7, 0)).action is Action.RUN  # next Monday
    assert run(s, at(7, 3, 59)).action is Action.RUN
    assert run(s, at(7, 4)).action is Action.SUSPEND
    assert run(s, at(0, 2)).action is Action.RUN  # this Monday


def test_on_battery_suspends_unless_allowed() -> None:
    d = run(on_battery=True)
    assert d.action is Action.SUSPEND and d.reasons == (Reason.ON_BATTERY,)
    assert run(settings(run_on_battery=True), on_battery=True).action is Action.RUN


def test_unknown_power_is_treated_as_battery() -> None:
    d = run(on_battery=None)
    assert d.action is Action.SUSPEND and d.reasons == (Reason.POWER_UNKNOWN,)
    assert run(settings(run_on_battery=True), on_battery=None).action is Action.RUN


def test_user_active_throttles_to_in_use_profile() -> None:
    s = settings(idle_minutes_before_start=5)
    d = run(s, idle_seconds=10.0)
    assert d.action is Action.THROTTLE
    assert d.reasons == (Reason.USER_ACTIVE,)
    assert d.limits == s.in_use
    assert d.summary() == "Throttled: you are using the computer"
    assert run(s, idle_seconds=299.0).action is Action.THROTTLE
    assert run(s, idle_seconds=300.0).action is Action.RUN


def test_unknown_idle_throttles_unless_idle_minutes_is_zero() -> None:
    d = run(idle_seconds=None)
    assert d.action is Action.THROTTLE and d.reasons == (Reason.IDLE_UNKNOWN,)
    assert d.limits == settings().in_use
    assert run(settings(idle_minutes_before_start=0), idle_seconds=None).action is Action.RUN
    assert run(settings(idle_minutes_before_start=0), idle_seconds=0.0).action is Action.RUN


def test_other_programs_busy_suspends_with_hysteresis() -> None:
    s = settings(other_cpu_suspend_percent=60, other_cpu_resume_percent=30)
    state = PolicyState()
    d = run(s, state=state, other_cpu_percent=60.0)  # not above
    assert d.action is Action.RUN
    d = run(s, state=d.state, other_cpu_percent=61.0)
    assert d.action is Action.SUSPEND and d.reasons == (Reason.OTHER_PROGRAMS_BUSY,)
    assert d.state.other_busy
    # Hovering between the thresholds: stays suspended, no flapping.
    for load in (59.0, 45.0, 31.0, 30.0, 55.0, 40.0):
        d = run(s, state=d.state, other_cpu_percent=load)
        assert d.action is Action.SUSPEND, load
    d = run(s, state=d.state, other_cpu_percent=29.9)
    assert d.action is Action.RUN and not d.state.other_busy
    # ...and from running, hovering between the thresholds keeps running.
    for load in (35.0, 59.0, 45.0, 60.0):
        d = run(s, state=d.state, other_cpu_percent=load)
        assert d.action is Action.RUN, load


def test_hovering_load_never_flaps() -> None:
    s = settings(other_cpu_suspend_percent=60, other_cpu_resume_percent=30)
    d = run(s, other_cpu_percent=90.0)
    actions = []
    for step in range(200):
        load = 45.0 + 14.0 * ((step * 37) % 100 - 50) / 50  # 31..59, jittery
        d = run(s, state=d.state, other_cpu_percent=load)
        actions.append(d.action)
    assert set(actions) == {Action.SUSPEND}


def test_unknown_other_cpu_keeps_previous_state() -> None:
    busy = run(other_cpu_percent=99.0)
    assert run(state=busy.state, other_cpu_percent=None).action is Action.SUSPEND
    calm = run(other_cpu_percent=1.0)
    assert run(state=calm.state, other_cpu_percent=None).action is Action.RUN


@pytest.mark.parametrize(
    ("setting", "reading", "flag", "reason"),
    [
        ("cpu_temp_limit_c", "cpu_temp_c", "cpu_hot", Reason.CPU_TOO_HOT),
        ("gpu_temp_limit_c", "gpu_temp_c", "gpu_hot", Reason.GPU_TOO_HOT),
    ],
)
def test_too_hot_suspends_with_hysteresis(
    setting: str, reading: str, flag: str, reason: Reason
) -> None:
    def sensor(value: float | None) -> dict[str, Any]:
        return {reading: value}

    s = settings(**{setting: 80.0})
    d = run(s, **sensor(79.9))
    assert d.action is Action.RUN
    d = run(s, state=d.state, **sensor(80.0))
    assert d.action is Action.SUSPEND and d.reasons == (reason,)
    assert getattr(d.state, flag)
    for temp in (79.0, 76.0, 75.1, 78.0):  # cooling but not enough
        d = run(s, state=d.state, **sensor(temp))
        assert d.action is Action.SUSPEND, temp
    d = run(s, state=d.state, **sensor(80.0 - TEMP_HYSTERESIS_C))
    assert d.action is Action.RUN and not getattr(d.state, flag)
    # Sensor disappears while hot: stays suspended; while cool: keeps running.
    hot = run(s, **sensor(95.0))
    assert run(s, state=hot.state, **sensor(None)).action is Action.SUSPEND
    assert run(s, state=d.state, **sensor(None)).action is Action.RUN
    # No limit: never too hot.
    assert run(settings(**{setting: None}), **sensor(150.0)).action is Action.RUN


def test_reasons_accumulate_and_any_suspend_wins() -> None:
    nights = WeeklySchedule.from_hours(lambda day, hour: hour >= 22)
    d = run(
        settings(schedule=nights),
        now=at(2, 12),
        state=PolicyState().pause(),
        on_battery=True,
        idle_seconds=1.0,
        other_cpu_percent=99.0,
        cpu_temp_c=100.0,
        gpu_temp_c=100.0,
    )
    assert d.action is Action.SUSPEND and d.limits is None
    assert d.reasons == (
        Reason.PAUSED,
        Reason.OUTSIDE_SCHEDULE,
        Reason.ON_BATTERY,
        Reason.OTHER_PROGRAMS_BUSY,
        Reason.CPU_TOO_HOT,
        Reason.GPU_TOO_HOT,
        Reason.USER_ACTIVE,
    )
    assert d.summary().startswith("Suspended: paused, outside the schedule, on battery")


def test_cores_are_capped_at_the_machine() -> None:
    s = settings(idle__cpu_cores=64, in_use__cpu_cores=16)
    assert run(s, cpu_count=4).limits.cpu_cores == 4  # type: ignore[union-attr]
    assert run(s, cpu_count=4, idle_seconds=0.0).limits.cpu_cores == 4  # type: ignore[union-attr]
    assert run(s, cpu_count=None).limits.cpu_cores == 64  # type: ignore[union-attr]


def test_decide_is_pure() -> None:
    state = PolicyState()
    readings = FakeSensors(CALM, other_cpu_percent=99.0).read()
    first = decide(settings(), at(1, 1), readings, state)
    second = decide(settings(), at(1, 1), readings, state)
    assert first == second
    assert state == PolicyState()  # input state untouched (frozen)


def test_reason_texts_are_human() -> None:
    for reason in Reason:
        assert reason.text.strip()
    assert Reason.USER_ACTIVE.suspends is False and Reason.PAUSED.suspends is True


def test_next_change_follows_schedule_and_snooze() -> None:
    nights = WeeklySchedule.from_hours(lambda day, hour: hour >= 22 or hour < 6)
    s = settings(schedule=nights)
    assert next_change(s, at(2, 12, 30)) == at(2, 22)
    assert next_change(s, at(2, 23, 10)) == at(3, 6)
    snoozed = PolicyState().snooze(at(2, 13))
    assert next_change(s, at(2, 12, 30), snoozed) == at(2, 13)
    assert next_change(s, at(2, 14), snoozed) == at(2, 22)  # snooze already over
    assert next_change(settings(), at(2, 12)) is None
    assert next_change(settings(), at(2, 12), snoozed) == at(2, 13)


def test_next_change_across_week_boundary() -> None:
    s = settings(schedule=WeeklySchedule.from_hours(lambda d, h: d == 0 and h < 2))
    assert next_change(s, at(6, 23, 30)) == at(7, 0)
    assert next_change(s, at(7, 1, 15)) == at(7, 2)
    assert next_change(s, at(7, 2)) == at(14, 0)
