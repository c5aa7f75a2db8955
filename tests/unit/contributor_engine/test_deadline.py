"""Giving a task back early when it cannot finish while its update is useful
(``app.contributor.deadline``, issue 9 section 3)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from app.contributor import deadline
from app.contributor.deadline import GIVE_BACK_REASON, estimate_finish

NOW = 1_000_000.0


def args(**changes: Any) -> dict[str, Any]:
    """Half-way through 100 steps at 1 s of compute per step, computing at full share,
    1000 s before the update stops being useful."""
    base: dict[str, Any] = {
        "now": NOW,
        "useful_until": NOW + 1000.0,
        "steps_done": 50,
        "total_steps": 100,
        "compute_s": 50.0,
        "computing_share": 1.0,
        "margin_s": 10.0,
    }
    base.update(changes)
    return base


def finish(**changes: Any) -> float | None:
    return estimate_finish(**args(**changes)).finish_at


def test_a_task_with_time_to_spare_carries_on() -> None:
    estimate = estimate_finish(**args())
    assert estimate.in_time and estimate.finish_at == pytest.approx(NOW + 50.0)
    assert estimate.reason == "" and estimate_finish(**args()).in_time


def test_throttling_stretches_the_rest_of_the_task() -> None:
    # 50 compute seconds left at a 25 % duty cycle: 200 s of wall time.
    assert finish(computing_share=0.25) == pytest.approx(NOW + 200)
    assert estimate_finish(**args(computing_share=0.25, useful_until=NOW + 260.0)).in_time
    late = estimate_finish(**args(computing_share=0.25, useful_until=NOW + 100.0))
    assert not late.in_time and late.reason == GIVE_BACK_REASON
    assert "needs ~200 s more" in late.detail and "100 s left" in late.detail


def test_a_pause_with_a_known_end_adds_its_wait() -> None:
    paused = args(computing_share=0.0, resumes_at=NOW + 300.0)
    assert finish(**paused) == pytest.approx(NOW + 350.0)
    assert estimate_finish(**paused).in_time
    assert not estimate_finish(**{**paused, "useful_until": NOW + 200.0}).in_time
    # After the pause it runs at the limit it will have then.
    assert finish(**paused, resume_share=0.5) == pytest.approx(NOW + 400.0)


def test_an_open_ended_pause_is_judged_as_if_it_ended_now() -> None:
    """The user may resume any moment; give back only when even that would be too late."""
    paused = args(computing_share=0.0, resumes_at=None)
    assert finish(**paused) == pytest.approx(NOW + 50.0)
    assert estimate_finish(**paused).in_time
    assert not estimate_finish(**{**paused, "useful_until": NOW + 30.0}).in_time


def test_a_schedule_window_closing_stops_the_work_until_the_next_one() -> None:
    # 20 s of compute before the window closes, the other 30 after it reopens at +500.
    closing = args(stops_at=NOW + 20.0, resumes_at=NOW + 500.0)
    assert finish(**closing) == pytest.approx(NOW + 530.0)
    assert estimate_finish(**closing).in_time
    assert not estimate_finish(**{**closing, "useful_until": NOW + 300.0}).in_time
    # No next window known: cannot finish.
    never = estimate_finish(**args(stops_at=NOW + 20.0))
    assert not never.in_time and math.isinf(never.finish_at or 0.0)
    assert "cannot resume in time" in never.detail
    # A window closing after the task would finish changes nothing.
    assert finish(stops_at=NOW + 80.0) == pytest.approx(NOW + 50.0)


def test_useful_until_is_an_estimate_so_a_nearly_done_task_is_finished() -> None:
    """Issued 100 s ago, useful for 200 s: the deadline is uncertain by 20 % of that
    (40 s). Predicted 10 s late: nine tenths done, finish it; a tenth done, give it back."""
    common = {
        "useful_until": NOW + 100.0,
        "issued_at": NOW - 100.0,
        "margin_s": 0.0,
        "total_steps": 100,
    }
    nearly = args(**common, steps_done=90, compute_s=90.0, computing_share=1 / 11)
    assert finish(**nearly) == pytest.approx(NOW + 110.0)
    assert estimate_finish(**nearly).in_time
    barely = args(**common, steps_done=10, compute_s=10.0, computing_share=0.9 / 1.1)
    assert finish(**barely) == pytest.approx(NOW + 110.0)
    estimate = estimate_finish(**barely)
    assert not estimate.in_time and "odds" in estimate.detail
    # Far too late is given back however much is done.
    assert not estimate_finish(**{**nearly, "computing_share": 0.01}).in_time


def test_at_the_start_a_task_is_given_back_at_the_first_serious_doubt() -> None:
    tight = args(
        steps_done=5,
        compute_s=5.0,
        useful_until=NOW + 96.0,  # predicted to finish 1 s before, with 20 s of spread
        issued_at=NOW - 4.0,
        margin_s=0.0,
    )
    assert finish(**tight) == pytest.approx(NOW + 95.0)
    assert not estimate_finish(**tight).in_time
    assert estimate_finish(**{**tight, "useful_until": NOW + 130.0}).in_time


def test_the_share_computing_really_got_beats_the_configured_one() -> None:
    """On a busy machine a 25 % limit may not bind: 50 s of compute in 60 s of running."""
    busy = args(computing_share=0.25, running_s=60.0)
    assert finish(**busy) == pytest.approx(NOW + 60.0)  # 50 s of compute at 50/60
    assert finish(computing_share=0.25) == pytest.approx(NOW + 200.0)  # without it
    # Paused now: after resuming it computes at the share seen so far.
    paused = args(computing_share=0.0, resumes_at=NOW + 100.0, running_s=100.0)
    assert finish(**paused) == pytest.approx(NOW + 200.0)


def test_without_a_deadline_or_a_pace_it_carries_on() -> None:
    assert estimate_finish(**args(useful_until=None, computing_share=0.0)).in_time
    early = args(steps_done=deadline.MIN_STEPS_TO_ESTIMATE - 1, compute_s=1.0)
    assert estimate_finish(**early).finish_at is None and estimate_finish(**early).in_time
    assert estimate_finish(**args(compute_s=0.0)).in_time
    assert estimate_finish(**args(steps_done=100, useful_until=NOW - 5.0)).in_time  # done: upload


def test_a_task_already_past_its_useful_time_is_given_back_at_once() -> None:
    late = estimate_finish(**args(steps_done=0, compute_s=0.0, useful_until=NOW + 5.0))
    assert not late.in_time and late.reason == GIVE_BACK_REASON


def test_shares_outside_zero_to_one_are_clamped() -> None:
    assert finish(computing_share=3.0) == pytest.approx(NOW + 50.0)
    assert finish(computing_share=-1.0) == pytest.approx(NOW + 50.0)  # as paused, resuming now
