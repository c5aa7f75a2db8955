"""An update as integers mod 2^w: clip, quantise with a public scale, pack w bits an entry.

The scale must be the same for every client, and public, or the masked sum could not be
decoded (and a per-client scale, like the int8 codec's absmax, would leak a statistic of
each input). So an update is first clipped to the public L2 bound ``clip_norm``, each
entry clamped to the public ``entry_bound`` (by default ``clip_norm``, which no entry of a
clipped update exceeds, so the clamp never bites), then divided by
``scale = entry_bound / 127`` and rounded stochastically to an integer in [-127, 127]: the
int8 codec's range, so its payloads compose with this one.

Summing m such vectors needs 2 * 127 * m + 1 distinct values, so a ring of ``w`` bits
holds ``ring_capacity(w) = (2^w - 1) // 254`` contributors. ``ring_bits_for(n)`` is the
smallest such ring for a round of n clients; 32 bits (uint32 arithmetic) is the largest
and holds ``MAX_CONTRIBUTORS = 2^24``, checked at round set-up.

Error bound. Stochastic rounding is unbiased and moves an entry by less than ``scale``;
so the decoded sum over m survivors is within ``m * scale`` of the sum of their clipped
(and clamped) updates in every entry, and within about ``scale * sqrt(m) / 2`` typically
(each rounding error has variance at most scale^2 / 4). ``entry_bound = clip_norm`` is safe
but coarse for a large model, whose entries are ~ clip_norm / sqrt(d): a tighter public
bound (or a random rotation first) is what makes the error small there.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from federated.tensors import StateDict

QUANT_LEVEL = 127
"""Quantised entries lie in [-127, 127], the int8 codec's symmetric range."""
MAX_RING_BITS = 32
MAX_CONTRIBUTORS = 2**24
"""The most clients one round may have: a 32-bit ring sums 2^24 int8-range inputs."""
_PACK_CHUNK = 1 << 18
"""Entries packed per step (a multiple of 8, so each step ends on a byte)."""

Shapes = Mapping[str, tuple[int, ...]]
"""Tensor name -> shape; entries are laid out in sorted name order, each row-major."""


def ring_capacity(ring_bits: int) -> int:
    """How many int8-range inputs a ring of ``ring_bits`` bits can sum without wrapping."""
    return (2**ring_bits - 1) // (2 * QUANT_LEVEL)


def ring_bits_for(num_clients: int) -> int:
    """The smallest ring (in bits) whose sums of ``num_clients`` inputs never wrap."""
    if not 1 <= num_clients <= MAX_CONTRIBUTORS:
        raise ValueError(
            f"a round holds 1 to {MAX_CONTRIBUTORS} clients (2^24, what a 32-bit ring sums), "
            f"got {num_clients}: split the clients over several rounds"
        )
    return max(8, math.ceil(math.log2(2 * QUANT_LEVEL * num_clients + 1)))


def layout_of(update: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(update[name].shape) for name in sorted(update)}


def num_entries(shapes: Shapes) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def layout_digest(shapes: Shapes) -> bytes:
    """sha256 of the names and shapes: a round's clients and server agree on the layout."""
    rows = [[name, list(shapes[name])] for name in sorted(shapes)]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).digest()


@dataclass(frozen=True)
class FixedPointCodec:
    """Public clipping and scale of a round: float updates <-> integers in [-127, 127]."""

    clip_norm: float
    entry_bound: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be a positive number, got {self.clip_norm}")
        if not (math.isfinite(self.entry_bound) and 0 < self.entry_bound <= self.clip_norm):
            raise ValueError(
                f"entry_bound must be in (0, clip_norm={self.clip_norm}], got {self.entry_bound}"
            )

    @property
    def scale(self) -> float:
        """The value of one quantisation step."""
        return self.entry_bound / QUANT_LEVEL

    def error_bound(self, contributors: int) -> float:
        """Most a decoded sum of ``contributors`` inputs is off, per entry (see module doc)."""
        return contributors * self.scale

    def quantize(
        self, update: Mapping[str, torch.Tensor], shapes: Shapes, rng: np.random.Generator | None
    ) -> np.ndarray:
        """The update as int64 in [-127, 127]; stochastic rounding with ``rng``, else nearest.

        Raises ``ValueError`` if the names or shapes differ from ``shapes`` or a value is
        not finite.
        """
        if layout_of(update) != {name: tuple(shapes[name]) for name in sorted(shapes)}:
            raise ValueError("the update's tensor names or shapes differ from the round's layout")
        flat = np.concatenate(
            [update[name].detach().reshape(-1).double().numpy() for name in sorted(shapes)]
            or [np.zeros(0)]
        )
        if not np.all(np.isfinite(flat)):
            raise ValueError("the update has NaN or infinite values; it cannot be aggregated")
        norm = float(np.linalg.norm(flat))
        if norm > self.clip_norm:
            flat *= self.clip_norm / norm
        np.clip(flat, -self.entry_bound, self.entry_bound, out=flat)
        scaled = flat / self.scale
        noise = rng.random(scaled.shape[0]) if rng is not None else 0.5
        quantised = np.floor(scaled + noise)
        return np.clip(quantised, -QUANT_LEVEL, QUANT_LEVEL).astype(np.int64)

    def dequantize(self, values: np.ndarray, shapes: Shapes) -> StateDict:
        """Signed integer sums back to float32 tensors of ``shapes``."""
        floats = values.astype(np.float64) * self.scale
        out: StateDict = {}
        start = 0
        for name in sorted(shapes):
            size = math.prod(shapes[name])
            chunk = floats[start : start + size].astype(np.float32).reshape(shapes[name])
            out[name] = torch.from_numpy(chunk.copy())
            start += size
        if start != floats.shape[0]:
            raise ValueError(f"{floats.shape[0]} values for a layout of {start} entries")
        return out


