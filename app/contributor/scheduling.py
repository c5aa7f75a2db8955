"""The engine's side of resource shares and per-project modes (``app.contributor.shares``).

``Scheduler`` keeps each project's ``ProjectSchedule`` (read from beside the project's state
on first use, written back on every change), says whether a project may take a step now
(its mode), picks the next project among the ready ones (``shares.pick``), charges each
turn the compute seconds the ledger recorded for it, and changes shares and modes for the
volunteer, announcing each change (``ProjectScheduleChanged``).

A turn that found no work (an empty lease) makes the project rest, from
``MIN_NO_WORK_REST_S`` doubling to ``MAX_NO_WORK_REST_S`` while it keeps finding none: the
others go first meanwhile, so a project with a large share and nothing to hand out cannot
hold up one that has work, and one that was out of work only for a moment is soon asked
again. Thread-safe (the engine's lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from app.contributor.core import EngineCore
from app.contributor.events import ProjectScheduleChanged
from app.contributor.ledger import ProjectTotals
from app.contributor.shares import (
    SCHEDULING_FILE,
    Candidate,
    Mode,
    ProjectSchedule,
    check_share,
    level_with,
    pick,
    read_schedule,
    save_schedule,
)

__all__ = ["MAX_NO_WORK_REST_S", "MIN_NO_WORK_REST_S", "Scheduler"]

log = logging.getLogger(__name__)

MIN_NO_WORK_REST_S, MAX_NO_WORK_REST_S = 1.0, 30.0
"""A project whose last turn found no work waits this long (doubling) while others work."""


class Scheduler:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._schedules: dict[str, ProjectSchedule] = {}
        self._folders: dict[str, Path] = {}
        self._resting_until: dict[str, float] = {}
        self._rest_s: dict[str, float] = {}  # how long the next rest of each project is
        self._last: str | None = None  # the last project picked: ties go to the next one
        self.turn: str | None = None  # the project the main loop works on now

    # --- the schedules -----------------------------------------------------------------
    def of(self, key: str, folder: Path) -> ProjectSchedule:
        """``key``'s schedule (read on first use; an unreadable file reads as the defaults
        and is reported)."""
        with self._core.lock:
            known = self._schedules.get(key)
            if known is not None:
                return known
        try:
            schedule = read_schedule(folder)
        except ValueError as exc:
            self._core.error(str(exc), code="scheduling")
            schedule = ProjectSchedule()
        with self._core.lock:
            self._folders[key] = folder
            return self._schedules.setdefault(key, schedule)

    def _store(self, key: str, schedule: ProjectSchedule) -> None:
        with self._core.lock:
            self._schedules[key] = schedule
            folder = self._folders[key]
        try:
            save_schedule(folder, schedule)
        except OSError as exc:
            log.warning("could not save the share and mode of %s: %s", key, exc)

    def forget(self, key: str, folder: Path) -> None:
        """The project was left: its share and mode go with it."""
        with self._core.lock:
            self._schedules.pop(key, None)
            self._folders.pop(key, None)
            self._resting_until.pop(key, None)
            self._rest_s.pop(key, None)
        (folder / SCHEDULING_FILE).unlink(missing_ok=True)

    # --- the main loop -------------------------------------------------------------------
    def admits(self, key: str, folder: Path, name: str, *, in_hand: bool) -> bool:
        """May ``key`` take a step now? Active: yes; no new tasks: only to finish the work
        ``in_hand``; suspended: no. Finish-then-stop with nothing in hand becomes suspended."""
        schedule = self.of(key, folder)
        if schedule.mode is Mode.FINISH_THEN_STOP and not in_hand:
            self._announce(key, name, replace(schedule, mode=Mode.SUSPENDED))
            return False
        if schedule.mode is Mode.ACTIVE:
            return True
        return in_hand and schedule.mode is not Mode.SUSPENDED

    def choose(self, ready: Sequence[tuple[str, Path]]) -> str:
        """The key of the ready project to work on next (see ``shares.pick``)."""
        now, clock = time.time(), time.monotonic()
        for key, folder in ready:
            self.of(key, folder)
        with self._core.lock:
            fresh = [k for k, s in self._schedules.items() if s.recent_at is None]
            settled = [s for s in self._schedules.values() if s.recent_at is not None]
        for key in fresh:  # new to the picker: level with the others, not owed their past
            self._store(key, level_with(self._schedules[key], settled, now))
        with self._core.lock:
            candidates = [
                Candidate(
                    key=key,
                    share=float(self._schedules[key].share),
                    recent_compute_s=self._schedules[key].decayed(now),
                    resting=self._resting_until.get(key, 0.0) > clock,
                )
                for key, _folder in ready
            ]
            chosen = pick(candidates, after=self._last)
            self._last = chosen
            return chosen

    def start_turn(self, key: str) -> ProjectTotals:
        """The main loop begins a step on ``key``; what the ledger held before it."""
        with self._core.lock:
            self.turn = key
        return self._core.ledger.totals(key)

    def end_turn(self, key: str, name: str, before: ProjectTotals, *, in_hand: bool) -> None:
        """The step on ``key`` ended: charge it the compute the ledger recorded meanwhile;
        a step that found no work rests the project; finish-then-stop may stop now."""
        with self._core.lock:
            self.turn = None
        after = self._core.ledger.totals(key)
        used = after.compute_seconds - before.compute_seconds
        got_work = in_hand or (after.tasks, after.rejected) != (before.tasks, before.rejected)
        with self._core.lock:
            schedule = self._schedules.get(key)
            if got_work:
                self._resting_until.pop(key, None)
                self._rest_s.pop(key, None)
            else:
                rest = self._rest_s.get(key, MIN_NO_WORK_REST_S)
                self._resting_until[key] = time.monotonic() + rest
                self._rest_s[key] = min(MAX_NO_WORK_REST_S, rest * 2)
        if schedule is None:
            return
        if used > 0:
            schedule = schedule.charged(used, time.time())
            self._store(key, schedule)
        if schedule.mode is Mode.FINISH_THEN_STOP and not in_hand:
            self._announce(key, name, replace(schedule, mode=Mode.SUSPENDED))

    # --- the volunteer's say -------------------------------------------------------------
    def set_share(self, key: str, folder: Path, name: str, share: object) -> ProjectSchedule:
        schedule = replace(self.of(key, folder), share=check_share(share))
        self._announce(key, name, schedule)
        return schedule

    def set_mode(
        self, key: str, folder: Path, name: str, mode: Mode, *, in_hand: bool
    ) -> ProjectSchedule:
        """Set ``key``'s mode; finish-then-stop with nothing in hand is suspended at once,
        and a project back from a suspension starts level with the others."""
        schedule = self.of(key, folder)
        if mode is Mode.FINISH_THEN_STOP and not in_hand:
            mode = Mode.SUSPENDED
        if schedule.mode is Mode.SUSPENDED and mode is not Mode.SUSPENDED:
            with self._core.lock:
                others = [s for k, s in self._schedules.items() if k != key]
            schedule = level_with(schedule, others, time.time())
        schedule = replace(schedule, mode=mode)
        self._announce(key, name, schedule)
        with self._core.lock:
            self._resting_until.pop(key, None)
        self._core.notify()
        return schedule

    def _announce(self, key: str, name: str, schedule: ProjectSchedule) -> None:
        self._store(key, schedule)
        log.info("%s: share %d, %s", name, schedule.share, schedule.mode.value)
        self._core.publish(
            ProjectScheduleChanged(project=name, share=schedule.share, mode=schedule.mode.value)
        )
