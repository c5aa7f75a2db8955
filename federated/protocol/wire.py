"""Strict JSON in, canonical JSON out.

``parse_json`` refuses what two parsers could read differently: bytes that are not UTF-8,
duplicate keys (``{"num_examples": 10, …, "num_examples": 100000}``), NaN, Infinity,
numbers too large for a float, integers of more than ``MAX_JSON_INT_DIGITS`` digits, and
arrays and objects nested deeper than ``MAX_JSON_DEPTH`` (counted in the raw bytes before
parsing, so a hostile body never reaches the recursive parser). ``convert`` checks a parsed object against a message type:
unknown fields, missing fields, wrong types and out-of-range values are refused with the
field's JSON path. Where a signature covers JSON, ``canonical=True`` also requires the bytes
to be exactly ``canonical_json`` of what they parse to, so one message has one signed form.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any, TypeVar

import msgspec

from federated.protocol import limits
from federated.protocol.errors import ProtocolError
from federated.signing import canonical_json

T = TypeVar("T")


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text[:32]} is too large for a number")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > limits.MAX_JSON_INT_DIGITS:
        raise _Refused(
            f"an integer of {digits} digits ({text[:12]}…) is out of range for every field "
            f"(at most {limits.MAX_JSON_INT_DIGITS} digits)"
        )
    return int(text)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1, +1, -1, -1 as signed bytes


def _check_depth(raw: bytes) -> None:
    """Refuse arrays and objects nested deeper than ``MAX_JSON_DEPTH``, counted in the raw
    bytes (brackets inside strings do not count), in C-speed passes over them; free for a
    usual message: with no more openers than the limit there is nothing to count."""
    limit = limits.MAX_JSON_DEPTH
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    # Up to the first place a parser would refuse, the strings found here are the parser's.
    steps = array("b", _STRING.sub(b"", raw).translate(_STEPS, _NOT_BRACKETS))
    if max(accumulate(steps), default=0) > limit:
        raise _Refused(f"arrays and objects nest deeper than {limit} levels")


def parse_json(
    raw: bytes,
    *,
    what: str,
    canonical: bool = False,
    code: str = "bad_json",
) -> dict[str, Any]:
    """The JSON object in ``raw``, or ``ProtocolError(code)`` saying what is wrong with it."""
    try:
        _check_depth(raw)
        text = raw.decode("utf-8")
        obj = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except UnicodeDecodeError:
        raise ProtocolError(code, f"{what} is not UTF-8") from None
    except _Refused as exc:
        raise ProtocolError(code, f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(code, f"{what} is not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(code, f"{what} must be a JSON object")
    if canonical and canonical_json(obj) != raw:
        raise ProtocolError(
            code,
            f"{what} is not in canonical form (sorted keys, no spaces, UTF-8, "
            "as federated.signing.canonical_json writes it): sign the canonical bytes",
        )
    return obj


def convert(obj: Any, type_: type[T], *, what: str, code: str = "bad_request") -> T:
    """``obj`` as a ``type_`` message, or ``ProtocolError(code)`` naming the field."""
    try:
        return msgspec.convert(obj, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise ProtocolError(code, f"{what}: {_readable(str(exc))}") from None


def decode(
    raw: bytes,
    type_: type[T],
    *,
    what: str,
    canonical: bool = False,
    code: str = "bad_request",
) -> T:
    """``parse_json`` then ``convert``: bad JSON is ``bad_json``, a bad shape is ``code``."""
    return convert(parse_json(raw, what=what, canonical=canonical), type_, what=what, code=code)


def to_wire(message: Any) -> Any:
    """A message (or a structure of them) as plain JSON values, ``None`` fields kept."""
    return msgspec.to_builtins(message)


def encode_canonical(message: Any) -> bytes:
    """The one byte string a message is signed as (``federated.signing.canonical_json``)."""
    return canonical_json(to_wire(message))


def _readable(text: str) -> str:
    # msgspec says "Object contains unknown field `x` - at `$.metrics`"; keep it, it names
    # the field and where it is. Long values are cut so an answer stays small.
    return text if len(text) <= 300 else text[:300] + "…"


__all__ = ["convert", "decode", "encode_canonical", "parse_json", "to_wire"]
