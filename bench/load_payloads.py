"""Distinct, valid update payloads for the load bench, at a few microseconds each.

The server refuses a payload another task already sent (``duplicate_payload``), so every
upload must carry its own bytes. Encoding a fresh delta with torch per upload would cost
the load generator more than the server's work; instead one delta is encoded per codec
before the timed phases (``Payloads.prepare``), and each upload writes a unique 8-byte
tag into that payload's tensor data and hashes the result (``Payloads.get``).

Where the tag goes keeps the payload valid for ``federated.codec.decode_update``: into
int8 values (any byte is a valid int8; the change is a few quantisation steps), else into
the low mantissa bits of float32 or float16 values (the exponent and sign are untouched,
so values stay finite and change by under 1 %). Top-k indices are never touched (they
must stay increasing). A ``+zstd`` codec's frame is re-compressed after tagging: dearer,
but still far below an encode. The tags start at a random 64-bit number, so two runs
against one server (``--url``) do not collide either.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch

from federated.codec import encode_update
from federated.compression import compress, decompress, is_compressed
from federated.tensors import StateDict

TAG_BYTES = 8

_LOW_BYTES = {"F32": (4, 2), "F16": (2, 1)}
"""Float dtypes: (item size, how many of an item's low, little-endian bytes are mantissa
bits that may be overwritten)."""


@dataclass(frozen=True)
class _Template:
    plain: bytes  # the safetensors bytes (uncompressed)
    slots: tuple[int, ...]  # byte offsets in ``plain`` that the tag's bytes go to
    zstd: bool


def tag_slots(plain: bytes) -> tuple[int, ...]:
    """TAG_BYTES byte offsets into the tensor data of a safetensors payload that may hold
    any value; () where no tensor has room (then uploads cannot be made distinct)."""
    size = int.from_bytes(plain[:8], "little")
    header = json.loads(plain[8 : 8 + size])
    data = 8 + size
    entries = sorted((name, entry) for name, entry in header.items() if name != "__metadata__")
    for wanted in ("I8", "F32", "F16"):
        for name, entry in entries:
            if entry["dtype"] != wanted or name.endswith("::indices"):
                continue
            start, end = (int(x) for x in entry["data_offsets"])
            if wanted == "I8":
                if end - start >= TAG_BYTES:
                    return tuple(data + start + i for i in range(TAG_BYTES))
                continue
            item, low = _LOW_BYTES[wanted]
            items = -(-TAG_BYTES // low)
            if end - start < items * item:
                continue
            return tuple(data + start + k * item + b for k in range(items) for b in range(low))[
                :TAG_BYTES
            ]
    return ()


class Payloads:
    """One encoded delta per codec, made distinct per upload by a tag.

    ``same=True`` sends the untagged payload every time instead (the server then stores
    one blob and refuses the rest as duplicates: a measure of the refusal path)."""

    def __init__(self, model: StateDict, *, same: bool = False, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.delta = {k: torch.randn(v.shape, generator=generator) * 1e-3 for k, v in model.items()}
        self.same = same
        self._templates: dict[str, _Template] = {}
        self._untagged: dict[str, tuple[bytes, str]] = {}
        self._next_tag = random.getrandbits(64)

    def prepare(self, codec: str) -> bool:
        """Encode the delta with ``codec`` (outside the timed loop); whether uploads of it
        can be distinct."""
        if codec not in self._templates:
            encoded = encode_update(self.delta, codec)
            payload = encoded.payload
            zstd = is_compressed(payload)
            plain = decompress(payload, max_size=64 * len(payload) + (1 << 20)) if zstd else payload
            self._templates[codec] = _Template(plain, tag_slots(plain), zstd)
            self._untagged[codec] = (payload, encoded.digest)
        return bool(self._templates[codec].slots)

    def get(self, codec: str) -> tuple[bytes, str]:
        """A payload for ``codec`` no other call returned (unless ``same``, or the codec
        has no room for a tag), and its sha256 hex digest."""
        self.prepare(codec)  # a codec not prepared: encoded now, once
        template = self._templates[codec]
        if self.same or not template.slots:
            return self._untagged[codec]
        tag = self._next_tag.to_bytes(TAG_BYTES, "little")
        self._next_tag = (self._next_tag + 1) % (1 << 64)
        varied = bytearray(template.plain)
        for offset, byte in zip(template.slots, tag, strict=True):
            varied[offset] = byte
        payload = compress(bytes(varied)) if template.zstd else bytes(varied)
        return payload, hashlib.sha256(payload).hexdigest()
