"""What one connection may cost the server: sizes, deadlines and connection counts."""

from __future__ import annotations

import ipaddress
import resource
from dataclasses import dataclass

from federated.protocol import limits as protocol_limits

RESERVED_FDS = 256
"""File descriptors kept for the database, blobs, logs and temp files when the connection
cap is derived from ``RLIMIT_NOFILE``."""


@dataclass(frozen=True)
class ServerLimits:
    """Every bound the connection layer enforces before the app sees a request.

    A request that breaks one is answered by the server itself (JSON error, then the
    connection is closed) and never reaches the app."""

    header_bytes: int = 32 * 1024
    """Request line and headers together (431 beyond). Twice the signed manifest header's
    own cap (``MAX_MANIFEST_HEADER_BYTES``), so an upload always fits."""
    header_timeout_s: float = 10.0
    """From a request's first byte to the end of its headers (408 beyond): a client
    dribbling headers holds a socket for this long, never a thread."""
    idle_timeout_s: float = 60.0
    """A keep-alive connection with no request in flight is closed after this long."""
    body_grace_s: float = 10.0
    body_min_bytes_per_s: float = 8 * 1024
    """A body must arrive within ``body_grace_s + length / body_min_bytes_per_s`` of the
    end of its headers (408 beyond): 64 MiB gets over two hours, 1 KiB ten seconds. A
    streamed body must also keep up that rate on average once the app reads it (after
    the grace), or the app reads its end early: a stalled upload holds a thread for about
    ``body_grace_s``, not for its whole deadline."""
    write_timeout_s: float = 60.0
    """A client that reads nothing of its response for this long is disconnected."""
    max_body_bytes: int = 4 * protocol_limits.DEFAULT_MAX_PAYLOAD_BYTES
    """No route takes more (413 before any of it is read); routes cap lower themselves."""
    buffered_body_bytes: int = protocol_limits.MAX_JSON_BODY_BYTES
    """Bodies up to this size are read in full before the app runs (a slow one costs no
    thread), chunked ones too until they grow past it; larger ones (uploads) are streamed
    to the app, which authenticates first."""
    max_connections: int = 0
    """Open connections in all; 0 derives it from ``RLIMIT_NOFILE`` (503 beyond)."""
    max_connections_per_address: int = 256
    """Open connections from one address (429 beyond). A campus NAT may need more."""
    uncapped_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Peers the per-address cap does not count: the trusted proxies (``--trusted-proxy``),
    each carrying many volunteers' connections; the proxy caps each volunteer itself
    (nginx's ``limit_conn``, ``deploy/nginx/barnraise-site.conf``)."""

    def caps_address(self, address: str) -> bool:
        """Whether connections from ``address`` count against the per-address cap."""
        if not self.uncapped_networks:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return True
        return not any(peer in net for net in self.uncapped_networks)

    def connection_cap(self) -> int:
        if self.max_connections > 0:
            return self.max_connections
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(64, soft - RESERVED_FDS)

    def body_deadline_s(self, length: int) -> float:
        return self.body_grace_s + length / self.body_min_bytes_per_s


def raise_open_file_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the new soft
    limit. Each waiting volunteer is one socket, and distributions default to 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
