"""The built-in language-model corpus: CPython's standard-library source, packed once.

The corpus is one zstandard-compressed file in ``federated/recipes/data`` (built by
``federated/recipes/data/build_lm_corpus.py``; origin and licence in that folder's README).
Every contributor and the coordinator must train and evaluate on the same bytes, so the
loader checks the file's SHA-256 against the digest pinned here before it decodes anything,
and keeps the decoded corpus for the life of the process.

Decoded, the file is an 8-byte little-endian header length, a JSON header and the files'
bytes back to back, in the header's order. Each file belongs to the ``train`` or the
``validation`` split as a whole, so no validation text leaks into training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import numpy as np
import zstandard

from federated.errors import DataError

CORPUS_FORMAT = "barnraise-lm-corpus/1"
CORPUS_FILE = "pystdlib-corpus-v1.bin.zst"
CORPUS_SHA256 = "bd8b92c83e3229bf06a1e093802b6abfd5a24d6daaf53ae5d5d86d35230230df"
"""SHA-256 of ``CORPUS_FILE`` as shipped; a new corpus is a new file name and a new digest."""

MAX_DECODED_BYTES = 64 * 1024**2
"""The decoded corpus may not exceed this (the shipped one is about 9 MB)."""

COMPRESSION_LEVEL = 19

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")


@dataclass(frozen=True)
class CorpusFile:
    path: str
    size: int
    split: Split


@dataclass(frozen=True)
class Corpus:
    """The decoded corpus: the header's fields, its files and their bytes back to back."""

    meta: Mapping[str, Any]
    files: tuple[CorpusFile, ...]
    content: bytes

    def file_bytes(self) -> dict[str, bytes]:
        """Each file's bytes by path."""
        out, at = {}, 0
        for f in self.files:
            out[f.path] = self.content[at : at + f.size]
            at += f.size
        return out

    def split_bytes(self, split: Split) -> bytes:
        """The files of ``split`` back to back, in corpus order."""
        wanted = self.file_bytes()
        return b"".join(wanted[f.path] for f in self.files if f.split == split)


def pack(files: Iterable[tuple[str, Split, bytes]], meta: Mapping[str, Any]) -> bytes:
    """The compressed corpus file holding ``files`` (path, split, bytes) and ``meta``."""
    entries = list(files)
    header = {
        **meta,
        "format": CORPUS_FORMAT,
        "files": [{"path": p, "size": len(b), "split": s} for p, s, b in entries],
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    payload = len(head).to_bytes(8, "little") + head + b"".join(b for _, _, b in entries)
    return zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_content_size=True).compress(
        payload
    )


def unpack(blob: bytes, *, source: str, expected_sha256: str | None = None) -> Corpus:
    """Decode a corpus file; DataError naming ``source`` if it is damaged or not one."""
    if expected_sha256 is not None:
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected_sha256:
            raise DataError(
                f"{source}: SHA-256 is {actual}, expected {expected_sha256}; the built-in "
                "corpus is damaged or was replaced: reinstall Barnraise"
            )
    try:
        payload = zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_DECODED_BYTES)
        head_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8 : 8 + head_len].decode("utf-8"))
        if header.get("format") != CORPUS_FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {CORPUS_FORMAT!r}")
        files = tuple(
            CorpusFile(str(f["path"]), int(f["size"]), f["split"]) for f in header["files"]
        )
    except (zstandard.ZstdError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{source}: not a readable corpus file ({exc})") from None
    content = payload[8 + head_len :]
    if sum(f.size for f in files) != len(content) or any(f.split not in SPLITS for f in files):
        raise DataError(f"{source}: the header does not match the content; rebuild the corpus")
    meta = {k: v for k, v in header.items() if k != "files"}
    return Corpus(meta=meta, files=files, content=content)


@lru_cache(maxsize=1)
def builtin_corpus() -> Corpus:
    """The shipped corpus, checked against ``CORPUS_SHA256``; decoded once per process."""
    resource = resources.files("federated.recipes").joinpath("data", CORPUS_FILE)
    try:
        blob = resource.read_bytes()
    except OSError as exc:
        raise DataError(
            f"the built-in corpus {CORPUS_FILE} cannot be read ({exc}); reinstall Barnraise"
        ) from None
    return unpack(blob, source=CORPUS_FILE, expected_sha256=CORPUS_SHA256)


@lru_cache(maxsize=len(SPLITS))
def split_tokens(split: Split) -> np.ndarray:
    """The bytes of ``split`` as a read-only uint8 array (byte value = token id)."""
    return np.frombuffer(builtin_corpus().split_bytes(split), dtype=np.uint8)


__all__ = [
    "CORPUS_FILE",
    "CORPUS_SHA256",
    "Corpus",
    "CorpusFile",
    "builtin_corpus",
    "pack",
    "split_tokens",
    "unpack",
]
