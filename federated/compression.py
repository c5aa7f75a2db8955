"""Optional zstd framing of payloads ("int8+zstd"): entropy coding on top of a codec.

Quantised deltas are far from uniformly distributed, so zstd takes a further third off an
int8 payload for little CPU. Decompression is bounded (a payload cannot expand beyond what the
receiver allows), so a small upload can never become a memory bomb.
"""

from __future__ import annotations

import zstandard

from federated.errors import UpdateRejected

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 3
"""zstd's default: most of the gain at a few hundred MB/s on one core."""


def compress(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """A single zstd frame that records its content size (so decompression can check it first)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def is_compressed(data: bytes) -> bool:
    return data[:4] == ZSTD_MAGIC


def decompress(data: bytes, *, max_size: int) -> bytes:
    """Inflate one zstd frame of at most ``max_size`` bytes, or raise UpdateRejected(bad_payload)."""
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise UpdateRejected("bad_payload", f"payload is not a valid zstd frame ({exc})") from None
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size == zstandard.CONTENTSIZE_ERROR:
        raise UpdateRejected("bad_payload", "zstd frame does not declare its content size")
    if size > max_size:
        raise UpdateRejected(
            "bad_payload", f"zstd frame would inflate to {size} bytes, above the {max_size} allowed"
        )
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise UpdateRejected("bad_payload", f"payload does not decompress ({exc})") from None
    if len(out) != size:
        raise UpdateRejected("bad_payload", "zstd frame content size does not match its data")
    return out
