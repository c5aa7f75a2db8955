"""Identifier formats; every id from a request is checked here before it touches storage."""

from __future__ import annotations

import re
import secrets

from backend.errors import BadRequest

PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SERVER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def check_project_name(name: str) -> str:
    if not PROJECT_NAME_RE.match(name):
        raise BadRequest(
            f"{name[:80]!r} is not a project name (lower-case letters, digits and '-', at most 63)",
            code="bad_id",
        )
    return name


def check_server_id(value: str, what: str = "id") -> str:
    if not SERVER_ID_RE.match(value):
        raise BadRequest(f"{value[:80]!r} is not a valid {what}", code="bad_id")
    return value


def check_digest(value: str) -> str:
    if not DIGEST_RE.match(value):
        raise BadRequest(f"{value[:80]!r} is not a sha256 hex digest", code="bad_id")
    return value


def new_id() -> str:
    """A server-made id: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)
