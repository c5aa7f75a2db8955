"""Masks from seeds: the ChaCha20 keystream of a 32-byte seed, read as integers mod 2^w.

Every seed of a round (a self-mask seed b_i, a pairwise seed s_ij) keys exactly one mask,
so the nonce is fixed; the keystream is uniform, and so are its low ``w`` bits, which is
what makes a masked input a one-time pad over Z_{2^w}.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32
_NONCE = bytes(16)
"""cryptography's ChaCha20 nonce: a 4-byte block counter then 12 bytes; one mask per key."""
_BLOCK_ENTRIES = 1 << 20
"""Entries drawn per keystream call, so a 10M-entry mask never needs a second full buffer."""


def mask(seed: bytes, count: int, ring_bits: int) -> np.ndarray:
    """``count`` uint32 entries, each uniform in [0, 2^ring_bits), from ``seed``."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    if not 1 <= ring_bits <= 32:
        raise ValueError(f"ring_bits must be in [1, 32], got {ring_bits}")
    out = np.empty(count, dtype=np.uint32)
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    zeros = bytes(4 * min(count, _BLOCK_ENTRIES))
    for start in range(0, count, _BLOCK_ENTRIES):
        n = min(_BLOCK_ENTRIES, count - start)
        out[start : start + n] = np.frombuffer(stream.update(zeros[: 4 * n]), dtype="<u4")
    if ring_bits < 32:
        out &= np.uint32((1 << ring_bits) - 1)
    return out


def add_mask(target: np.ndarray, seed: bytes, ring_bits: int, *, sign: int = 1) -> None:
    """``target += sign * mask(seed)`` mod 2^32 in place (uint32 wraps; reduce mod 2^w after)."""
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    values = mask(seed, target.shape[0], ring_bits)
    if sign == 1:
        np.add(target, values, out=target)
    else:
        np.subtract(target, values, out=target)
