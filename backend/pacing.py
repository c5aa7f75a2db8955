"""Task pacing: hand out only work whose update can still be used when it arrives.

Volunteer machines differ by orders of magnitude in speed, and the same machine changes
speed when its owner throttles, pauses or closes the lid. Like BOINC's deadline estimates,
the coordinator keeps, per contributor, how long its tasks took from lease to upload
(its *pace*), estimates how long a fresh task stays useful (until when its update would
still be aggregated), and before each lease picks the largest task size that comes back
in time: the project's full task, half or a quarter of its steps, or nothing (the lease
answers 204, as when no work is available, and the long poll waits for the next version,
when the window opens again). A contributor without a pace gets the full task: new
contributors are trusted to be fast until measured otherwise. Every task manifest says by
when its update is useful (``useful_until``), so the contributor can give the task back
early when it cannot make it (``app/contributor/deadline.py``).

Pure functions over numbers; ``backend.services.leasing`` (the lease transaction) and
``backend.services.tasks`` (an upload records a pace sample) call them.

    next_pace(previous, *, seconds, steps, examples, now) -> Pace
    version_interval(created_at) -> float | None
    useful_until(*, mode, version_created_at, interval, now, max_staleness,
                 round_deadline_s, lease_s, round_needs_it=True) -> float
    fit_steps(*, full_steps, pace, now, useful_until) -> int | None
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PACE_WEIGHT = 0.3
"""Weight of a new sample in the pace's moving average: recent uploads count most, one
odd task does not decide alone."""

PACE_CLIP = 4.0
"""A sample moves the average as if it were at most this many times slower than the pace
so far: an hour's pause in the middle of a task is one slow task, not a verdict. Faster
samples count as they are (a machine is never faster than it can be)."""

PACE_FLOOR_S = 1e-3
"""Seconds per step; no pace is taken as faster (a turnaround of 0 s would otherwise stick)."""

PACE_HALF_LIFE_S = 600.0
"""Seconds; a pace not confirmed by an upload for this long counts as half as slow (and so
on). A contributor refused work gets no new samples, so without this a slow moment would
keep it out for good; this way it is offered a (small) task again before long, and that
upload measures it anew."""

PACE_FORGET_S = 1800.0
"""Seconds; a pace whose last sample is older is forgotten and the contributor is treated
as new (a full task)."""

PACE_MARGIN = 1.25
"""A task is handed out only if at least pace x steps x this much time remains until
``useful_until``: turnarounds vary from task to task."""

PACE_DEV_WEIGHT = 0.25
"""Weight of a new sample's distance from the pace in the pace's mean deviation."""

PACE_DEV_K = 2.0
"""A task is handed out only if (pace + this x the mean deviation) x steps remains until
``useful_until`` (as TCP's retransmit timeout allows for the round trip's variation): a
contributor whose turnarounds vary a lot (a busy machine, a shared line, the fixed cost of
each task weighing more in small ones) is given shorter work."""

TASK_FRACTIONS = (1.0, 0.5, 0.25)
"""Task sizes tried, as shares of the project's full task (its steps). Smaller tasks are
not offered: their fixed cost (model download, upload, aggregation weight for little
training) is no longer worth it. Few sizes also keep the contributor's data cache warm."""

ROUND_WAITS_S = 7 * 86400.0
"""Seconds after the deadline a sync round that cannot close without a task keeps using its
update: in effect no limit (the field is a signed int, so "none" is a week away)."""

VERSION_HISTORY = 8
"""How many of the latest intervals between model versions estimate the project's pace."""

INTERVAL_FLOOR_S = 0.1
"""Seconds; versions are never assumed to come faster than this (versions published in
the same instant, e.g. in tests with a fake clock, would otherwise leave no window)."""


@dataclass(frozen=True)
class Pace:
    """A contributor's measured pace: wall seconds from lease to upload per training step
    (training, throttling, pauses, download and upload together), as a moving average."""

    s_per_step: float
    samples: int  # uploads it rests on
    at: float  # unix seconds of the latest sample
    examples: int  # the example count of the latest upload (its local data size)
    dev: float = 0.0  # mean absolute deviation of the samples from the pace (s per step)


class _PaceColumns(Protocol):
    """Where a pace is stored (a client row: ``backend.store.ClientRecord``)."""

    @property
    def pace_s_per_step(self) -> float | None: ...
    @property
    def pace_dev(self) -> float | None: ...
    @property
    def pace_samples(self) -> int: ...
    @property
    def pace_at(self) -> float | None: ...
    @property
    def pace_examples(self) -> int | None: ...


