"""Can this task still be finished while its update is useful? If not, give it back now.

A task manifest says until when its update will still be used (``useful_until``, unix
seconds; see docs/protocol.md): after that, an async update is too many versions behind
and a sync one misses its round, so finishing it wastes the volunteer's computer and
electricity. The engine asks during training, after each progress report, whether the
rest of the task fits before that time at the pace measured so far, under the share of
time it may compute now (the duty cycle of the CPU/GPU limit; 0 while paused or
suspended) and the known pauses ahead (a snooze ending, the schedule window closing and
the next one opening). When it does not, the engine gives the task back
(``release``), with ``GIVE_BACK_REASON``, instead of finishing useless work.

Pure functions of numbers; no I/O and no clock of their own (pass ``now``)::

    estimate_finish(*, now, useful_until, steps_done, total_steps, compute_s,
                    computing_share, resumes_at=None, stops_at=None, resume_share=None,
                    margin_s=UPLOAD_MARGIN_S, issued_at=None, running_s=None) -> FinishEstimate
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "FRESH_TASK_ODDS",
    "GIVE_BACK_REASON",
    "MIN_STEPS_TO_ESTIMATE",
    "UPLOAD_MARGIN_S",
    "USEFUL_UNTIL_SPREAD",
    "FinishEstimate",
    "estimate_finish",
]

GIVE_BACK_REASON = "cannot finish before the model moves on"
"""The reason the engine records (ledger, events) when it gives a task back for this."""

UPLOAD_MARGIN_S = 0.5
"""Seconds kept free after the last step for encoding and uploading a small update and the
coordinator's checks (digits-mlp: tens of milliseconds on loopback, well under a second
on a home line). The coordinator sizes tasks by turnarounds that include the upload, so
this margin is only what the upload itself takes: windows of small fast projects are
seconds long, and a larger margin gives back work that would have arrived in time. For
large updates pass ``margin_s`` from the measured duration of recent uploads."""


MIN_STEPS_TO_ESTIMATE = 3
"""Steps measured before the pace is trusted; before that only a task already past its
``useful_until`` is given back."""

USEFUL_UNTIL_SPREAD = 0.2
"""``useful_until`` is the coordinator's estimate of when the project will have moved on
too far, not a promise: its error is taken as normal, with this share of the task's
window (``useful_until - issued_at``; without ``issued_at``, the task's estimated length)
as standard deviation."""

FRESH_TASK_ODDS = 0.8
"""The chance that a fresh task's update is used (the coordinator sized it to arrive in
time). Finishing this task spends the compute left for a chance P of using all of it; a
fresh task would use about this share of the same compute. So the task is kept while
P >= this x the share of it still to compute: near its end a task is finished even if it
is more likely than not to be late, at its start it is given back at the first doubt."""


@dataclass(frozen=True)
class FinishEstimate:
    """When the task would be finished, and whether that is in time.

    ``finish_at``: unix seconds of the last step, ``math.inf`` if computing will not
    resume before the update is useless, None if the pace is not known yet.
    ``in_time``: carry on (also when nothing can be estimated yet).
    ``reason``: ``GIVE_BACK_REASON`` when not in time, else "".
    ``detail``: numbers for a log line ("needs ~340 s more, 120 s left")."""

    finish_at: float | None
    in_time: bool
    reason: str = ""
    detail: str = ""


def estimate_finish(
    *,
    now: float,
    useful_until: float | None,
    steps_done: int,
    total_steps: int,
    compute_s: float,
    computing_share: float,
    resumes_at: float | None = None,
    stops_at: float | None = None,
    resume_share: float | None = None,
    margin_s: float = UPLOAD_MARGIN_S,
    issued_at: float | None = None,
    running_s: float | None = None,
) -> FinishEstimate:
    """Estimate when the task would finish and whether it is before ``useful_until``.

    - ``useful_until``: the manifest's field; None (an older coordinator) never gives back.
    - ``steps_done`` of ``total_steps``; ``compute_s``: seconds spent computing those steps,
      not counting throttle sleeps and pauses (the trainer's ``elapsed_s``), so the pace
      per step at a full share is ``compute_s / steps_done``.
    - ``computing_share`` (0..1): the share of wall time computing may use from now on
      (the duty cycle: 0.25 under a 25 % limit; 0 while paused or suspended).
    - While computing (share > 0): ``stops_at`` is when it is known to stop (the schedule
      window closing), and ``resumes_at`` when it starts again (the next window; None:
      not before the update is useless).
    - While not computing (share 0): ``resumes_at`` is when it resumes (a snooze or pause
      ending; None: unknown, judged as if it resumed now, because the user may resume at
      any moment and giving back throws away the work done).
    - ``resume_share``: the share after resuming (default: ``computing_share``, or 1.0
      while not computing).
    - ``margin_s``: seconds kept for encoding and upload after the last step.
    - ``issued_at``: the manifest's field, to size the uncertainty of ``useful_until``
      (``USEFUL_UNTIL_SPREAD``); ``in_time`` weighs the chance of arriving in time
      against the share of the task still to do (``FRESH_TASK_ODDS``).
    - ``running_s``: wall seconds the task has been computing so far (pauses excluded).
      When given, the share computing really got (``compute_s / running_s``) replaces
      ``computing_share`` while computing: a duty cycle limits CPU time, so on a busy
      machine a 25 % limit may not bind at all, and the configured share would make the
      task look four times slower than it is.
    """
    if useful_until is None or steps_done >= total_steps:
        return FinishEstimate(finish_at=None if useful_until is None else now, in_time=True)
    if now + margin_s > useful_until:
        return _late(math.inf, f"its update is useful until {useful_until:.0f}, now {now:.0f}")
    if computing_share <= 0 and resumes_at is not None and resumes_at + margin_s > useful_until:
        # Whatever the pace: computing only starts again after the update is useless.
        return _late(math.inf, f"resumes at {resumes_at:.0f}, useful until {useful_until:.0f}")
    if steps_done < MIN_STEPS_TO_ESTIMATE or compute_s <= 0:
        return FinishEstimate(finish_at=None, in_time=True)
    remaining = (total_steps - steps_done) * compute_s / steps_done  # compute seconds
    share = min(1.0, max(0.0, computing_share))
    if running_s is not None and running_s > 0:
        observed = min(1.0, compute_s / running_s)
        if share > 0:
            share = observed
        elif resume_share is None:
            resume_share = observed
    if share <= 0:
        start = now if resumes_at is None else max(now, resumes_at)
        after = _share(resume_share, 1.0)
        finish = start + remaining / after
    else:
        finish = now + remaining / share
        if stops_at is not None and stops_at < finish:
            left = remaining - max(0.0, stops_at - now) * share
            if resumes_at is None:
                finish = math.inf
            else:
                finish = max(resumes_at, stops_at) + left / _share(resume_share, share)
    if math.isinf(finish):
        return _late(finish, f"cannot resume in time, {useful_until - now:.0f} s left")
    window = (
        useful_until - issued_at
        if issued_at is not None and useful_until > issued_at
        else total_steps
        * compute_s
        / steps_done
        / (share if share > 0 else _share(resume_share, 1.0))
    )
    odds = _chance_in_time(useful_until - (finish + margin_s), USEFUL_UNTIL_SPREAD * window)
    if odds >= FRESH_TASK_ODDS * (total_steps - steps_done) / total_steps:
        return FinishEstimate(finish_at=finish, in_time=True)
    return _late(
        finish,
        f"needs ~{finish - now:.0f} s more, {useful_until - now:.0f} s left "
        f"(in time with odds {odds:.0%})",
    )


def _chance_in_time(slack_s: float, spread_s: float) -> float:
    """P(the real end of the window is after the finish), the error being normal with
    standard deviation ``spread_s``; ``slack_s`` is how long before the estimate we finish."""
    if spread_s <= 0:
        return 1.0 if slack_s >= 0 else 0.0
    return 0.5 * (1.0 + math.erf(slack_s / (spread_s * math.sqrt(2.0))))


def _share(value: float | None, default: float) -> float:
    if value is None or value <= 0:
        return default
    return min(1.0, value)


def _late(finish_at: float, detail: str) -> FinishEstimate:
    return FinishEstimate(
        finish_at=finish_at, in_time=False, reason=GIVE_BACK_REASON, detail=detail
    )
