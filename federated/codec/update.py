"""Model deltas encoded (``encode_update``) and decoded with validation (``decode_update``).

The payload layout per codec is in the package docstring (``federated.codec``).
"""

from __future__ import annotations

import json
import math

import torch

from federated.codec.container import (
    MAX_HEADER_BYTES,
    _as_f32,
    _bad_payload,
    _check_format,
    _Entry,
    _parse_header,
    _Parsed,
    _read,
    _save,
    _writable_copy,
)
from federated.codec.feedback import ErrorFeedback
from federated.codec.formats import (
    _INT32_MAX,
    INT8_BLOCK_SIZE,
    PART_SEPARATOR,
    UPDATE_FORMAT,
    EncodedPayload,
    _Codec,
    _parse_codec,
    _part_layout,
    canonical_codec,
    sha256_hex,
    topk_count,
)
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

__all__ = ["decode_update", "encode_update"]


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
