"""The update codec: model deltas and full models as safetensors bytes, never pickle.

An encoded update is a safetensors file whose metadata says what it is::

    {"format": "barnraise-update/1", "codec": "int8",
     "tensors": "{\"fc1.weight\": {\"shape\": [64, 32]}, ...}"}

and whose tensors are the *parts* of each model tensor, named ``<name>::<part>``:

=============  ===========================================================  =================
codec          parts of tensor ``name`` (dtype, shape)                       error per entry
=============  ===========================================================  =================
f32            ``values`` F32 (shape)                                        exact
f16            ``values`` F16 (shape)                                        f16 rounding
int8           ``q`` I8 (shape), ``scale`` F32 ()                            <= scale / 2
int8-block     ``q`` I8 (shape), ``scale`` F32 (ceil(numel / 256),)          <= its block's scale / 2
topk:<frac>    ``indices`` I32 (k,) (I64 past 2**31 entries), ``values`` F32  kept exact, rest 0
=============  ===========================================================  =================

``scale = absmax / 127``; ``k = clamp(round(frac * numel), 1, numel)``; top-k indices are
flat, strictly increasing. Decoding checks every declared name, dtype and shape against
the model's spec *before* it reads tensor data, so a payload cannot make the decoder
allocate more than the model's size, and reads the data with one copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch

from federated.compression import compress, decompress, is_compressed
from federated.errors import UpdateRejected
from federated.tensors import StateDict, TensorSpec
from federated.validation import (
    check_names,
    check_shape,
    format_shape,
    tensor_sq_norm,
    validate_values,
)

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

MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A safetensors header larger than this is refused unread (ours are ~100 bytes per tensor)."""

_INT32_MAX = 2**31 - 1

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


