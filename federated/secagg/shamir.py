"""Shamir secret sharing over GF(2^130 - 5), for the 32-byte secrets of a SecAgg+ round.

A secret is cut into 16-byte chunks; each chunk (below 2^128, so below the prime) is the
constant term of its own random polynomial of degree ``threshold - 1``, and a share is the
values of those polynomials at one nonzero ``x``. Any ``threshold`` shares give the secret
back by Lagrange interpolation at 0; fewer say nothing about it, since every secret is
equally consistent with them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

PRIME = 2**130 - 5
"""The field's prime (Poly1305's): a 16-byte chunk is always below it."""

CHUNK_BYTES = 16
ELEMENT_BYTES = 17
"""Bytes of one field element on the wire (130 bits, big-endian)."""


@dataclass(frozen=True)
class Share:
    """One share: the point ``x`` (nonzero) and one field element per 16-byte chunk."""

    x: int
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 0 < self.x < PRIME:
            raise ValueError(f"a share's x must be in [1, p), got {self.x}")
        if any(not 0 <= v < PRIME for v in self.values):
            raise ValueError("a share's values must be field elements in [0, p)")

    def value_bytes(self) -> bytes:
        """The values as ``ELEMENT_BYTES`` big-endian bytes each (``x`` travels apart)."""
        return b"".join(v.to_bytes(ELEMENT_BYTES, "big") for v in self.values)

    @classmethod
    def from_value_bytes(cls, x: int, data: bytes) -> Share:
        """The inverse of ``value_bytes``; ``ValueError`` if the length or a value is off."""
        if len(data) == 0 or len(data) % ELEMENT_BYTES:
            raise ValueError(f"share values must be a multiple of {ELEMENT_BYTES} bytes")
        values = tuple(
            int.from_bytes(data[i : i + ELEMENT_BYTES], "big")
            for i in range(0, len(data), ELEMENT_BYTES)
        )
        return cls(x, values)


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule mod p; ``coefficients[0]`` is the constant term."""
    result = 0
    for c in reversed(coefficients):
        result = (result * x + c) % PRIME
    return result


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, Share]:
    """Shares of ``secret`` at each of ``xs`` (distinct, nonzero); any ``threshold`` recover it.

    ``secret`` must be a nonempty multiple of 16 bytes. Coefficients come from the OS's
    secure random source.
    """
    if not secret or len(secret) % CHUNK_BYTES:
        raise ValueError(f"a secret must be a nonempty multiple of {CHUNK_BYTES} bytes")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in [1, p)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    polynomials = [
        [int.from_bytes(secret[i : i + CHUNK_BYTES], "big")]
        + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for i in range(0, len(secret), CHUNK_BYTES)
    ]
    return {x: Share(x, tuple(_evaluate(p, x) for p in polynomials)) for x in xs}


def combine(shares: Sequence[Share], *, threshold: int) -> bytes:
    """The secret from ``threshold`` of ``shares`` (the lowest ``x`` first).

    Raises ``ValueError`` with fewer than ``threshold`` distinct shares or shares of
    different lengths. Shares that do not come from one polynomial of degree below
    ``threshold`` give a wrong secret, or ``ValueError`` when a chunk falls outside 16 bytes.
    """
    by_x = {s.x: s for s in shares}
    if threshold < 1 or len(by_x) < threshold:
        raise ValueError(f"need {threshold} distinct shares to reconstruct, got {len(by_x)}")
    chosen = [by_x[x] for x in sorted(by_x)[:threshold]]
    width = len(chosen[0].values)
    if any(len(s.values) != width for s in chosen):
        raise ValueError("shares of different lengths cannot belong to one secret")
    weights = _lagrange_at_zero([s.x for s in chosen])
    out = bytearray()
    for chunk in range(width):
        value = sum(w * s.values[chunk] for w, s in zip(weights, chosen, strict=True)) % PRIME
        if value >= 1 << (8 * CHUNK_BYTES):
            raise ValueError("the shares are inconsistent: a chunk does not fit 16 bytes")
        out += value.to_bytes(CHUNK_BYTES, "big")
    return bytes(out)


def _lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Weights w_j with f(0) = sum w_j f(x_j) for any f of degree below ``len(xs)``."""
    weights = []
    for j, xj in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * xm % PRIME
                denominator = denominator * (xm - xj) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return weights
