"""Full models as float32 safetensors (``barnraise-model/1``), never pickle."""

from __future__ import annotations

from federated.codec.container import (
    _as_f32,
    _check_format,
    _parse_header,
    _read,
    _save,
    _writable_copy,
)
from federated.codec.formats import MODEL_FORMAT
from federated.errors import UpdateRejected
from federated.tensors import StateDict, TensorSpec
from federated.validation import check_names, check_shape, validate_values

__all__ = ["decode_model", "encode_model"]


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
