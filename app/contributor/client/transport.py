"""Transport rules of the coordinator client: which URLs may carry tokens, how calls are
retried (exponential backoff with full jitter, honouring ``Retry-After``), and an upload body
throttled to the volunteer's bandwidth cap."""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from app.contributor.client.errors import Cancelled, InsecureTransportError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "UPLOAD_CHUNK",
    "RetryPolicy",
    "ThrottledBody",
    "check_transport",
    "is_loopback_host",
]

# (connect, read) timeouts for ordinary calls; a long poll adds its wait to the read timeout.
DEFAULT_TIMEOUT_S = (5.0, 30.0)
UPLOAD_CHUNK = 16 * 1024


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(url: str, *, insecure: bool) -> None:
    """Refuse plain http:// to anything but loopback unless ``insecure`` (tokens and keys travel)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise InsecureTransportError(f"{url!r}: only http(s) coordinators are supported")
    if insecure or is_loopback_host(parts.hostname or ""):
        return
    raise InsecureTransportError(
        f"{url!r} uses plain http to another machine, so your token and updates would travel "
        "unencrypted; ask the organiser for the https address, or pass --insecure if you "
        "trust this network"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**attempt))."""

    attempts: int = 6
    base_s: float = 0.25
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s)
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))


class ThrottledBody:
    """An upload body that yields chunks no faster than ``kbps`` kilobits per second.

    It has a length, so requests sends ``Content-Length`` (not chunked encoding), and it can
    be iterated again for a retry.
    """

    def __init__(
        self,
        data: bytes,
        kbps: float,
        *,
        chunk: int = UPLOAD_CHUNK,
        cancel: threading.Event | None = None,
    ) -> None:
        self._data = data
        self._rate = kbps * 125.0 if kbps > 0 else 0.0  # kilobits/s -> bytes/s
        self._chunk = chunk
        self._cancel = cancel or threading.Event()

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[bytes]:
        start = time.monotonic()
        sent = 0
        view = memoryview(self._data)
        while sent < len(self._data):
            piece = bytes(view[sent : sent + self._chunk])
            yield piece
            sent += len(piece)
            if self._rate:
                ahead = sent / self._rate - (time.monotonic() - start)
                if ahead > 0 and self._cancel.wait(ahead):
                    raise Cancelled("upload cancelled")


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