def _ring_mask(ring_bits: int) -> np.uint32:
    if not 1 <= ring_bits <= MAX_RING_BITS:
        raise ValueError(f"ring_bits must be in [1, {MAX_RING_BITS}], got {ring_bits}")
    return np.uint32((1 << ring_bits) - 1)


def to_ring(values: np.ndarray, ring_bits: int) -> np.ndarray:
    """Signed integers as uint32 residues mod 2^ring_bits."""
    return (values.astype(np.int64) & int(_ring_mask(ring_bits))).astype(np.uint32)


def from_ring(values: np.ndarray, ring_bits: int) -> np.ndarray:
    """Residues mod 2^ring_bits as the signed integers in [-2^(w-1), 2^(w-1)) they stand for."""
    reduced = (values & _ring_mask(ring_bits)).astype(np.int64)
    return np.where(reduced >= 1 << (ring_bits - 1), reduced - (1 << ring_bits), reduced)


def packed_size(count: int, ring_bits: int) -> int:
    """Bytes of ``count`` entries of ``ring_bits`` bits, packed."""
    return -(-count * ring_bits // 8)


def pack(values: np.ndarray, ring_bits: int) -> bytes:
    """Residues (uint32, already below 2^ring_bits) as ``ring_bits`` bits each, LSB first.

    Eight entries fill exactly ``ring_bits`` bytes, so each output byte of a group is a
    fixed combination of at most a few of its entries: one vector operation per byte.
    """
    _ring_mask(ring_bits)
    if ring_bits in (8, 16, 32):
        return values.astype(f"<u{ring_bits // 8}").tobytes()
    out = bytearray()
    for start in range(0, values.shape[0], _PACK_CHUNK):
        chunk = values[start : start + _PACK_CHUNK].astype(np.uint64)
        groups = np.zeros((-(-chunk.shape[0] // 8), 8), dtype=np.uint64)
        groups.reshape(-1)[: chunk.shape[0]] = chunk
        columns = np.ascontiguousarray(groups.T)  # columns[e]: entry e of every group
        packed = np.empty((ring_bits, groups.shape[0]), dtype=np.uint8)
        for byte in range(ring_bits):
            low = 8 * byte
            value = np.zeros(groups.shape[0], dtype=np.uint64)
            for entry in range(low // ring_bits, min(8, (low + 7) // ring_bits + 1)):
                offset = entry * ring_bits - low  # where the entry starts, from this byte
                if offset >= 0:
                    value |= columns[entry] << np.uint64(offset)
                else:
                    value |= columns[entry] >> np.uint64(-offset)
            packed[byte] = value.astype(np.uint8)  # keeps the low 8 bits
        out += packed.T.tobytes()[: packed_size(chunk.shape[0], ring_bits)]
    return bytes(out)


def unpack(data: bytes, ring_bits: int, count: int) -> np.ndarray:
    """The inverse of ``pack``; ``ValueError`` if the length or the padding bits are off."""
    mask = _ring_mask(ring_bits)
    if len(data) != packed_size(count, ring_bits):
        raise ValueError(
            f"{len(data)} bytes for {count} entries of {ring_bits} bits "
            f"(expected {packed_size(count, ring_bits)})"
        )
    if ring_bits in (8, 16, 32):
        return np.frombuffer(data, dtype=f"<u{ring_bits // 8}").astype(np.uint32)
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(count, dtype=np.uint32)
    step_bytes = _PACK_CHUNK * ring_bits // 8
    for index, start in enumerate(range(0, count, _PACK_CHUNK)):
        n = min(_PACK_CHUNK, count - start)
        group_count = -(-n // 8)
        chunk = np.zeros(group_count * ring_bits, dtype=np.uint8)
        piece = raw[index * step_bytes : index * step_bytes + step_bytes]
        chunk[: piece.shape[0]] = piece
        rows = np.ascontiguousarray(chunk.reshape(group_count, ring_bits).T).astype(np.uint64)
        entries = np.empty((8, group_count), dtype=np.uint64)
        for entry in range(8):
            first = entry * ring_bits
            value = np.zeros(group_count, dtype=np.uint64)
            for byte in range(first // 8, (first + ring_bits - 1) // 8 + 1):
                offset = 8 * byte - first  # where the byte starts, from this entry
                if offset >= 0:
                    value |= rows[byte] << np.uint64(offset)
                else:
                    value |= rows[byte] >> np.uint64(-offset)
            entries[entry] = value & np.uint64(mask)
        flat = entries.T.reshape(-1)
        # Bits past the last entry decode as entries past ``count``: they must all be zero.
        if np.any(flat[n:]):
            raise ValueError("the padding bits after the last entry must be zero")
        out[start : start + n] = flat[:n].astype(np.uint32)
    return out
