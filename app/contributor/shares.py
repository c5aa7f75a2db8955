"""Several projects on one computer: each project's resource share and the volunteer's say
over it (suspend, no new tasks, finish then stop), and which project works next.

BOINC's semantics: a share is a relative weight (``DEFAULT_SHARE`` 100); a project with
share 200 gets about twice the compute of one with 100, over time. ``pick`` chooses, among
the projects ready now, the one furthest below its share of the compute they received
lately; the engine charges each project the compute seconds its tasks used (the ledger's).
"Lately" decays with ``RECENT_COMPUTE_HALF_LIFE_S`` (BOINC's recent estimated credit), so a
project is never owed a backlog for ever; a project new to the picker, or resumed after a
suspension, starts level with the others (``level_with``) rather than owed what it missed.

Pure functions and one small file per project (``SCHEDULING_FILE`` beside the project's
other state, written atomically); no engine imports, so the CLI edits it with no engine
running. ``app.contributor.scheduling`` applies it in the engine.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from federated.files import write_atomic

__all__ = [
    "DEFAULT_SHARE",
    "MAX_SHARE",
    "MIN_SHARE",
    "MODE_WORDS",
    "RECENT_COMPUTE_HALF_LIFE_S",
    "SCHEDULING_FILE",
    "Candidate",
    "Mode",
    "ProjectSchedule",
    "check_share",
    "level_with",
    "pick",
    "read_schedule",
    "save_schedule",
]

DEFAULT_SHARE = 100
"""A project's share until the volunteer sets one (BOINC's default)."""
MIN_SHARE, MAX_SHARE = 1, 10_000
"""The shares one can set: any positive weight up to 100 times the default."""
RECENT_COMPUTE_HALF_LIFE_S = 10 * 86400.0
"""Compute a project received counts half after this long (BOINC: 10 days)."""
TIE_TOLERANCE = 1e-9
"""Shortfalls closer than this (relative to the compute in all) are a tie, broken in turn."""
SCHEDULING_FILE = "scheduling.json"


class Mode(enum.StrEnum):
    """The volunteer's say over one project (``barnraise project NAME ...``)."""

    ACTIVE = "active"  # works by its share
    SUSPENDED = "suspended"  # no work at all; a task in hand is checkpointed and given back
    NO_NEW_TASKS = "no_new_tasks"  # finishes (trains, uploads) the task in hand, leases no more
    FINISH_THEN_STOP = "finish_then_stop"  # as NO_NEW_TASKS, then SUSPENDED once it is done


MODE_WORDS = {
    Mode.ACTIVE: "active",
    Mode.SUSPENDED: "suspended by you",
    Mode.NO_NEW_TASKS: "no new tasks",
    Mode.FINISH_THEN_STOP: "finishing its task, then suspended",
}
"""Each mode as ``barnraise status`` and the tray say it."""


def check_share(value: object) -> int:
    """``value`` as a share, or ValueError saying which shares there are."""
    try:
        share = int(str(value))
    except ValueError:
        share = 0
    if not MIN_SHARE <= share <= MAX_SHARE or str(share) != str(value).strip():
        raise ValueError(
            f"{value!r} is not a share; give a whole number from {MIN_SHARE} to {MAX_SHARE} "
            f"(the default is {DEFAULT_SHARE}; 200 gets twice the compute of 100)"
        )
    return share


@dataclass(frozen=True)
class ProjectSchedule:
    """One project's share and mode, and the compute it received lately (the engine's)."""

    share: int = DEFAULT_SHARE
    mode: Mode = Mode.ACTIVE
    recent_compute_s: float = 0.0
    recent_at: float | None = None  # epoch seconds recent_compute_s was reckoned at; None: new

    def decayed(self, now: float) -> float:
        """The recent compute as of ``now``."""
        if self.recent_at is None:
            return self.recent_compute_s
        age = max(0.0, now - self.recent_at)
        return self.recent_compute_s * math.pow(0.5, age / RECENT_COMPUTE_HALF_LIFE_S)

    def charged(self, seconds: float, now: float) -> ProjectSchedule:
        """After the project received ``seconds`` more compute at ``now``."""
        return replace(self, recent_compute_s=self.decayed(now) + max(0.0, seconds), recent_at=now)

    def to_json(self) -> dict[str, object]:
        return {
            "share": self.share,
            "mode": self.mode.value,
            "recent_compute_s": self.recent_compute_s,
            "recent_at": self.recent_at,
        }


def read_schedule(project_dir: Path) -> ProjectSchedule:
    """The schedule saved in ``project_dir``; the defaults when none is. ValueError naming
    the file when it cannot be read."""
    path = project_dir / SCHEDULING_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return ProjectSchedule()
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path} cannot be read ({exc}); move it aside to start this project's share "
            "and mode afresh"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object; move it aside to start afresh")
    try:
        at = data.get("recent_at")
        return ProjectSchedule(
            share=check_share(data.get("share", DEFAULT_SHARE)),
            mode=Mode(data.get("mode", Mode.ACTIVE)),
            recent_compute_s=max(0.0, float(data.get("recent_compute_s", 0.0))),
            recent_at=float(at) if at is not None else None,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}; move it aside to start afresh") from None


def save_schedule(project_dir: Path, schedule: ProjectSchedule) -> None:
    """Write it atomically (a reader never sees half of it)."""
    write_atomic(project_dir / SCHEDULING_FILE, json.dumps(schedule.to_json(), sort_keys=True))


def level_with(
    schedule: ProjectSchedule, others: Iterable[ProjectSchedule], now: float
) -> ProjectSchedule:
    """``schedule`` brought level with ``others``: its recent compute raised to what its
    share would have received beside theirs (never lowered), so that a project new to the
    picker or back from a suspension is not owed the compute it was not asking for."""
    others = list(others)
    shares = sum(o.share for o in others)
    if not shares:
        return replace(schedule, recent_at=now, recent_compute_s=schedule.decayed(now))
    level = schedule.share * sum(o.decayed(now) for o in others) / shares
    return replace(schedule, recent_compute_s=max(schedule.decayed(now), level), recent_at=now)


@dataclass(frozen=True)
class Candidate:
    """A project ready to work, as ``pick`` sees it."""

    key: str
    share: float
    recent_compute_s: float  # decayed to the same moment for every candidate
    resting: bool = False  # its last turn found no work: asked only when all others rest


def pick(candidates: Sequence[Candidate], *, after: str | None = None) -> str:
    """The key of the candidate furthest below its share of the candidates' compute.

    Shortfall = share / (sum of shares) × (sum of compute) − its compute. Resting
    candidates count only when every candidate rests. Ties go in turn: to the first tied
    candidate after ``after`` (the last one picked) in the order given, so equal shares
    with no compute yet alternate, as plain round-robin did. Deterministic.
    """
    if not candidates:
        raise ValueError("pick needs at least one candidate")
    pool = [c for c in candidates if not c.resting] or list(candidates)
    shares = sum(c.share for c in pool)
    total = sum(c.recent_compute_s for c in pool)
    shortfall = {c.key: c.share / shares * total - c.recent_compute_s for c in pool}
    best = max(shortfall.values())
    tolerance = TIE_TOLERANCE * max(1.0, total)
    tied = [c.key for c in pool if best - shortfall[c.key] <= tolerance]
    order = [c.key for c in candidates]
    start = order.index(after) + 1 if after in order else 0
    rotated = order[start:] + order[:start]
    return next(key for key in rotated if key in tied)
