"""Checks of values as contributors send them: base64 fields."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from backend.errors import BadRequest


def b64decode_field(value: Any, what: str, *, length: int | None = None) -> bytes:
    """The bytes of a base64 string field; 400 naming ``what`` if it is not one."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise BadRequest(f"{what} must be {length} bytes, got {len(raw)}")
    return raw
