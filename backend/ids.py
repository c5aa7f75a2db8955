"""Every id from a request is checked here before it touches storage (formats: protocol)."""

from __future__ import annotations

import secrets

from backend.errors import BadRequest
from federated.protocol import is_digest, is_project_name, is_server_id


def check_project_name(name: str) -> str:
    if not is_project_name(name):
        raise BadRequest(
            f"{name[:80]!r} is not a project name (lower-case letters, digits and '-', at most 63)",
            code="bad_id",
        )
    return name


def check_server_id(value: str, what: str = "id") -> str:
    if not is_server_id(value):
        raise BadRequest(f"{value[:80]!r} is not a valid {what}", code="bad_id")
    return value


def check_digest(value: str) -> str:
    if not is_digest(value):
        raise BadRequest(f"{value[:80]!r} is not a sha256 hex digest", code="bad_id")
    return value


_VERSION_DIGITS = 10


def check_version_number(value: str) -> int:
    """A version number from a path: decimal digits, no sign or leading zero, at most 10."""
    if (
        not value
        or len(value) > _VERSION_DIGITS
        or not value.isascii()
        or not value.isdigit()
        or (value != "0" and value.startswith("0"))
    ):
        raise BadRequest(f"{value[:80]!r} is not a version number", code="bad_id")
    return int(value)


def new_id() -> str:
    """A server-made id: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)