def _quantize_int8(flat: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 of ``flat`` viewed as ``rows`` equal rows: (q, per-row scale)."""
    view = flat.view(rows, -1)
    scale = view.abs().amax(dim=1) / 127.0
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.div(view, divisor[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q.view(-1), scale


def _encode_tensor(
    codec: _Codec, name: str, tensor: torch.Tensor, want_reconstruction: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The parts of one tensor, and (if asked) what the decoder will rebuild from them."""
    shape = tuple(tensor.shape)
    flat = tensor.reshape(-1)
    numel = flat.numel()
    if codec.family == "f32":
        return {"values": tensor}, (tensor if want_reconstruction else None)
    if codec.family == "f16":
        half = tensor.to(torch.float16)
        if not bool(torch.isfinite(half).all()):
            raise ValueError(
                f"tensor {name!r} has values beyond float16's range (|x| > 65504); "
                "use the 'f32' or 'int8' codec"
            )
        return {"values": half}, (half.float() if want_reconstruction else None)
    if codec.family == "int8":
        if numel == 0:
            q, scale = torch.zeros(0, dtype=torch.int8), torch.zeros(1)
        else:
            q, scale = _quantize_int8(flat, 1)
        recon = (q.float() * scale).view(shape) if want_reconstruction else None
        return {"q": q.view(shape), "scale": scale.reshape(())}, recon
    if codec.family == "int8-block":
        blocks = -(-numel // INT8_BLOCK_SIZE)
        padded = flat
        if blocks * INT8_BLOCK_SIZE != numel:
            padded = torch.nn.functional.pad(flat, (0, blocks * INT8_BLOCK_SIZE - numel))
        if blocks == 0:
            q, scale = torch.zeros(0, dtype=torch.int8), torch.zeros(0)
        else:
            q, scale = _quantize_int8(padded, blocks)
        recon = None
        if want_reconstruction:
            recon = (q.view(blocks, -1).float() * scale[:, None]).view(-1)[:numel].view(shape)
        return {"q": q[:numel].view(shape), "scale": scale}, recon
    k = topk_count(numel, codec.fraction)
    if k == numel:
        indices = torch.arange(numel)
    else:
        indices = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
    values = flat[indices]
    recon = None
    if want_reconstruction:
        recon = torch.zeros(numel).index_copy_(0, indices, values).view(shape)
    index_dtype = torch.int32 if numel - 1 <= _INT32_MAX else torch.int64
    return {"indices": indices.to(index_dtype), "values": values}, recon


# --------------------------------------------------------------------------- public


class ErrorFeedback:
    """What lossy encoding dropped, per tensor name, to be sent with the next update.

    A client keeps one per project for as long as it contributes (persist it with
    ``to_bytes``/``from_bytes``): ``encode_update(..., feedback=fb)`` encodes
    ``delta + residual`` and keeps ``(delta + residual) - decoded`` as the new residual,
    so over many rounds nothing is lost, only delayed. Works with every codec
    (the residual of ``f32`` is zero, so it is not kept).
    """

    def __init__(self) -> None:
        self._residual: dict[str, torch.Tensor] = {}

    @property
    def residuals(self) -> dict[str, torch.Tensor]:
        """A copy of the current residuals (tensors are shared; do not modify them)."""
        return dict(self._residual)

    def norm(self) -> float:
        """Global L2 norm of the residual: how much is still owed to the server."""
        return validate_values(self._residual, what="residual")

    def reset(self) -> None:
        """Forget every residual (for example when the project's model changes shape)."""
        self._residual.clear()

    def _corrected(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        residual = self._residual.get(name)
        if residual is None:
            return delta
        if residual.shape != delta.shape:
            raise ValueError(
                f"error feedback holds tensor {name!r} with shape {format_shape(residual.shape)} "
                f"but the update's is {format_shape(delta.shape)}; call reset() after the "
                "model changes"
            )
        return delta + residual

    def _commit(self, residuals: dict[str, torch.Tensor | None]) -> None:
        for name, residual in residuals.items():
            if residual is None:
                self._residual.pop(name, None)
            else:
                self._residual[name] = residual

    def to_bytes(self) -> bytes:
        """The residuals as deterministic safetensors bytes (see ``encode_model``)."""
        return encode_model(self._residual)

    @classmethod
    def from_bytes(cls, data: bytes) -> ErrorFeedback:
        """Restore what ``to_bytes`` wrote; raises ``UpdateRejected`` on a corrupt file."""
        feedback = cls()
        feedback._residual = dict(decode_model(data))
        return feedback


def encode_update(
    delta: StateDict, codec: str, *, feedback: ErrorFeedback | None = None
) -> EncodedPayload:
    """Encode ``delta`` (client minus base) with ``codec`` into a signed-ready payload.

    Raises ``ValueError`` for an unknown codec, a name containing ``'::'``, a non-tensor,
    a non-finite value, or (f16) a value beyond float16's range. With ``feedback``, the
    residual is added first and updated only if encoding succeeds.
    """
    parsed = _parse_codec(codec)
    parts: dict[str, torch.Tensor] = {}
    shapes: dict[str, dict[str, list[int]]] = {}
    residuals: dict[str, torch.Tensor | None] = {}
    for name in sorted(delta):
        tensor = _as_f32(name, delta[name], "update")
        if PART_SEPARATOR in name:
            raise ValueError(
                f"tensor name {name!r} contains {PART_SEPARATOR!r}, which the update format "
                "reserves for part names; rename the parameter"
            )
        if feedback is not None:
            tensor = feedback._corrected(name, tensor)
        if not math.isfinite(tensor_sq_norm(tensor)):
            raise ValueError(
                f"tensor {name!r} has NaN or infinite values; the server would reject this "
                "update (training probably diverged: lower the learning rate)"
            )
        tensor_parts, recon = _encode_tensor(parsed, name, tensor, feedback is not None)
        for part, value in tensor_parts.items():
            parts[f"{name}{PART_SEPARATOR}{part}"] = value.contiguous()
        shapes[name] = {"shape": list(tensor.shape)}
        if feedback is not None and recon is not None:
            residuals[name] = None if recon is tensor else tensor - recon
    metadata = {
        "format": UPDATE_FORMAT,
        "codec": parsed.name,
        "tensors": json.dumps(shapes, sort_keys=True, separators=(",", ":")),
    }
    payload = _save(parts, metadata)
    if parsed.zstd:
        payload = compress(payload)
    if feedback is not None:
        feedback._commit(residuals)
    return EncodedPayload(payload=payload, digest=sha256_hex(payload), codec=parsed.name)


def _inflated_bound(spec: TensorSpec) -> int:
    """The most bytes a decompressed update for ``spec`` can honestly need (top-k with int64
    indices is the largest layout: 12 bytes an entry), plus room for the header."""
    entries = sum(math.prod(shape) for shape, _dtype in spec.values())
    return 12 * entries + MAX_HEADER_BYTES


def _check_format(parsed: _Parsed, expected: str) -> None:
    found = parsed.metadata.get("format")
    if found != expected:
        raise _bad_payload(
            f"payload format is {found!r}, expected {expected!r}; it is not a Barnraise "
            f"{'update' if expected == UPDATE_FORMAT else 'model'} or is from a newer version"
        )


def _declared_shapes(parsed: _Parsed) -> dict[str, tuple[int, ...]]:
    try:
        declared = json.loads(parsed.metadata.get("tensors", ""))
    except (ValueError, RecursionError):
        raise _bad_payload("payload metadata 'tensors' is not valid JSON") from None
    if not isinstance(declared, dict):
        raise _bad_payload("payload metadata 'tensors' must be a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in declared.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad_payload(f"tensor {name!r}: metadata gives no valid shape", name)
        shapes[name] = tuple(shape)
    return shapes


def decode_update(
    payload: bytes,
    spec: TensorSpec,
    *,
    max_norm: float | None = None,
    expected_codec: str | None = None,
) -> StateDict:
    """Decode and validate an update for a model of ``spec``; float32 tensors by name.

    Raises ``UpdateRejected``: ``bad_payload`` (not a well-formed update, top-k indices
    out of range or not increasing), ``unknown_codec`` (unknown, or not
    ``expected_codec``), ``unknown_tensor``/``missing_tensor``, ``shape_mismatch``,
    ``dtype_mismatch`` (a part stored in another dtype than the codec writes),
    ``non_finite``, ``norm_too_large``. Nothing larger than the model is allocated
    before the header has been checked against ``spec``.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload) if not isinstance(payload, bytes) else payload
    framed = is_compressed(payload)
    if framed:
        payload = decompress(payload, max_size=_inflated_bound(spec))
    parsed = _parse_header(payload)
    _check_format(parsed, UPDATE_FORMAT)
    codec_name = parsed.metadata.get("codec", "")
    try:
        codec = _parse_codec(codec_name)
    except ValueError as exc:
        raise UpdateRejected("unknown_codec", f"payload codec: {exc}") from None
    if codec.zstd != framed:
        raise _bad_payload(
            f"payload says codec {codec.name!r} but is {'' if framed else 'not '}zstd-compressed"
        )
    if expected_codec is not None and codec.name != canonical_codec(expected_codec):
        raise UpdateRejected(
            "unknown_codec",
            f"payload is encoded with {codec.name!r} but the task asks for "
            f"{canonical_codec(expected_codec)!r}; re-encode it with the task's codec",
        )

    stored: dict[str, dict[str, _Entry]] = {}
    for key, entry in parsed.entries.items():
        name, sep, part = key.rpartition(PART_SEPARATOR)
        if not sep:
            raise _bad_payload(
                f"payload tensor {key!r} is not named '<tensor>{PART_SEPARATOR}<part>'", key
            )
        stored.setdefault(name, {})[part] = entry
    declared = _declared_shapes(parsed)
    unlisted = sorted(set(declared).symmetric_difference(stored))
    if unlisted:
        raise _bad_payload(
            f"tensor {unlisted[0]!r}: listed in the metadata or stored in the payload, not both",
            unlisted[0],
        )
    check_names(stored, spec, what="update")

    for name in sorted(stored):
        check_shape(name, declared[name], spec)
        layout = _part_layout(codec, tuple(int(d) for d in spec[name][0]))
        extra = sorted(set(stored[name]).difference(layout))
        if extra:
            raise _bad_payload(
                f"tensor {name!r}: the {codec.name} codec has no part {extra[0]!r}", name
            )
        for part, (dtype, shape) in layout.items():
            found = stored[name].get(part)
            if found is None:
                raise _bad_payload(
                    f"tensor {name!r}: part {part!r} that the {codec.name} codec needs is missing",
                    name,
                )
            if found.dtype != dtype:
                raise UpdateRejected(
                    "dtype_mismatch",
                    f"tensor {name!r}: part {part!r} is stored as {found.dtype} but the "
                    f"{codec.name} codec writes {dtype}",
                    tensor=name,
                )
            if found.shape != shape:
                raise UpdateRejected(
                    "shape_mismatch",
                    f"tensor {name!r}: part {part!r} has shape {format_shape(found.shape)} but "
                    f"the {codec.name} codec writes {format_shape(shape)} for the model's "
                    f"{format_shape(spec[name][0])}",
                    tensor=name,
                )

    buffer = _writable_copy(payload)  # the one copy: every part below is a view of it
    state: StateDict = {}
    for name in sorted(stored):
        parts = {part: _read(buffer, entry) for part, entry in stored[name].items()}
        state[name] = _decode_tensor(codec, name, parts, tuple(declared[name]))
    validate_values(state, max_norm=max_norm, what="update")
    return state


def _decode_tensor(
    codec: _Codec, name: str, parts: dict[str, torch.Tensor], shape: tuple[int, ...]
) -> torch.Tensor:
    if codec.family == "f32":
        return parts["values"]
    if codec.family == "f16":
        return parts["values"].float()
    if codec.family == "int8":
        return parts["q"].float().mul_(parts["scale"])
    numel = math.prod(shape)
    if codec.family == "int8-block":
        blocks = parts["scale"].numel()
        full = numel // INT8_BLOCK_SIZE
        out = torch.empty(numel)
        head = full * INT8_BLOCK_SIZE
        q = parts["q"].reshape(-1)
        if full:
            out_head = out[:head].view(full, INT8_BLOCK_SIZE)
            out_head.copy_(q[:head].view(full, INT8_BLOCK_SIZE))
            out_head.mul_(parts["scale"][:full, None])
        if head < numel:
            out[head:] = q[head:].float() * parts["scale"][blocks - 1]
        return out.view(shape)
    indices, values = parts["indices"], parts["values"]
    out = torch.zeros(numel)
    if indices.numel():
        wide = indices.long()
        if int(wide[0]) < 0 or int(wide[-1]) >= numel or not bool((wide[1:] > wide[:-1]).all()):
            raise _bad_payload(
                f"tensor {name!r}: top-k indices must be strictly increasing and within "
                f"[0, {numel}); the payload is corrupt",
                name,
            )
        out.index_copy_(0, wide, values)
    return out.view(shape)


def encode_model(state: StateDict) -> bytes:
    """A full model state as float32 safetensors; equal states give identical bytes."""
    tensors = {name: _as_f32(name, state[name], "model") for name in sorted(state)}
    return _save(tensors, {"format": MODEL_FORMAT})


def decode_model(payload: bytes, spec: TensorSpec | None = None) -> StateDict:
    """Decode a model written by ``encode_model``; with ``spec``, check names and shapes.

    Raises ``UpdateRejected`` (``bad_payload``, ``unknown_tensor``, ``missing_tensor``,
    ``shape_mismatch``, ``dtype_mismatch`` for anything but F32, ``non_finite``).
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload) if not isinstance(payload, bytes) else payload
    parsed = _parse_header(payload)
    _check_format(parsed, MODEL_FORMAT)
    if spec is not None:
        check_names(parsed.entries, spec, what="model")
    for name in sorted(parsed.entries):
        entry = parsed.entries[name]
        if spec is not None:
            check_shape(name, entry.shape, spec)
        if entry.dtype != "F32":
            raise UpdateRejected(
                "dtype_mismatch",
                f"tensor {name!r}: stored as {entry.dtype} but models are stored as F32",
                tensor=name,
            )
    buffer = _writable_copy(payload)
    state = {name: _read(buffer, parsed.entries[name]) for name in sorted(parsed.entries)}
    validate_values(state, what="model")
    return state
