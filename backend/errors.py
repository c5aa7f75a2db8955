"""Errors the coordinator answers with; each carries its HTTP status and a stable code.

    HTTPError                      500 internal_error
    ├── BadRequest                 400 bad_request (bad_id, bad_json, bad_challenge, incomplete_body)
    ├── Unauthorized               401 missing_token, bad_token
    ├── Forbidden                  403 invite_required, bad_invite, bad_signature, not_your_task
    ├── NotFound                   404 not_found, unknown_project, unknown_task
    ├── MethodNotAllowed           405 method_not_allowed
    ├── Conflict                   409 wrong_base, task_already_answered
    ├── Gone                       410 project_closed, project_finished, lease_expired, task_rejected
    ├── PayloadTooLarge            413 payload_too_large
    ├── UnsupportedMediaType       415 unsupported_media_type
    ├── RangeNotSatisfiable        416 range_not_satisfiable
    ├── Unprocessable              422 manifest_mismatch, digest_mismatch, and the payload codes
    ├── TooManyRequests            429 rate_limited (Retry-After)
    ├── ServiceUnavailable         503 project_paused, unavailable (Retry-After)
    └── InsufficientStorage        507 insufficient_storage (Retry-After): the disk is full

The codes and their statuses are ``federated.protocol.ERROR_STATUS`` (both programs read
that table); ``api_error`` is the one place a code becomes an error of its status.
``error_body`` is the one place that turns an error into the JSON body the protocol
documents: ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from typing import ClassVar

from federated.protocol import ERROR_STATUS, ProtocolError
from federated.protocol import FINAL_UPLOAD_CODES as FINAL_UPLOAD_CODES
from federated.protocol import PAYLOAD_CODES as PAYLOAD_CODES


class HTTPError(Exception):
    """An answer other than success. ``code`` defaults to the class's code."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.extra_headers = list(headers or [])

    def headers(self) -> list[tuple[str, str]]:
        out = [("Content-Type", "application/json")]
        if self.retry_after is not None:
            out.append(("Retry-After", str(max(1, int(self.retry_after)))))
        return out + self.extra_headers


class BadRequest(HTTPError):
    status = 400
    default_code = "bad_request"


class Unauthorized(HTTPError):
    status = 401
    default_code = "bad_token"


class Forbidden(HTTPError):
    status = 403
    default_code = "forbidden"


class NotFound(HTTPError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(HTTPError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(HTTPError):
    status = 409
    default_code = "conflict"


class Gone(HTTPError):
    status = 410
    default_code = "gone"


class PayloadTooLarge(HTTPError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    status = 415
    default_code = "unsupported_media_type"


class RangeNotSatisfiable(HTTPError):
    status = 416
    default_code = "range_not_satisfiable"


class Unprocessable(HTTPError):
    status = 422
    default_code = "unprocessable"


class TooManyRequests(HTTPError):
    status = 429
    default_code = "rate_limited"


class ServiceUnavailable(HTTPError):
    status = 503
    default_code = "unavailable"


class InsufficientStorage(HTTPError):
    status = 507
    default_code = "insufficient_storage"


_BY_STATUS: dict[int, type[HTTPError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        Gone,
        PayloadTooLarge,
        UnsupportedMediaType,
        RangeNotSatisfiable,
        Unprocessable,
        TooManyRequests,
        ServiceUnavailable,
        InsufficientStorage,
    )
}


def api_error(code: str, message: str, *, retry_after: int | None = None) -> HTTPError:
    """The error of the documented status for ``code`` (see ``ERROR_STATUS``)."""
    status = ERROR_STATUS[code]
    cls = _BY_STATUS.get(status, HTTPError)
    return cls(message, code=code, retry_after=retry_after)


def refusal(exc: ProtocolError) -> HTTPError:
    """A message that broke the contract, answered with its code's status."""
    return api_error(exc.code, exc.message)


def error_body(error: HTTPError) -> bytes:
    """The JSON body of ``error``, as the protocol documents it."""
    return json.dumps(
        {"error": {"code": error.code, "message": error.message}}, ensure_ascii=False
    ).encode("utf-8")
