"""HTTP client for the coordinator's contributor API (docs/protocol.md).

- ``errors``: the ``ClientError`` tree and how an answer is classified (retried or not);
- ``transport``: which URLs may carry tokens, the retry policy, the throttled upload body;
- ``coordinator_client``: ``CoordinatorClient`` and what it returns (``LeasedTask``, ...);
- ``downloads``: model downloads into the cache, resumed and digest-checked;
- ``files``: atomic JSON writes and quiet removal for the engine's state files.

The client never imports torch: model bytes go to the cache, the trainer child decodes them.
"""

from __future__ import annotations

from app.contributor.client.coordinator_client import (
    DEFAULT_LEASE_WAIT_S,
    CoordinatorClient,
    JoinResult,
    LeasedTask,
)
from app.contributor.client.downloads import DOWNLOAD_CHUNK
from app.contributor.client.errors import (
    AuthError,
    Cancelled,
    ClientError,
    InsecureTransportError,
    IntegrityError,
    LeaseLostError,
    ServerError,
    UnavailableError,
    UntrustedError,
)
from app.contributor.client.files import remove_quietly, save_json_atomic
from app.contributor.client.transport import (
    DEFAULT_TIMEOUT_S,
    UPLOAD_CHUNK,
    RetryPolicy,
    ThrottledBody,
    check_transport,
    is_loopback_host,
)

__all__ = [
    "DEFAULT_LEASE_WAIT_S",
    "DEFAULT_TIMEOUT_S",
    "DOWNLOAD_CHUNK",
    "UPLOAD_CHUNK",
    "AuthError",
    "Cancelled",
    "ClientError",
    "CoordinatorClient",
    "InsecureTransportError",
    "IntegrityError",
    "JoinResult",
    "LeaseLostError",
    "LeasedTask",
    "RetryPolicy",
    "ServerError",
    "ThrottledBody",
    "UnavailableError",
    "UntrustedError",
    "check_transport",
    "is_loopback_host",
    "remove_quietly",
    "save_json_atomic",
]
