"""The tagged formats and codec names of the update codec: what a payload says it is.

``UPDATE_FORMAT``/``MODEL_FORMAT`` tag a payload's metadata; a codec name (``CODECS``,
``topk:<fraction>``, optionally ``+zstd``) is parsed once into a ``_Codec``, whose
``_part_layout`` says which parts (dtype, shape) it writes for a tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

__all__ = [
    "CODECS",
    "INT8_BLOCK_SIZE",
    "MODEL_FORMAT",
    "PART_SEPARATOR",
    "UPDATE_FORMAT",
    "ZSTD_SUFFIX",
    "EncodedPayload",
    "canonical_codec",
    "sha256_hex",
    "topk_count",
]

CODECS: tuple[str, ...] = ("f32", "f16", "int8", "int8-block", "topk")
ZSTD_SUFFIX = "+zstd"
"""Appended to any codec name: the payload is that codec's safetensors in one zstd frame."""
"""Codec families. ``topk`` is spelt ``topk:<fraction>``, e.g. ``topk:0.1``."""

UPDATE_FORMAT = "barnraise-update/1"
MODEL_FORMAT = "barnraise-model/1"

PART_SEPARATOR = "::"
"""Joins a model tensor's name to a part's name; model names may not contain it."""

INT8_BLOCK_SIZE = 256
"""Entries per scale in ``int8-block``: one f32 per 256 int8 keeps the payload ~0.254x f32."""

_INT32_MAX = 2**31 - 1


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 lowercase hex digits: how payloads are addressed."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class EncodedPayload:
    """An encoded update: the bytes to upload, their sha256 and the canonical codec name."""

    payload: bytes
    digest: str
    codec: str


@dataclass(frozen=True)
class _Codec:
    family: str
    fraction: float = 1.0
    zstd: bool = False

    @property
    def name(self) -> str:
        base = f"topk:{self.fraction!r}" if self.family == "topk" else self.family
        return base + ZSTD_SUFFIX if self.zstd else base


def _parse_codec(codec: str) -> _Codec:
    if not isinstance(codec, str):
        raise ValueError(f"codec must be a string, got {type(codec).__name__}")
    if codec.endswith(ZSTD_SUFFIX):
        inner = _parse_codec(codec[: -len(ZSTD_SUFFIX)])
        return dataclasses.replace(inner, zstd=True)
    if codec in CODECS and codec != "topk":
        return _Codec(codec)
    family, sep, arg = codec.partition(":")
    if family == "topk" and sep:
        try:
            fraction = float(arg)
        except ValueError:
            fraction = math.nan
        if math.isfinite(fraction) and 0.0 < fraction <= 1.0:
            return _Codec("topk", fraction)
        raise ValueError(
            f"codec {codec!r}: the top-k fraction must be a number in (0, 1], e.g. 'topk:0.1'"
        )
    raise ValueError(
        f"unknown codec {codec!r}; use one of 'f32', 'f16', 'int8', 'int8-block', "
        "'topk:<fraction>' (e.g. 'topk:0.1'), each optionally followed by '+zstd'"
    )


def canonical_codec(codec: str) -> str:
    """The canonical spelling of ``codec`` (``'topk:0.10'`` -> ``'topk:0.1'``); ValueError if unknown."""
    return _parse_codec(codec).name


def topk_count(numel: int, fraction: float) -> int:
    """How many entries ``topk:<fraction>`` keeps of a tensor with ``numel`` entries."""
    if numel == 0:
        return 0
    return min(numel, max(1, round(fraction * numel)))


def _part_layout(codec: _Codec, shape: tuple[int, ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """part -> (safetensors dtype, shape) that ``codec`` writes for a tensor of ``shape``."""
    numel = math.prod(shape)
    if codec.family == "f32":
        return {"values": ("F32", shape)}
    if codec.family == "f16":
        return {"values": ("F16", shape)}
    if codec.family == "int8":
        return {"q": ("I8", shape), "scale": ("F32", ())}
    if codec.family == "int8-block":
        return {"q": ("I8", shape), "scale": ("F32", (-(-numel // INT8_BLOCK_SIZE),))}
    k = topk_count(numel, codec.fraction)
    index_dtype = "I32" if numel - 1 <= _INT32_MAX else "I64"
    return {"indices": (index_dtype, (k,)), "values": ("F32", (k,))}
