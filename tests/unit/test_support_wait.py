"""tests.support.wait_until: returns at once when the predicate holds, fails by name."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support import wait_until


def test_returns_the_first_truthy_value_as_soon_as_it_holds() -> None:
    calls: list[float] = []

    def third_time() -> str | None:
        calls.append(time.monotonic())
        return "ready" if len(calls) == 3 else None

    started = time.monotonic()
    assert wait_until(third_time, 10, "the third call", interval=0.01) == "ready"
    assert len(calls) == 3 and time.monotonic() - started < 5


def test_a_timeout_names_what_was_awaited() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.1 s waiting for the moon"):
        wait_until(lambda: False, 0.1, "the moon", details=lambda: "sky: cloudy")
    assert wait_until(lambda: 0, 0.05, "nothing", fail=False) == 0


def test_ignored_errors_mean_not_yet_and_the_last_is_named() -> None:
    attempts: list[int] = []

    def flaky() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not up")
        return True

    assert wait_until(flaky, 10, "the service", interval=0.01, ignore=(ConnectionError,))

    def down() -> bool:
        raise ConnectionError("still down")

    with pytest.raises(AssertionError, match="still down"):
        wait_until(down, 0.1, "the service", ignore=(ConnectionError,))
    with pytest.raises(ValueError):  # not ignored: raised at once
        wait_until(lambda: int("x"), 10, "a number")


def test_a_condition_wakes_the_check_when_notified() -> None:
    cond = threading.Condition()
    box: list[int] = []

    def produce() -> None:
        time.sleep(0.1)
        with cond:
            box.append(1)
            cond.notify_all()

    threading.Thread(target=produce).start()
    assert wait_until(lambda: list(box), 10, "the box to fill", cond=cond) == [1]


def test_pause_replaces_the_sleep_and_may_fail_at_once() -> None:
    pauses: list[float] = []
    assert wait_until(lambda: len(pauses) >= 2, 10, "two pauses", pause=pauses.append)

    def dead(_seconds: float) -> None:
        pytest.fail("the process died")

    with pytest.raises(pytest.fail.Exception, match="died"):
        wait_until(lambda: False, 10, "a dead process", pause=dead)
