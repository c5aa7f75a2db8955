"""Safetensors bytes, read and written safely: the header is checked by the format's rules
before any tensor data is read, data is copied once, and equal inputs give equal bytes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch

from federated.codec.formats import UPDATE_FORMAT
from federated.errors import UpdateRejected
from federated.validation import format_shape

__all__ = ["MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A safetensors header larger than this is refused unread (ours are ~100 bytes per tensor)."""

# safetensors dtype -> (little-endian numpy dtype, torch dtype). Only what our codecs
# write can be *accepted*; the rest is listed so a foreign file is named, not garbled.
_DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "F64": ("<f8", torch.float64),
    "F32": ("<f4", torch.float32),
    "F16": ("<f2", torch.float16),
    "BF16": ("<u2", torch.bfloat16),
    "I64": ("<i8", torch.int64),
    "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16),
    "I8": ("|i1", torch.int8),
    "U8": ("|u1", torch.uint8),
    "BOOL": ("|b1", torch.bool),
}
_ITEMSIZE = {name: np.dtype(np_dtype).itemsize for name, (np_dtype, _) in _DTYPES.items()}


# --------------------------------------------------------------------------- errors


def _bad_payload(message: str, tensor: str | None = None) -> UpdateRejected:
    return UpdateRejected("bad_payload", message, tensor=tensor)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the payload
    nbytes: int


@dataclass(frozen=True)
class _Parsed:
    metadata: dict[str, str]
    entries: dict[str, _Entry]


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in safetensors header")
    return result


def _parse_header(payload: bytes) -> _Parsed:
    """Parse and check a safetensors header by the format's rules, reading no tensor data.

    The rules are safetensors' own: a u64 little-endian header length, a JSON object of
    ``{name: {"dtype", "shape", "data_offsets"}}`` plus optional ``__metadata__`` (str ->
    str), each tensor's byte length equal to its shape times its item size, and tensors
    tiling the data region with neither gaps nor overlaps.
    """
    if len(payload) < 8:
        raise _bad_payload(
            f"payload is {len(payload)} bytes, too short for a safetensors file "
            "(it starts with an 8-byte header length)"
        )
    header_len = int.from_bytes(payload[:8], "little")
    if header_len > MAX_HEADER_BYTES or header_len > len(payload) - 8:
        raise _bad_payload(
            f"safetensors header length {header_len} is impossible for a payload of "
            f"{len(payload)} bytes; the payload is truncated or not safetensors"
        )
    try:
        header = json.loads(
            payload[8 : 8 + header_len].decode("utf-8"), object_pairs_hook=_no_duplicate_keys
        )
    except (ValueError, RecursionError) as exc:
        raise _bad_payload(f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad_payload("safetensors header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad_payload("safetensors __metadata__ must map strings to strings")

    data_start = 8 + header_len
    data_len = len(payload) - data_start
    entries: dict[str, _Entry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad_payload(
                f"tensor {name!r}: header entry needs exactly dtype, shape and data_offsets",
                name,
            )
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _bad_payload(f"tensor {name!r}: unsupported dtype {dtype!r}", name)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad_payload(f"tensor {name!r}: shape must be a list of integers >= 0", name)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _bad_payload(
                f"tensor {name!r}: data_offsets {offsets!r} fall outside the "
                f"{data_len}-byte data region",
                name,
            )
        nbytes = offsets[1] - offsets[0]
        if math.prod(shape) * _ITEMSIZE[dtype] != nbytes:
            raise _bad_payload(
                f"tensor {name!r}: {nbytes} bytes cannot hold a {dtype} tensor of shape "
                f"{format_shape(shape)}",
                name,
            )
        start = data_start + offsets[0]
        if nbytes and start % _ITEMSIZE[dtype]:
            raise _bad_payload(f"tensor {name!r}: data is not aligned to its dtype", name)
        entries[name] = _Entry(dtype, tuple(shape), start, nbytes)
        spans.append((offsets[0], offsets[1], name))

    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _bad_payload(
                f"tensor {name!r}: data regions overlap or leave a gap at byte {position}", name
            )
        position = end
    if position != data_len:
        raise _bad_payload(
            f"safetensors data region is {data_len} bytes but its tensors cover {position}"
        )
    return _Parsed(metadata, entries)


def _writable_copy(payload: bytes) -> np.ndarray:
    """One copy of ``payload`` that tensors may view and callers may modify.

    numpy's copy runs at memory speed; building a bytearray is several times slower.
    """
    return np.frombuffer(payload, dtype=np.uint8).copy()


def _read(buffer: np.ndarray, entry: _Entry) -> torch.Tensor:
    """A tensor viewing ``buffer`` (which the caller copied from the payload once)."""
    _, torch_dtype = _DTYPES[entry.dtype]
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=torch_dtype)
    count = entry.nbytes // _ITEMSIZE[entry.dtype]
    flat = torch.frombuffer(buffer, dtype=torch_dtype, count=count, offset=entry.start)
    return flat.view(entry.shape)


# --------------------------------------------------------------------------- writing


def _save(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save`` with the metadata keys in sorted order.

    safetensors writes ``__metadata__`` from a Rust HashMap whose order changes from
    process to process; sorting it makes equal inputs give equal bytes (and digests).
    Tensor order is already deterministic (by dtype, then name).
    """
    raw = safetensors.torch.save(dict(tensors), metadata=metadata)
    if len(metadata) < 2:
        return raw
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    ordered = {"__metadata__": header.pop("__metadata__"), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    if text == raw[8 : 8 + header_len]:
        return raw
    return b"".join((len(text).to_bytes(8, "little"), text, memoryview(raw)[8 + header_len :]))


def _as_f32(name: object, tensor: object, what: str) -> torch.Tensor:
    if not isinstance(name, str):
        raise ValueError(f"{what} tensor names must be strings, got {name!r}")
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{what} tensor {name!r} is a {type(tensor).__name__}, not a tensor")
    if tensor.is_complex():
        raise ValueError(f"{what} tensor {name!r} is complex; only real tensors can be encoded")
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_format(parsed: _Parsed, expected: str) -> None:
    found = parsed.metadata.get("format")
    if found != expected:
        raise _bad_payload(
            f"payload format is {found!r}, expected {expected!r}; it is not a Barnraise "
            f"{'update' if expected == UPDATE_FORMAT else 'model'} or is from a newer version"
        )
