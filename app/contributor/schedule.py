"""The weekly schedule: which hours of the week computing is allowed, and timers at its edges.

A schedule is 7 rows (Monday first, as ``datetime.weekday()`` counts) of 24 characters,
``"1"`` where the hour is allowed and ``"0"`` where it is not, so a tray grid can paint it
cell by cell and the settings file stays readable. Hours are local wall-clock hours of
whatever ``datetime`` the caller passes: pass local time (``datetime.now().astimezone()``
or a naive local time).

``ScheduleWatcher`` calls back at each window edge from an apscheduler
``BackgroundScheduler`` thread; the callback must be thread-safe (the tray re-emits it as
a Qt signal).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

__all__ = [
    "DAYS",
    "HOURS_PER_DAY",
    "MAX_WATCH_INTERVAL",
    "ScheduleWatcher",
    "WeeklySchedule",
    "is_allowed",
    "next_transition",
]

log = logging.getLogger(__name__)

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS_PER_DAY = 24
HOURS_PER_WEEK = len(DAYS) * HOURS_PER_DAY

# The watcher wakes at least this often even when the next edge is days away, so a clock
# change (DST, a manual change, a suspended laptop) is noticed within this time.
MAX_WATCH_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class WeeklySchedule:
    """Allowed hours per weekday. ``rows[weekday][hour] == "1"`` means allowed.

    Construct with ``WeeklySchedule.from_rows`` (validates) or ``always()`` / ``never()``.
    """

    rows: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = schedule_problem(self.rows)
        if problem is not None:
            raise ValueError(problem)

    @classmethod
    def from_rows(cls, rows: Iterable[str]) -> WeeklySchedule:
        """Build from 7 strings of 24 '0'/'1' (Monday first); ValueError says what is wrong."""
        if isinstance(rows, str):
            raise ValueError(schedule_problem(rows))
        return cls(tuple(rows))

    @classmethod
    def always(cls) -> WeeklySchedule:
        return cls(("1" * HOURS_PER_DAY,) * len(DAYS))

    @classmethod
    def never(cls) -> WeeklySchedule:
        return cls(("0" * HOURS_PER_DAY,) * len(DAYS))

    @classmethod
    def from_hours(cls, allowed: Callable[[int, int], bool]) -> WeeklySchedule:
        """Build from a predicate ``allowed(weekday, hour)``."""
        return cls(
            tuple(
                "".join("1" if allowed(day, hour) else "0" for hour in range(HOURS_PER_DAY))
                for day in range(len(DAYS))
            )
        )

    def hour_allowed(self, weekday: int, hour: int) -> bool:
        return self.rows[weekday][hour] == "1"

    def with_hour(self, weekday: int, hour: int, allowed: bool) -> WeeklySchedule:
        """A copy with one cell changed (what a tray grid does on click)."""
        row = self.rows[weekday]
        new_row = row[:hour] + ("1" if allowed else "0") + row[hour + 1 :]
        return WeeklySchedule((*self.rows[:weekday], new_row, *self.rows[weekday + 1 :]))

    @property
    def all_allowed(self) -> bool:
        return all(row == "1" * HOURS_PER_DAY for row in self.rows)

    @property
    def none_allowed(self) -> bool:
        return all(row == "0" * HOURS_PER_DAY for row in self.rows)


def schedule_problem(rows: object) -> str | None:
    """Why ``rows`` is not a valid schedule, or None when it is."""
    if isinstance(rows, str) or not isinstance(rows, Sequence):
        return f"expected a list of {len(DAYS)} strings, got {type(rows).__name__}"
    if len(rows) != len(DAYS):
        return f"expected {len(DAYS)} rows (Monday to Sunday), got {len(rows)}"
    for day, row in zip(DAYS, rows, strict=True):
        if not isinstance(row, str):
            return f"{day}: expected a string of {HOURS_PER_DAY} '0'/'1', got {row!r}"
        if len(row) != HOURS_PER_DAY or set(row) - {"0", "1"}:
            return f"{day}: expected {HOURS_PER_DAY} characters '0' or '1', got {row!r}"
    return None


def is_allowed(schedule: WeeklySchedule, when: datetime) -> bool:
    """Whether the local wall-clock hour of ``when`` is allowed."""
    return schedule.hour_allowed(when.weekday(), when.hour)


def next_transition(schedule: WeeklySchedule, when: datetime) -> datetime | None:
    """The first hour boundary strictly after ``when`` where ``is_allowed`` changes.

    None when the schedule never changes (all hours allowed or none). Windows across
    midnight and across Sunday→Monday are ordinary: the search walks the week's hours
    cyclically. The result has ``when``'s tzinfo (None for a naive ``when``).
    """
    if schedule.all_allowed or schedule.none_allowed:
        return None
    current = is_allowed(schedule, when)
    hour_start = when.replace(minute=0, second=0, microsecond=0)
    for step in range(1, HOURS_PER_WEEK + 1):
        candidate = hour_start + timedelta(hours=step)
        if is_allowed(schedule, candidate) != current:
            return candidate
    return None  # unreachable: a mixed schedule changes within a week


Clock = Callable[[], datetime]


def _local_now() -> datetime:
    return datetime.now().astimezone()


class ScheduleWatcher:
    """Calls ``callback(allowed, at)`` at each edge of the weekly schedule window.

    ``schedule`` is read each time an edge is computed, so pass a function that returns the
    current settings' schedule and call ``refresh()`` after the user edits it. The callback
    runs on the scheduler's thread. ``clock`` returns the local time (injectable for tests);
    timers are armed as "this long from now", so a test clock offset from the real one works.
    """

    def __init__(
        self,
        schedule: Callable[[], WeeklySchedule],
        callback: Callable[[bool, datetime], None],
        *,
        clock: Clock = _local_now,
    ) -> None:
        self._schedule = schedule
        self._callback = callback
        self._clock = clock
        self._lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._allowed: bool | None = None
        self.next_edge: datetime | None = None

    def start(self) -> None:
        """Start the background thread and arm the first timer. Idempotent."""
        with self._lock:
            if self._scheduler is not None:
                return
            self._scheduler = BackgroundScheduler(timezone=UTC, daemon=True)
            self._scheduler.start()
            self._allowed = is_allowed(self._schedule(), self._clock())
            self._arm_locked()

    def stop(self) -> None:
        """Stop the thread; no callback runs after this returns. Idempotent."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
            self.next_edge = None
        if scheduler is not None:
            scheduler.shutdown(wait=False)

    def refresh(self) -> None:
        """Re-arm after the schedule changed; calls back at once if allowed-ness changed."""
        self._fire(None)

    def _arm_locked(self) -> None:
        if self._scheduler is None:
            return
        now = self._clock()
        edge = next_transition(self._schedule(), now)
        self.next_edge = edge
        wake = now + MAX_WATCH_INTERVAL if edge is None else min(edge, now + MAX_WATCH_INTERVAL)
        delay = max(wake - now, timedelta(0))
        self._scheduler.add_job(
            self._fire,
            trigger=DateTrigger(run_date=datetime.now(UTC) + delay),
            args=[edge if wake == edge else None],
            id="schedule-edge",
            replace_existing=True,
            misfire_grace_time=None,  # a laptop that slept through an edge still hears of it
            coalesce=True,
        )

    def _fire(self, planned_edge: datetime | None) -> None:
        with self._lock:
            if self._scheduler is None:
                return
            now = self._clock()
            # Timers fire at or after their time; never judge the edge from a clock a hair early.
            at = now if planned_edge is None else max(now, planned_edge)
            allowed = is_allowed(self._schedule(), at)
            changed = allowed != self._allowed
            self._allowed = allowed
            self._arm_locked()
        if changed:
            try:
                self._callback(allowed, at)
            except Exception:
                log.exception("schedule callback failed")
