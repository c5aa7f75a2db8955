"""Whether and how hard to compute, applied to the trainer.

``policy.decide`` (pure) is asked again on every command, every ``sensor_interval_s`` and
at schedule edges; a SUSPEND pauses the trainer (it checkpoints and blocks), a THROTTLE
hands it new limits, a RUN resumes it. Decisions are applied in the order they are made.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from app.contributor import policy
from app.contributor.core import EngineCore
from app.contributor.events import PolicyChanged
from app.contributor.limits import Limits
from app.contributor.sensors import Sensors

__all__ = ["PolicyDriver"]

log = logging.getLogger(__name__)


class PolicyDriver:
    def __init__(self, core: EngineCore, sensors: Sensors) -> None:
        self._core = core
        self._sensors = sensors
        self._apply_lock = threading.Lock()

    def first_limits(self) -> Limits:
        """The limits the trainer starts with (before the engine runs)."""
        return self.limits_for(self._decide_locked())

    def _decide_locked(self) -> policy.Decision:
        core = self._core
        return policy.decide(core.settings, core.clock(), core.readings, core.policy_state)

    def limits_for(self, decision: policy.Decision) -> Limits:
        profile = decision.limits or self._core.settings.in_use
        return Limits.from_profile(profile)

    # --- the volunteer's say: pause, resume, snooze ------------------------------------
    def pause(self) -> None:
        with self._core.lock:
            self._core.policy_state = self._core.policy_state.pause()
        self.reconsider()

    def resume(self) -> None:
        with self._core.lock:
            self._core.policy_state = self._core.policy_state.resume()
        self.reconsider()

    def snooze(self, until: datetime | timedelta | float) -> datetime:
        now = self._core.clock()
        if isinstance(until, datetime):
            end = until
        elif isinstance(until, timedelta):
            end = now + until
        else:
            end = now + timedelta(seconds=float(until))
        with self._core.lock:
            self._core.policy_state = self._core.policy_state.snooze(end)
        self.reconsider()
        return end

    # --- the machine's say: sensors, schedule --------------------------------------------
    def set_sensors(self, sensors: Sensors) -> None:
        with self._core.lock:
            self._sensors = sensors

    def refresh_readings(self) -> None:
        try:
            readings = self._sensors.read()
        except Exception as exc:  # a sensor must never stop the engine
            log.warning("reading sensors failed: %s", exc)
            return
        with self._core.lock:
            self._core.readings = readings

    def reconsider(self) -> None:
        """Re-decide now and apply the decision to the trainer (any thread)."""
        with self._apply_lock:  # decisions are applied in the order they are made
            self._reconsider_serialized()

    def _reconsider_serialized(self) -> None:
        core = self._core
        trainer = core.trainer
        with core.lock:
            decision = self._decide_locked()
            core.policy_state = decision.state
            previous, core.decision = core.decision, decision
            current = core.current
        if previous is None or (previous.action, previous.reasons) != (
            decision.action,
            decision.reasons,
        ):
            profile = (
                "idle"
                if decision.action is policy.Action.RUN
                else "in_use"
                if decision.computing
                else ""
            )
            core.publish(
                PolicyChanged(
                    action=decision.action.value,
                    reasons=tuple(decision.describe()),
                    profile=profile,
                )
            )
        if decision.computing:
            with core.lock:
                core.suspended_since = None
            limits = self.limits_for(decision)
            if limits != trainer.limits:
                trainer.set_limits(limits)
            if trainer.paused:
                trainer.resume()
        else:
            with core.lock:
                if core.suspended_since is None:
                    core.suspended_since = time.monotonic()
            if not trainer.paused:
                trainer.pause()
            if current is not None:
                core.set_state(
                    core.paused_state(),
                    project=current.project,
                    task_id=current.task_id,
                    reasons=tuple(decision.describe()),
                )
        core.notify()

    def loop(self) -> None:
        """The policy thread: read the sensors and re-decide every ``sensor_interval_s``."""
        while not self._core.stop.wait(self._core.options.sensor_interval_s):
            self.refresh_readings()
            self.reconsider()

    def computing_share(self) -> tuple[float, float | None]:
        """(share of wall time training may use now, when a snooze ends if snoozed)."""
        core = self._core
        with core.lock:
            decision = core.decision
            snoozed = core.policy_state.snoozed_until
        if decision is None or not decision.computing or core.trainer.paused:
            return 0.0, snoozed.timestamp() if snoozed else None
        return min(1.0, core.trainer.limits.cpu_percent / 100.0), None
