"""When and how hard to compute: a pure function of settings, time, sensors and state.

``decide(settings, now, readings, state)`` returns a ``Decision``: RUN (the "while idle"
profile), THROTTLE (the "while I use the computer" profile, or a profile with the GPU off),
or SUSPEND (no limits: nothing runs), the reasons in words, and the next ``PolicyState``.
Nothing here reads a clock, a sensor or a file, so every rule is testable with plain values.

Unknown readings (None) are treated as follows, on the side of the volunteer's machine:

- idle time unknown → the user is taken to be active (THROTTLE to ``in_use``), unless
  ``idle_minutes_before_start`` is 0;
- power source unknown → taken to be on battery (SUSPEND unless ``run_on_battery``);
- other programs' CPU unknown → the previous busy/not-busy state is kept;
- a temperature unknown → that limit cannot be checked and is skipped (most machines
  without a sensor would otherwise never compute); the previous "too hot" state is kept,
  so a sensor that vanishes while hot does not let training resume.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime

from app.contributor.schedule import is_allowed, next_transition
from app.contributor.sensors import SensorReadings
from app.contributor.settings import TEMP_HYSTERESIS_C, Profile, Settings

__all__ = [
    "TEMP_HYSTERESIS_C",
    "Action",
    "Decision",
    "PolicyState",
    "Reason",
    "decide",
    "next_change",
]


class Action(enum.Enum):
    RUN = "run"  # full "while idle" profile
    THROTTLE = "throttle"  # reduced limits; still computing
    SUSPEND = "suspend"  # stop computing (checkpoint and wait)


class Reason(enum.Enum):
    """Why the decision is not a plain RUN. ``value`` is the text for the user."""

    PAUSED = "paused"
    SNOOZED = "snoozed"
    OUTSIDE_SCHEDULE = "outside the schedule"
    ON_BATTERY = "on battery"
    POWER_UNKNOWN = "power source unknown (treated as battery)"
    USER_ACTIVE = "you are using the computer"
    IDLE_UNKNOWN = "idle time unknown (treated as in use)"
    OTHER_PROGRAMS_BUSY = "other programs are busy"
    CPU_TOO_HOT = "CPU too hot"
    GPU_TOO_HOT = "GPU too hot"

    @property
    def suspends(self) -> bool:
        return self not in (Reason.USER_ACTIVE, Reason.IDLE_UNKNOWN)

    @property
    def text(self) -> str:
        return self.value


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between calls: user's pause/snooze and hysteresis."""

    paused: bool = False
    snoozed_until: datetime | None = None
    other_busy: bool = False
    cpu_hot: bool = False
    gpu_hot: bool = False

    def pause(self) -> PolicyState:
        return dataclasses.replace(self, paused=True, snoozed_until=None)

    def resume(self) -> PolicyState:
        """Undo pause and snooze (hysteresis memory stays: the machine is what it is)."""
        return dataclasses.replace(self, paused=False, snoozed_until=None)

    def snooze(self, until: datetime) -> PolicyState:
        return dataclasses.replace(self, snoozed_until=until)


@dataclass(frozen=True)
class Decision:
    """What to do now. ``limits`` is None exactly when ``action`` is SUSPEND."""

    action: Action
    limits: Profile | None
    reasons: tuple[Reason, ...]
    state: PolicyState
    snoozed_until: datetime | None = None

    @property
    def computing(self) -> bool:
        return self.action is not Action.SUSPEND

    def describe(self) -> list[str]:
        """The reasons as sentences fragments, e.g. ``["snoozed until 14:30"]``."""
        texts = []
        for reason in self.reasons:
            if reason is Reason.SNOOZED and self.snoozed_until is not None:
                texts.append(f"snoozed until {self.snoozed_until:%H:%M}")
            else:
                texts.append(reason.text)
        return texts

    def summary(self) -> str:
        """One line for a tray tooltip: ``"Throttled: you are using the computer"``."""
        head = {Action.RUN: "Running", Action.THROTTLE: "Throttled", Action.SUSPEND: "Suspended"}
        reasons = self.describe()
        return head[self.action] + (": " + ", ".join(reasons) if reasons else "")


