"""Weekly schedule helpers and the watcher that fires at window edges."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from app.contributor.schedule import (
    ScheduleWatcher,
    WeeklySchedule,
    is_allowed,
    next_transition,
)

TZ = timezone(timedelta(hours=-5))
MONDAY = datetime(2026, 11, 23, tzinfo=TZ)


def at(weekday: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return MONDAY + timedelta(days=weekday, hours=hour, minutes=minute, seconds=second)


NIGHTS = WeeklySchedule.from_hours(lambda day, hour: hour >= 22 or hour < 6)


def test_from_rows_validates_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="7 rows"):
        WeeklySchedule.from_rows(["1" * 24] * 8)
    with pytest.raises(ValueError, match="Wednesday"):
        WeeklySchedule.from_rows(["1" * 24, "1" * 24, "1" * 25] + ["1" * 24] * 4)
    with pytest.raises(ValueError, match="list of 7 strings"):
        WeeklySchedule.from_rows("1" * 168)
    assert WeeklySchedule.from_rows(["01" * 12] * 7).hour_allowed(0, 1)


def test_grid_editing() -> None:
    s = WeeklySchedule.never().with_hour(6, 23, True)
    assert s.hour_allowed(6, 23) and not s.hour_allowed(6, 22)
    assert s.rows[6] == "0" * 23 + "1"
    assert s.with_hour(6, 23, False) == WeeklySchedule.never()
    assert WeeklySchedule.always().all_allowed and WeeklySchedule.never().none_allowed


def test_is_allowed_uses_local_wall_clock_hour() -> None:
    assert is_allowed(NIGHTS, at(0, 22))
    assert is_allowed(NIGHTS, at(0, 5, 59, 59))
    assert not is_allowed(NIGHTS, at(0, 6))
    assert not is_allowed(NIGHTS, at(0, 21, 59, 59))
    assert is_allowed(NIGHTS, datetime(2026, 11, 25, 23, 30))  # naive local time


def test_next_transition_within_a_day_and_across_midnight() -> None:
    assert next_transition(NIGHTS, at(2, 12, 30)) == at(2, 22)
    assert next_transition(NIGHTS, at(2, 22)) == at(3, 6)  # strictly after
    assert next_transition(NIGHTS, at(2, 21, 59, 59)) == at(2, 22)
    assert next_transition(NIGHTS, at(2, 23, 59, 59)) == at(3, 6)


def test_next_transition_across_the_week_boundary() -> None:
    weekend = WeeklySchedule.from_hours(lambda day, hour: day >= 5)
    assert next_transition(weekend, at(4, 12)) == at(5, 0)
    assert next_transition(weekend, at(5, 0)) == at(7, 0)  # Sunday → Monday
    sunday_night = WeeklySchedule.from_hours(
        lambda d, h: (d == 6 and h >= 20) or (d == 0 and h < 4)
    )
    assert next_transition(sunday_night, at(6, 21)) == at(7, 4)
    assert next_transition(sunday_night, at(0, 5)) == at(6, 20)
    one_hour = WeeklySchedule.never().with_hour(0, 0, True)
    assert next_transition(one_hour, at(0, 0, 30)) == at(0, 1)
    assert next_transition(one_hour, at(0, 1)) == at(7, 0)  # a whole week later


def test_next_transition_none_when_it_never_changes() -> None:
    assert next_transition(WeeklySchedule.always(), at(3, 3)) is None
    assert next_transition(WeeklySchedule.never(), at(3, 3)) is None


def test_next_transition_keeps_tz_and_naive() -> None:
    assert next_transition(NIGHTS, at(1, 1)).tzinfo is TZ  # type: ignore[union-attr]
    naive = next_transition(NIGHTS, datetime(2026, 11, 24, 1, 0))
    assert naive == datetime(2026, 11, 24, 6, 0) and naive.tzinfo is None


def offset_clock(fake_start: datetime) -> tuple[Callable[[], datetime], timedelta]:
    offset = fake_start - datetime.now(TZ)

    def clock() -> datetime:
        return datetime.now(TZ) + offset

    return clock, offset


def test_watcher_calls_back_at_the_edge() -> None:
    clock, _ = offset_clock(at(2, 21, 59, 59))  # the night window opens in ~1 s
    fired = threading.Event()
    calls: list[tuple[bool, datetime]] = []

    def on_edge(allowed: bool, when: datetime) -> None:
        calls.append((allowed, when))
        fired.set()

    watcher = ScheduleWatcher(lambda: NIGHTS, on_edge, clock=clock)
    watcher.start()
    try:
        assert watcher.next_edge == at(2, 22)
        assert calls == []
        assert fired.wait(timeout=10.0), "no callback at the window edge"
        allowed, when = calls[0]
        assert allowed is True
        assert at(2, 22) <= when < at(2, 22, 0, 10)
        assert clock() >= at(2, 22)  # not early
        assert watcher.next_edge == at(3, 6)  # re-armed for the closing edge
    finally:
        watcher.stop()
    assert len(calls) == 1


def test_watcher_refresh_reports_a_schedule_change_at_once() -> None:
    clock, _ = offset_clock(at(2, 12))
    current = {"schedule": NIGHTS}
    seen: list[bool] = []
    watcher = ScheduleWatcher(lambda: current["schedule"], lambda a, w: seen.append(a), clock=clock)
    watcher.start()
    try:
        watcher.refresh()
        assert seen == []  # nothing changed
        current["schedule"] = WeeklySchedule.always()
        watcher.refresh()
        assert seen == [True]
        assert watcher.next_edge is None
    finally:
        watcher.stop()
    watcher.stop()  # idempotent
    watcher.refresh()  # after stop: nothing happens
    assert seen == [True]


def test_watcher_stop_prevents_later_callbacks() -> None:
    clock, _ = offset_clock(
        at(
            2,
            21,
            59,
            59,
        )
        + timedelta(milliseconds=500)
    )
    fired = threading.Event()
    watcher = ScheduleWatcher(lambda: NIGHTS, lambda a, w: fired.set(), clock=clock)
    watcher.start()
    watcher.start()  # idempotent
    watcher.stop()
    assert not fired.wait(timeout=1.0)


def test_watcher_survives_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    clock, _ = offset_clock(at(2, 12))
    current = {"schedule": NIGHTS}

    def boom(allowed: bool, when: datetime) -> None:
        raise RuntimeError("boom")

    watcher = ScheduleWatcher(lambda: current["schedule"], boom, clock=clock)
    watcher.start()
    try:
        current["schedule"] = WeeklySchedule.always()
        watcher.refresh()
        assert "schedule callback failed" in caplog.text
    finally:
        watcher.stop()
