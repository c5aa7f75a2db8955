"""Ed25519 signatures over canonical JSON manifests and raw bytes.

Keys are raw 32 bytes, signatures raw 64 bytes; both travel as standard padded base64
(see docs/protocol.md). A manifest is signed as ``canonical_json(manifest)`` so the
signer and the verifier agree on the bytes whatever order the keys arrived in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from federated.errors import SignatureError

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64
FINGERPRINT_BYTES = 16
"""The fingerprint shows the first 16 bytes (128 bits) of sha256(key): enough to compare by eye."""


def canonical_json(obj: Any) -> bytes:
    """The one byte string that ``obj`` signs as: sorted keys, no spaces, UTF-8.

    Raises ``ValueError`` for NaN or infinity (JSON has no such numbers, and two
    parsers would disagree on them) and ``TypeError`` for values JSON cannot hold.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _b64decode(text: str, *, what: str, length: int) -> bytes:
    """Strict standard base64 of exactly ``length`` bytes, else ``SignatureError``."""
    if not isinstance(text, str):
        raise SignatureError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise SignatureError(f"{what} is not valid base64: {text[:80]!r}") from None
    if len(raw) != length:
        raise SignatureError(f"{what} must decode to {length} bytes, got {len(raw)}")
    return raw


def _public_key(public_key_b64: str) -> Ed25519PublicKey:
    raw = _b64decode(public_key_b64, what="public key", length=PUBLIC_KEY_BYTES)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SignatureError("public key is not a valid Ed25519 key") from None


class SigningKey:
    """An Ed25519 private key; keep ``private_bytes()`` in the OS keychain, never in a file."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key_b64: str = base64.b64encode(raw).decode("ascii")

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key from the OS's secure random source."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        """The key whose raw 32-byte seed is ``raw``; ``ValueError`` if it is not 32 bytes."""
        if not isinstance(raw, bytes | bytearray) or len(raw) != PRIVATE_KEY_BYTES:
            raise ValueError(f"an Ed25519 private key is {PRIVATE_KEY_BYTES} raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    def private_bytes(self) -> bytes:
        """The raw 32-byte seed, for storing in the keychain."""
        return self._key.private_bytes_raw()

    def sign_bytes(self, data: bytes) -> str:
        """Base64 signature over ``data`` exactly."""
        return base64.b64encode(self._key.sign(bytes(data))).decode("ascii")

    def sign(self, manifest: Mapping[str, Any]) -> str:
        """Base64 signature over ``canonical_json(manifest)``."""
        return self.sign_bytes(canonical_json(dict(manifest)))

    def __repr__(self) -> str:
        # Never show the private key, even in a traceback.
        return f"SigningKey(public={fingerprint(self.public_key_b64)})"


def verify_bytes(public_key_b64: str, data: bytes, signature_b64: str) -> None:
    """Return if ``signature_b64`` signs ``data`` under the key; else ``SignatureError``."""
    key = _public_key(public_key_b64)
    signature = _b64decode(signature_b64, what="signature", length=SIGNATURE_BYTES)
    try:
        key.verify(signature, bytes(data))
    except InvalidSignature:
        raise SignatureError(
            f"signature does not verify under key {fingerprint(public_key_b64)}: the data "
            "was changed or signed by another key"
        ) from None


def verify(public_key_b64: str, manifest: Mapping[str, Any], signature_b64: str) -> None:
    """Return if ``signature_b64`` signs ``canonical_json(manifest)``; else ``SignatureError``.

    A manifest that cannot be canonical JSON (NaN, non-JSON values) fails verification
    too, since no valid signature can cover it.
    """
    try:
        data = canonical_json(dict(manifest))
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"manifest cannot be canonical JSON: {exc}") from None
    verify_bytes(public_key_b64, data, signature_b64)


def fingerprint(public_key_b64: str) -> str:
    """A key's fingerprint, e.g. ``'3f2a:9c01:...'``: 16 bytes of sha256 in groups of 4 hex.

    Raises ``SignatureError`` if ``public_key_b64`` is not a base64 32-byte key.
    """
    raw = _b64decode(public_key_b64, what="public key", length=PUBLIC_KEY_BYTES)
    digest = hashlib.sha256(raw).hexdigest()[: FINGERPRINT_BYTES * 2]
    return ":".join(digest[i : i + 4] for i in range(0, len(digest), 4))