def _hot(temp: float | None, limit: float | None, was_hot: bool) -> bool:
    if limit is None:
        return False
    if temp is None:
        return was_hot
    if was_hot:
        return temp > limit - TEMP_HYSTERESIS_C
    return temp >= limit


def _clamp_cores(profile: Profile, cpu_count: int | None) -> Profile:
    if cpu_count is None or profile.cpu_cores <= cpu_count:
        return profile
    return dataclasses.replace(profile, cpu_cores=max(1, cpu_count))


def decide(
    settings: Settings, now: datetime, readings: SensorReadings, state: PolicyState
) -> Decision:
    """Decide what to do at local time ``now``. Pure; the new state is ``Decision.state``.

    ``now`` and ``state.snoozed_until`` must both be naive or both aware.
    """
    reasons: list[Reason] = []

    snoozed_until = state.snoozed_until
    if snoozed_until is not None and now >= snoozed_until:
        snoozed_until = None  # the snooze ran out

    if state.paused:
        reasons.append(Reason.PAUSED)
    if snoozed_until is not None:
        reasons.append(Reason.SNOOZED)
    if not is_allowed(settings.schedule, now):
        reasons.append(Reason.OUTSIDE_SCHEDULE)
    if not settings.run_on_battery:
        if readings.on_battery is None:
            reasons.append(Reason.POWER_UNKNOWN)
        elif readings.on_battery:
            reasons.append(Reason.ON_BATTERY)

    other = readings.other_cpu_percent
    if other is None:
        other_busy = state.other_busy
    elif state.other_busy:
        other_busy = other >= settings.other_cpu_resume_percent
    else:
        other_busy = other > settings.other_cpu_suspend_percent
    if other_busy:
        reasons.append(Reason.OTHER_PROGRAMS_BUSY)

    cpu_hot = _hot(readings.cpu_temp_c, settings.cpu_temp_limit_c, state.cpu_hot)
    if cpu_hot:
        reasons.append(Reason.CPU_TOO_HOT)
    gpu_hot = _hot(readings.gpu_temp_c, settings.gpu_temp_limit_c, state.gpu_hot)
    if gpu_hot:
        reasons.append(Reason.GPU_TOO_HOT)

    idle_needed_s = settings.idle_minutes_before_start * 60
    if idle_needed_s > 0:
        if readings.idle_seconds is None:
            reasons.append(Reason.IDLE_UNKNOWN)
        elif readings.idle_seconds < idle_needed_s:
            reasons.append(Reason.USER_ACTIVE)

    next_state = PolicyState(
        paused=state.paused,
        snoozed_until=snoozed_until,
        other_busy=other_busy,
        cpu_hot=cpu_hot,
        gpu_hot=gpu_hot,
    )
    if any(reason.suspends for reason in reasons):
        action, limits = Action.SUSPEND, None
    elif reasons:
        action, limits = Action.THROTTLE, _clamp_cores(settings.in_use, readings.cpu_count)
    else:
        action, limits = Action.RUN, _clamp_cores(settings.idle, readings.cpu_count)
    return Decision(
        action=action,
        limits=limits,
        reasons=tuple(reasons),
        state=next_state,
        snoozed_until=snoozed_until,
    )


def next_change(
    settings: Settings, now: datetime, state: PolicyState | None = None
) -> datetime | None:
    """When the schedule window next opens or closes (or a snooze ends, if ``state`` is
    given and snoozed), whichever is first; None when neither will happen. For timers:
    the controller should also re-decide on every sensor poll."""
    candidates = []
    edge = next_transition(settings.schedule, now)
    if edge is not None:
        candidates.append(edge)
    if state is not None and state.snoozed_until is not None and state.snoozed_until > now:
        candidates.append(state.snoozed_until)
    return min(candidates, default=None)
