"""The one way tests wait for something: poll a predicate until it holds, or fail by name.

Never a sleep-to-pass: ``wait_until`` returns the moment the predicate gives a truthy value,
and a timeout is an ``AssertionError`` that says what was awaited. Between checks it sleeps
``interval`` seconds, or, when the waiter has something better to block on:

- ``cond``: a ``threading.Condition`` the producer notifies. The predicate is checked with
  its lock held and the waits are ``cond.wait``, so a notification wakes the check at once;
- ``pause(seconds)``: any call that blocks at most ``seconds``, returning early when
  something may have changed (``proc.wait``, a change notifier); it may raise to fail at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar, cast

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    cond: threading.Condition | None = None,
    pause: Callable[[float], object] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    details: Callable[[], str] | None = None,
    fail: bool = True,
) -> T:
    """The first truthy value of ``predicate()`` within ``timeout`` seconds.

    ``ignore``: exceptions from the predicate that mean "not yet" (the last one is named in
    the failure). ``details()``: text appended to the failure (a log tail). ``fail=False``:
    on timeout return the last falsy value (None if the predicate only raised) instead of
    raising, for a wait whose outcome the test judges itself afterwards.
    """
    if cond is not None and pause is not None:
        raise ValueError("give cond or pause, not both")
    deadline = time.monotonic() + timeout
    value: T | None = None
    last_error: BaseException | None = None
    with cond if cond is not None else contextlib.nullcontext():
        while True:
            try:
                value = predicate()
            except ignore as exc:
                last_error = exc
            else:
                if value:
                    return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if cond is not None:
                cond.wait(remaining)
            elif pause is not None:
                pause(min(interval, remaining))
            else:
                time.sleep(min(interval, remaining))
    if not fail:
        return cast(T, value)
    message = f"timed out after {timeout:g} s waiting for {what}"
    if last_error is not None:
        message += f" (last error: {last_error!r})"
    if details is not None:
        message += f"\n{details()}"
    raise AssertionError(message)
