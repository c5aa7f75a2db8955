"""What the coordinator client raises, and how an answer is classified.

Exceptions::

    ClientError                    anything the client raises
    ├── InsecureTransportError     http:// to a host that is not loopback, without insecure=True
    ├── ServerError                the coordinator answered with a JSON error (.status, .code)
    │   ├── AuthError              401/403: the token or key is not (or no longer) accepted
    │   └── LeaseLostError         the task is gone: expired, answered, rejected, not ours
    ├── UnavailableError           no usable answer after the retries (connection, 5xx, 429)
    ├── IntegrityError             a download does not match its digest
    └── UntrustedError             a task or model is not signed by the pinned project key

A network error is anything that leaves us without a whole answer (``_CUT_SHORT``, and
``_CutShort`` for a JSON body that does not parse): it is retried like a refused connection.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import requests
import urllib3.exceptions

__all__ = [
    "AuthError",
    "Cancelled",
    "ClientError",
    "InsecureTransportError",
    "IntegrityError",
    "LeaseLostError",
    "ServerError",
    "UnavailableError",
    "UntrustedError",
]

_CUT_SHORT: tuple[type[BaseException], ...] = (
    # What requests raises: refused, reset, RemoteDisconnected (ConnectionError), timeouts,
    # and a body cut midway (ChunkedEncodingError wraps urllib3's ProtocolError/IncompleteRead).
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    # The same faults unwrapped, as another transport (or a body read outside requests'
    # own wrappers) raises them.
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    http.client.IncompleteRead,
    http.client.HTTPException,
    ConnectionError,  # the built-in one: reset, aborted, broken pipe
    TimeoutError,
)
"""Exceptions that mean "no whole answer arrived": retried like a refused connection."""

_TASK_ID_LOST = {
    "lease_expired",
    "unknown_task",
    "not_your_task",
    "task_already_answered",
    # The coordinator ended the task for good after a final rejection of its update; it is
    # never handed out again, so the engine must drop it (issue 9, section 2).
    "task_rejected",
}
"""Error codes that mean "this task is gone": LeaseLostError, whatever the status."""

_RETRIED_CODES = {
    # The coordinator got our request body cut short (a connection broken mid-upload that
    # it noticed first): a network error, sent again like a refused connection.
    "incomplete_body",
}


class ClientError(Exception):
    """Anything the coordinator client raises."""


class InsecureTransportError(ClientError):
    pass


class ServerError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class AuthError(ServerError):
    pass


class LeaseLostError(ServerError):
    pass


class UnavailableError(ClientError):
    pass


class IntegrityError(ClientError):
    pass


class UntrustedError(ClientError):
    pass


class Cancelled(ClientError):
    """The caller's cancel event was set while waiting."""


class _CutShort(Exception):
    """A response arrived but not whole (a JSON body that does not parse): retried."""


_RETRIED: tuple[type[BaseException], ...] = (_CutShort, *_CUT_SHORT)


def _declares_json(response: requests.Response) -> bool:
    ctype = response.headers.get("Content-Type", "")
    return ctype.split(";")[0].strip().lower() == "application/json"


def _error_of(response: requests.Response) -> ServerError:
    """The coordinator's JSON error as an exception. An error body that says it is JSON but
    does not parse was cut short (``_CutShort``: retried); any other body (a proxy's HTML
    page) gives a ServerError with code ``http_error``."""
    code, message = "http_error", response.reason or "error"
    try:
        body = json.loads(response.content)
    except ValueError:
        if _declares_json(response) and response.content:
            raise _CutShort(f"HTTP {response.status_code} with a cut JSON body") from None
        body = None
    try:
        code = str(body["error"]["code"])
        message = str(body["error"]["message"])
    except (KeyError, TypeError):
        pass
    status = response.status_code
    if status in (401, 403) and code not in _TASK_ID_LOST:
        return AuthError(status, code, message)
    if code in _TASK_ID_LOST or status == 410:
        return LeaseLostError(status, code, message)
    return ServerError(status, code, message)


def _json_of(response: requests.Response) -> Any:
    """The parsed body of a 2xx answer; None for 204 No Content. A body that does not parse
    was cut short (a proxy or the network ended it early): ``_CutShort``, retried."""
    if response.status_code == 204:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        raise _CutShort(
            f"HTTP {response.status_code} with a body that is not whole JSON "
            f"({len(response.content)} bytes)"
        ) from None


def _whole_response(response: requests.Response) -> requests.Response:
    return response
