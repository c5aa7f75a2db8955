"""Answers the server gives itself, without the app: refusals and the last-resort 500."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from backend.serving.wsgi_call import Outcome
from federated.protocol.errors import ERROR_STATUS

log = logging.getLogger("backend.serving")


def error_bytes(code: str, message: str, retry_after: int | None = None) -> Outcome:
    """The server's own answer ``code`` (``federated.protocol.ERROR_STATUS``), closing."""
    status = ERROR_STATUS[code]
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
    ]
    if retry_after is not None:
        headers.append((b"Retry-After", str(retry_after).encode()))
    return Outcome(
        status=status, reason=HTTPStatus(status).phrase.encode(), headers=headers, body=body
    )


def raw_response(outcome: Outcome) -> bytes:
    """``outcome`` as HTTP/1.1 bytes, for answers sent before any request was parsed."""
    lines = [b"HTTP/1.1 %d %s" % (outcome.status, outcome.reason)]
    lines += [name + b": " + value for name, value in outcome.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + outcome.body


def internal_error(what: str) -> Outcome:
    """A 500 for an app that raised instead of answering (logged with its traceback)."""
    log.exception("the app failed %s", what)
    return error_bytes("internal_error", "the server hit an unexpected error")
