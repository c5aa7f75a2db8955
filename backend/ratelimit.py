"""Per-client token-bucket rate limiting, thread-safe, O(1) per check, bounded memory.

API::

    limiter = RateLimiter(rate=20.0, burst=40.0)        # 20 requests/s sustained, 40 at once
    decision = limiter.check(client_key)                # or .check(key, cost=5.0)
    if not decision.allowed:
        # 429 rate_limited, header Retry-After: decision.retry_after_header
        ...

``client_key`` is whatever identifies a client: its client id when a bearer token
authenticated it, else the remote address. Each key has a bucket of ``burst`` tokens that
refills at ``rate`` tokens per second; a check takes ``cost`` tokens or, if there are not
enough, takes none and says how many seconds until there will be.

Memory: at most ``max_clients`` buckets are kept, least recently used first out. A bucket
idle long enough to have refilled completely is the same as a fresh one, so dropping it
forgets nothing; those are dropped first, a few per check (amortised O(1)). Only when more
than ``max_clients`` clients are active within one refill period is a partly drained bucket
forgotten, which lets that one client start over with a full burst.

The clock is injectable (``clock=``, monotonic seconds) so tests run without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_CLIENTS = 100_000
"""Buckets kept at most; each costs roughly 150 bytes."""

_EVICT_PER_CHECK = 2
"""Idle buckets examined per check: enough to drain idle ones faster than new ones arrive."""


@dataclass(frozen=True)
class Decision:
    """``allowed``, or else ``retry_after`` seconds (> 0) until the request would pass."""

    allowed: bool
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """The ``Retry-After`` header value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


_ALLOWED = Decision(True, 0.0)


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Token buckets keyed by client; see the module docstring."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of tokens per second, got {rate!r}")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be at least 1 token, got {burst!r}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._refill_seconds = self.burst / self.rate
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them.

        A ``cost`` above ``burst`` can never pass; it is refused with the time a full
        bucket would take, so callers should keep costs within ``burst``.
        """
        if cost < 0:
            raise ValueError("cost must not be negative")
        now = self._clock()
        with self._lock:
            # First, so the bucket this check is about is never dropped after it is read.
            self._evict_idle(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(self.burst, now)
                self._buckets[key] = bucket
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                elapsed = now - bucket.updated
                if elapsed > 0:
                    bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                    bucket.updated = now
                self._buckets.move_to_end(key)
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return _ALLOWED
            if cost > self.burst:
                return Decision(False, self._refill_seconds)
            return Decision(False, (cost - bucket.tokens) / self.rate)

    def _evict_idle(self, now: float) -> None:
        # The oldest entries sit at the front; drop those that have refilled completely.
        for _ in range(_EVICT_PER_CHECK):
            if not self._buckets:
                return
            key, oldest = next(iter(self._buckets.items()))
            idle = now - oldest.updated
            if oldest.tokens + idle * self.rate < self.burst:
                return
            del self._buckets[key]