def next_pace(
    previous: Pace | None, *, seconds: float, steps: int, examples: int, now: float
) -> Pace:
    """The pace after one more upload that took ``seconds`` since its lease for a task of
    ``steps`` training steps.

    The first sample is provisional: a contributor's first task also pays one-off costs
    (starting its trainer, loading its data, the first model download), so the second
    sample replaces it (unless slower still, then it is clipped), and only from the
    third on are samples averaged. Until then the deviation is taken as half the pace."""
    sample = max(PACE_FLOOR_S, max(0.0, seconds) / max(1, steps))
    if previous is None:
        return Pace(s_per_step=sample, samples=1, at=now, examples=examples, dev=sample / 2)
    old = max(PACE_FLOOR_S, previous.s_per_step)
    sample = min(sample, old * PACE_CLIP)
    if previous.samples == 1:
        return Pace(s_per_step=sample, samples=2, at=now, examples=examples, dev=sample / 2)
    value = (1.0 - PACE_WEIGHT) * old + PACE_WEIGHT * sample
    dev = (1.0 - PACE_DEV_WEIGHT) * previous.dev + PACE_DEV_WEIGHT * abs(sample - old)
    return Pace(s_per_step=value, samples=previous.samples + 1, at=now, examples=examples, dev=dev)


def version_interval(created_at: Sequence[float]) -> float | None:
    """The median of the gaps between the given publication times (oldest first); None
    for fewer than two. A median, not a mean: one long gap (the wait for the first
    contributors, a night without any) must not stretch every window after it, and a
    project that really slowed down moves the median within a few versions."""
    if len(created_at) < 2:
        return None
    gaps = sorted(max(0.0, b - a) for a, b in itertools.pairwise(created_at))
    middle = len(gaps) // 2
    return gaps[middle] if len(gaps) % 2 else (gaps[middle - 1] + gaps[middle]) / 2


def useful_until(
    *,
    mode: str,
    version_created_at: float,
    interval: float | None,
    now: float,
    max_staleness: int,
    round_deadline_s: float,
    lease_s: float,
    round_needs_it: bool = True,
    round_waits_for_it: bool = False,
) -> float:
    """Unix seconds until which an update to a task leased now, on the current version
    (published at ``version_created_at``), is still expected to be used.

    Async: until version current + max_staleness + 1 is expected (the update is refused
    after that), versions coming every ``interval`` seconds, at least ``INTERVAL_FLOOR_S``
    and at least as long as the current version has been current: a project whose
    versions stall (because tasks are withheld, or contributors left) widens the window
    again, so withholding cannot starve it. The next version is expected one interval
    after the current one, or half an interval from now if that is past. Without an
    interval yet (fewer than two versions), each version is assumed to take ``lease_s``.

    Sync: a round that cannot close without this task (``round_needs_it``: fewer than
    clients_per_round other tasks of the round are out or answered) uses it until its
    deadline. An over-provisioned task is useful until the round is expected to close:
    ``interval`` (recent rounds' length) after the version, at most ``round_deadline_s``.
    A round later than that closes at its deadline at the latest; one past its deadline
    still lacks updates, and any update within a lease is useful.

    A round that cannot reach ``min_updates`` without this task (``round_waits_for_it``)
    waits for it past its deadline: its update is useful whenever it arrives within its
    lease, so ``ROUND_WAITS_S`` after the deadline stands for "no limit"."""
    if mode == "async":
        if interval is None:
            return now + lease_s * (max_staleness + 1)
        interval = max(interval, INTERVAL_FLOOR_S, now - version_created_at)
        next_version = max(version_created_at + interval, now + interval / 2)
        return next_version + max_staleness * interval
    deadline = version_created_at + round_deadline_s
    if round_waits_for_it:
        return max(deadline, now) + ROUND_WAITS_S
    after_deadline = deadline if deadline > now else now + lease_s
    if round_needs_it:
        return after_deadline
    expected = round_deadline_s
    if interval is not None:
        expected = min(max(interval, INTERVAL_FLOOR_S), round_deadline_s)
    closes = version_created_at + expected
    return closes if closes > now else after_deadline


def fit_steps(*, full_steps: int, pace: Pace | None, now: float, useful_until: float) -> int | None:
    """The training steps to ask of a contributor now: the largest of ``TASK_FRACTIONS``
    of ``full_steps`` (at least one step) that its pace (decayed by ``PACE_HALF_LIFE_S``
    since its last sample) brings back by ``useful_until``, allowing for ``PACE_MARGIN``
    and ``PACE_DEV_K`` deviations;
    ``full_steps`` when it has no pace (or a forgotten one); None when even the smallest
    would come too late (withhold the task), except for a pace of one provisional sample,
    which gets the smallest task rather than none."""
    if pace is None or now - pace.at > PACE_FORGET_S:
        return full_steps
    remaining = useful_until - now
    decay = 0.5 ** (max(0.0, now - pace.at) / PACE_HALF_LIFE_S)
    s_per_step = pace.s_per_step * decay
    allowed = max(s_per_step * PACE_MARGIN, s_per_step + PACE_DEV_K * pace.dev * decay)
    steps = full_steps
    for fraction in TASK_FRACTIONS:
        steps = max(1, int(full_steps * fraction))
        if allowed * steps <= remaining:
            return steps
    return steps if pace.samples < 2 else None


def pace_of(row: _PaceColumns) -> Pace | None:
    """The ``Pace`` stored in a client row's columns, or None if it has none."""
    if row.pace_s_per_step is None or row.pace_at is None or row.pace_samples < 1:
        return None
    return Pace(
        s_per_step=row.pace_s_per_step,
        samples=row.pace_samples,
        at=row.pace_at,
        examples=int(row.pace_examples or 0),
        dev=float(row.pace_dev or 0.0),
    )
