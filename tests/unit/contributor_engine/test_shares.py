"""The weighted project picker and the per-project schedule file (``app.contributor.shares``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from app.contributor.shares import (
    DEFAULT_SHARE,
    RECENT_COMPUTE_HALF_LIFE_S,
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


def _run(
    shares: dict[str, float], turns: int, cost: dict[str, float] | None = None
) -> Counter[str]:
    """Pick ``turns`` times, charging each pick its project's cost (1 s by default)."""
    used = dict.fromkeys(shares, 0.0)
    picks: Counter[str] = Counter()
    last = None
    for _ in range(turns):
        last = pick([Candidate(k, s, used[k]) for k, s in shares.items()], after=last)
        picks[last] += 1
        used[last] += (cost or {}).get(last, 1.0)
    return picks


def test_shares_300_and_100_split_the_turns_3_to_1_exactly() -> None:
    assert _run({"a": 300, "b": 100}, 40) == {"a": 30, "b": 10}


def test_the_split_follows_compute_not_turns() -> None:
    # a's tasks cost 3 s, b's 1 s: equal shares mean equal compute, so b gets 3 turns to 1.
    picks = _run({"a": 100, "b": 100}, 40, cost={"a": 3.0, "b": 1.0})
    assert picks == {"a": 10, "b": 30}


def test_three_projects_by_weight() -> None:
    assert _run({"a": 200, "b": 100, "c": 100}, 40) == {"a": 20, "b": 10, "c": 10}


def test_ties_go_in_turn_as_round_robin_did() -> None:
    # Nothing computed (empty leases): equal shortfalls, taken in turn, whatever the shares.
    order = []
    last = None
    for _ in range(6):
        last = pick([Candidate("a", 300, 0.0), Candidate("b", 100, 0.0)], after=last)
        order.append(last)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_the_project_furthest_below_its_share_goes_first() -> None:
    # b has had 10 s of 40: its share is half, so it is 10 s short; a is 10 s over.
    candidates = [Candidate("a", 100, 30.0), Candidate("b", 100, 10.0)]
    assert pick(candidates, after="b") == "b"


def test_a_resting_project_waits_while_another_has_work() -> None:
    candidates = [Candidate("a", 300, 0.0, resting=True), Candidate("b", 100, 50.0)]
    assert pick(candidates) == "b"
    all_resting = [Candidate("a", 300, 0.0, resting=True), Candidate("b", 100, 50.0, resting=True)]
    assert pick(all_resting) == "a"


def test_pick_needs_a_candidate() -> None:
    with pytest.raises(ValueError):
        pick([])


def test_recent_compute_halves_after_the_half_life() -> None:
    schedule = ProjectSchedule(recent_compute_s=100.0, recent_at=1000.0)
    assert schedule.decayed(1000.0 + RECENT_COMPUTE_HALF_LIFE_S) == pytest.approx(50.0)
    charged = schedule.charged(10.0, 1000.0 + RECENT_COMPUTE_HALF_LIFE_S)
    assert charged.recent_compute_s == pytest.approx(60.0)


def test_a_new_project_starts_level_with_the_others() -> None:
    old = ProjectSchedule(share=100, recent_compute_s=1000.0, recent_at=0.0)
    new = level_with(ProjectSchedule(share=200), [old], now=0.0)
    assert new.recent_compute_s == pytest.approx(2000.0)  # its share beside theirs
    assert new.recent_at == 0.0
    # Never lowered: a project that is ahead stays ahead.
    ahead = ProjectSchedule(share=100, recent_compute_s=5000.0, recent_at=0.0)
    assert level_with(ahead, [old], now=0.0).recent_compute_s == pytest.approx(5000.0)
    # Alone: nothing to level with.
    assert level_with(ProjectSchedule(), [], now=5.0).recent_compute_s == 0.0


@pytest.mark.parametrize("text", ["0", "-1", "10001", "1.5", "many", ""])
def test_a_share_out_of_range_says_which_there_are(text: str) -> None:
    with pytest.raises(ValueError, match="whole number from 1 to 10000"):
        check_share(text)


def test_shares_in_range() -> None:
    assert check_share("200") == 200
    assert check_share(1) == 1


def test_the_schedule_file_round_trips_and_defaults(tmp_path: Path) -> None:
    assert read_schedule(tmp_path) == ProjectSchedule(share=DEFAULT_SHARE, mode=Mode.ACTIVE)
    schedule = ProjectSchedule(
        share=300, mode=Mode.NO_NEW_TASKS, recent_compute_s=12.5, recent_at=99.0
    )
    save_schedule(tmp_path / "p", schedule)
    assert read_schedule(tmp_path / "p") == schedule
    assert json.loads((tmp_path / "p" / SCHEDULING_FILE).read_text())["mode"] == "no_new_tasks"
    assert [p.name for p in (tmp_path / "p").iterdir()] == [SCHEDULING_FILE]  # no temp left


def test_an_unreadable_schedule_names_the_file(tmp_path: Path) -> None:
    (tmp_path / SCHEDULING_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=SCHEDULING_FILE + ".*move it aside"):
        read_schedule(tmp_path)
    (tmp_path / SCHEDULING_FILE).write_text(json.dumps({"share": 100, "mode": "sleeping"}))
    with pytest.raises(ValueError, match="move it aside"):
        read_schedule(tmp_path)
