"""Who a request is charged to, and the buckets that hold: per client, per address, open reads.

Measured on the first wave: any ``Authorization`` header, even junk, switched the limit
off (the per-address bucket applied only to requests without one, and a bad token was
refused before the per-client bucket), while ``/healthz`` and model downloads shared one
bucket per address with everything else. Here:

- a request that authenticates is charged to its client (``client:ID``), so volunteers
  behind one NAT do not share a limit;
- every other request — no credentials, junk credentials, a token that fails — is charged
  to its address (``addr:IP``), before the token is even looked at;
- ``/healthz``, ``/metrics``, the OpenAPI document and model downloads are charged to a
  separate, generous bucket per address (``OPEN_ROUTES``, ``OPEN_FACTOR`` x the rate), so
  probes and downloads are neither starved by API traffic nor able to starve it;
- behind a load balancer, ``X-Forwarded-For`` names the address, but only when the peer is
  one of ``trusted_proxies`` (anyone can send the header).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping
from typing import Any

from backend.errors import TooManyRequests
from backend.metrics import BackendMetrics
from backend.ratelimit import RateLimiter

OPEN_ROUTES = frozenset({"healthz", "metrics", "openapi", "download_model", "current_model"})
"""Routes that read public, cacheable things: their own bucket per address."""

OPEN_FACTOR = 10.0
"""The open bucket's rate and burst, as a multiple of the API's."""


def parse_proxies(
    values: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Trusted proxy addresses or networks (``10.0.0.0/8``); ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {value!r} is not an IP address or network") from None
    return tuple(networks)


def forwarded_client(
    environ: MutableMapping[str, Any],
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> None:
    """Set ``REMOTE_ADDR`` to the client a trusted proxy forwarded for: the right-most address
    of ``X-Forwarded-For`` that is not itself a trusted proxy. From anyone else the header is
    ignored; a malformed one leaves the peer's address."""
    if not trusted:
        return
    peer = _address(environ.get("REMOTE_ADDR"))
    if peer is None or not any(peer in net for net in trusted):
        return
    header = str(environ.get("HTTP_X_FORWARDED_FOR") or "")[:2000]
    for part in reversed(header.split(",")):
        addr = _address(part.strip())
        if addr is None:
            return
        if not any(addr in net for net in trusted):
            environ["REMOTE_ADDR"] = str(addr)
            return


def _address(text: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


class Throttle:
    """The API buckets and the open-read buckets; ``None`` rate: no limits (tests, benches)."""

    def __init__(self, rate: float | None, burst: float, metrics: BackendMetrics) -> None:
        self._api = RateLimiter(rate=rate, burst=burst) if rate else None
        self._open = (
            RateLimiter(rate=rate * OPEN_FACTOR, burst=burst * OPEN_FACTOR) if rate else None
        )
        self._metrics = metrics

    def charge_request(self, route: str, address: str, authenticates: bool) -> None:
        """Before the handler: open reads to the open bucket, anything that will not
        authenticate to the address (a route that authenticates is charged then)."""
        if route in OPEN_ROUTES:
            self._charge(self._open, f"addr:{address}", route)
        elif not authenticates:
            self._charge(self._api, f"addr:{address}", route)

    def charge_client(self, client_id: str, route: str) -> None:
        self._charge(self._api, f"client:{client_id}", route)

    def charge_failed_auth(self, address: str, route: str) -> None:
        """A token that did not authenticate counts against its address."""
        self._charge(self._api, f"addr:{address}", route)

    def _charge(self, limiter: RateLimiter | None, key: str, route: str) -> None:
        if limiter is None:
            return
        decision = limiter.check(key)
        if not decision.allowed:
            self._metrics.rate_limited.labels(route=route).inc()
            raise TooManyRequests(
                "too many requests from this client; wait as Retry-After says",
                retry_after=int(decision.retry_after_header),
            )
