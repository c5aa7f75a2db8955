"""The token-bucket rate limiter, on a fake clock."""

from __future__ import annotations

import threading

import pytest

from backend.ratelimit import Decision, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_retry_after_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=clock)
    assert [limiter.check("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.check("a")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.retry_after_header == "1"
    clock.now += 0.5
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    clock.now += 100  # refills to burst, not beyond
    assert [limiter.check("a").allowed for _ in range(4)] == [True, True, True, False]


def test_clients_are_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, clock=FakeClock())
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed


def test_cost_and_oversized_cost() -> None:
    limiter = RateLimiter(rate=1.0, burst=5.0, clock=FakeClock())
    assert limiter.check("a", cost=4).allowed
    d = limiter.check("a", cost=4)
    assert not d.allowed and d.retry_after == pytest.approx(3.0)
    too_big = limiter.check("b", cost=6)
    assert not too_big.allowed and too_big.retry_after == pytest.approx(5.0)


def test_memory_is_bounded_by_max_clients() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=10.0, max_clients=100, clock=clock)
    for i in range(10_000):
        limiter.check(f"client-{i}")
        assert len(limiter) <= 100
    # Recently seen clients keep their (drained) bucket.
    for _ in range(9):
        limiter.check("client-9999")
    assert not limiter.check("client-9999").allowed


def test_idle_full_buckets_are_dropped() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2.0, clock=clock)
    for i in range(50):
        limiter.check(f"c{i}")
    clock.now += 10  # everyone refilled
    for _ in range(30):
        limiter.check("active")
    assert len(limiter) <= 2  # only "active" (plus at most one not yet examined)


def test_new_bucket_is_not_lost_by_eviction() -> None:
    # A fresh bucket is full; it must still be charged, not dropped before charging.
    limiter = RateLimiter(rate=1.0, burst=1.0, clock=FakeClock())
    assert limiter.check("solo").allowed
    assert not limiter.check("solo").allowed


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0.5)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=1, max_clients=0)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=1).check("a", cost=-1)
    assert Decision(False, 0.01).retry_after_header == "1"
    assert Decision(False, 2.2).retry_after_header == "3"


def test_exactly_burst_passes_under_threads() -> None:
    limiter = RateLimiter(rate=1e-9, burst=500.0)  # real clock; refill is negligible
    allowed = []
    lock = threading.Lock()

    def work() -> None:
        n = sum(limiter.check("shared").allowed for _ in range(200))
        with lock:
            allowed.append(n)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 500
