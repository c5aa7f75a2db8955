"""Update uploads: whole in one request, and resumed where they stopped when cut.

A payload of at most ``RESUME_CHUNK_BYTES`` is sent as one PUT, retried as a whole (the
coordinator answers a repeat with the first receipt). A larger one is also sent whole
first; when that is cut (a connection error, a timeout, a 5xx, ``incomplete_body``), the
coordinator has kept what arrived (docs/protocol.md "Resumable upload"): the client asks
how much (``GET …/update`` with the same signed manifest) and sends the rest in chunks of
``RESUME_CHUNK_BYTES``, each with ``Content-Range`` and its ``Content-Digest``, so a cut
from then on costs at most one chunk. Every request keeps the bandwidth cap. The retry
budget (``RetryPolicy.attempts``) counts failures in a row: a chunk that got through
starts it again, so a long upload over a bad link still finishes while it makes progress.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

from app.contributor.client.errors import ServerError, UnavailableError, _json_of
from app.contributor.client.transport import ThrottledBody
from federated import protocol
from federated.protocol.limits import RESUME_CHUNK_BYTES

if TYPE_CHECKING:
    from app.contributor.client.coordinator_client import CoordinatorClient

__all__ = ["RESUME_CHUNK_BYTES", "send_update"]

log = logging.getLogger(__name__)

_CANNOT_RESUME = frozenset({"method_not_allowed", "not_found"})
"""What a coordinator from before resumable uploads answers the offset question."""


def send_update(
    client: CoordinatorClient,
    url: str,
    headers: dict[str, str],
    payload: bytes,
    *,
    chunk_bytes: int = RESUME_CHUNK_BYTES,
) -> Any:
    """PUT ``payload`` to ``url`` with the signed ``headers``; the receipt's JSON. Raises
    ``ServerError`` for a refusal and ``UnavailableError`` once ``client.retry.attempts``
    tries in a row made no progress."""

    def body(data: bytes) -> Callable[[], ThrottledBody]:
        return lambda: ThrottledBody(data, client.upload_kbps_cap, cancel=client.cancel)

    if len(payload) <= chunk_bytes:
        return client.request_json(
            "PUT", url, auth=True, headers=headers, body_factory=body(payload)
        )
    total = len(payload)
    fails = 0
    first = True
    resumable = True  # until a coordinator from before resumable uploads says otherwise
    last: Exception | None = None
    while fails < client.retry.attempts:
        try:
            if first or not resumable:
                first = False
                return _put(client, url, headers, body(payload))[1]
            try:
                held = _progress(client, url, headers)
            except ServerError as exc:
                if exc.code not in _CANNOT_RESUME:
                    raise
                resumable = False  # it keeps nothing of a cut upload: send it whole again
                continue
            if held.receipt is not None:
                return protocol.to_wire(held.receipt)
            offset = held.offset if held.length == total else 0
            while True:
                end = min(offset + chunk_bytes, total)
                piece = payload[offset:end]
                digest = base64.b64encode(hashlib.sha256(piece).digest()).decode("ascii")
                chunk_headers = {
                    **headers,
                    "Content-Range": f"bytes {offset}-{end - 1}/{total}",
                    "Content-Digest": f"sha-256=:{digest}:",
                }
                status, answer = _put(client, url, chunk_headers, body(piece))
                if status != 202:
                    return answer  # the last chunk: the receipt
                offset = client._answer(
                    answer, protocol.UploadProgress, "the upload progress"
                ).offset
                fails = 0  # progress: the retry budget starts again
        except UnavailableError as exc:
            last = exc
        except ServerError as exc:
            if exc.code not in protocol.RESUME_CODES:
                raise
            last = exc  # this chunk was refused and nothing stored: ask where to go on
        fails += 1
        if fails < client.retry.attempts:
            delay = client.retry.delay(fails - 1)
            log.info("upload to %s cut (%s); resuming in %.2fs", url, last, delay)
            client._sleep(delay)
    raise UnavailableError(
        f"the upload to {client.server_url} did not get through after {fails} tries in a "
        f"row without progress ({last}); it will be resumed later"
    )


def _put(
    client: CoordinatorClient,
    url: str,
    headers: dict[str, str],
    body_factory: Callable[[], ThrottledBody],
) -> tuple[int, Any]:
    """One PUT: (status, parsed JSON); a cut or a 5xx is ``UnavailableError``."""

    def read(response: requests.Response) -> tuple[int, Any]:
        return response.status_code, _json_of(response)

    return client._attempts(
        "PUT", url, read=read, auth=True, headers=headers, body_factory=body_factory, attempts=1
    )


def _progress(
    client: CoordinatorClient, url: str, headers: dict[str, str]
) -> protocol.UploadProgress:
    """How much of this upload the coordinator holds (one try)."""
    signed = {k: v for k, v in headers.items() if k.startswith("X-Barnraise-")}
    answer = client._attempts("GET", url, read=_json_of, auth=True, headers=signed, attempts=1)
    return client._answer(answer, protocol.UploadProgress, "the upload progress")
