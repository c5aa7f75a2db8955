"""The round's keys: X25519 pairs, signed advertisements, derived seeds and share encryption.

Each client makes two fresh X25519 pairs per round: ``c`` agrees the keys that encrypt its
shares to each neighbour, ``s`` agrees the pairwise mask seeds. It signs both public keys,
with the round id and its index, under its long-term Ed25519 identity key
(``federated.signing``), so a relaying server cannot put its own keys in their place.

Every derivation names the round and the two indices in its HKDF ``info``, so no key or
seed of one round or pair serves another.
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federated.errors import SignatureError
from federated.secagg.errors import ForgedAdvertisement, StageError
from federated.signing import SigningKey, verify_bytes

ROUND_ID_BYTES = 16
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16

_ADVERTISE = b"barnraise-secagg/advertise/1"
_PAIRWISE = b"barnraise-secagg/pairwise-mask/1"
_SHARE_KEY = b"barnraise-secagg/share-key/1"


@dataclass(frozen=True)
class RoundKeys:
    """One client's two X25519 key pairs for one round; never reused across rounds."""

    c_secret: X25519PrivateKey
    s_secret: X25519PrivateKey

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def c_public(self) -> bytes:
        return self.c_secret.public_key().public_bytes_raw()

    @property
    def s_public(self) -> bytes:
        return self.s_secret.public_key().public_bytes_raw()

    def s_secret_bytes(self) -> bytes:
        """The raw 32-byte ``s`` secret: what neighbours hold shares of, for when we drop."""
        return self.s_secret.private_bytes_raw()


def advertisement_bytes(round_id: bytes, index: int, c_public: bytes, s_public: bytes) -> bytes:
    """The exact bytes an advertisement's signature covers."""
    return _ADVERTISE + round_id + struct.pack(">I", index) + c_public + s_public


def sign_advertisement(
    identity: SigningKey, round_id: bytes, index: int, c_public: bytes, s_public: bytes
) -> bytes:
    """The raw 64-byte Ed25519 signature over ``advertisement_bytes``."""
    signed = identity.sign_bytes(advertisement_bytes(round_id, index, c_public, s_public))
    return base64.b64decode(signed)


def verify_advertisement(
    identity_key_b64: str,
    round_id: bytes,
    index: int,
    c_public: bytes,
    s_public: bytes,
    signature: bytes,
) -> None:
    """Return if client ``index`` signed these keys for this round; else ``ForgedAdvertisement``."""
    data = advertisement_bytes(round_id, index, c_public, s_public)
    try:
        verify_bytes(identity_key_b64, data, base64.b64encode(signature).decode("ascii"))
    except SignatureError as exc:
        raise ForgedAdvertisement(
            f"client {index}'s advertised keys are not signed by its identity key ({exc}); "
            "the relay changed them or the advertisement is from another round: abort the round"
        ) from None


def _exchange(secret: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return secret.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # A low-order point gives an all-zero secret; a signed honest key never does.
        raise StageError("a peer's X25519 key is degenerate (low order)") from None


def _derive(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def pairwise_seed(
    s_secret: X25519PrivateKey, peer_s_public: bytes, round_id: bytes, i: int, j: int
) -> bytes:
    """s_ij = HKDF(X25519(s_sk_i, s_pk_j)): the same 32 bytes on both sides of the pair."""
    low, high = sorted((i, j))
    info = _PAIRWISE + round_id + struct.pack(">II", low, high)
    return _derive(_exchange(s_secret, peer_s_public), info)


def share_secret(c_secret: X25519PrivateKey, peer_c_public: bytes) -> bytes:
    """X25519(c_sk_i, c_pk_j), from which both directions' share keys are derived."""
    return _exchange(c_secret, peer_c_public)


def _share_context(round_id: bytes, sender: int, receiver: int) -> bytes:
    return _SHARE_KEY + round_id + struct.pack(">II", sender, receiver)


def seal_shares(
    shared: bytes, round_id: bytes, sender: int, receiver: int, plaintext: bytes
) -> tuple[bytes, bytes]:
    """(nonce, AES-256-GCM ciphertext) of ``plaintext`` for ``receiver``, bound to the pair.

    The key, HKDF(``shared``) with the round and (sender, receiver) in that order, is
    directional, and the nonce random, so a client that re-sends its shares after a retry
    never reuses a (key, nonce).
    """
    context = _share_context(round_id, sender, receiver)
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(_derive(shared, context)).encrypt(nonce, plaintext, context)


def open_shares(
    shared: bytes, round_id: bytes, sender: int, receiver: int, nonce: bytes, ciphertext: bytes
) -> bytes:
    """The plaintext of ``seal_shares``; ``StageError`` if it was changed or is misaddressed."""
    context = _share_context(round_id, sender, receiver)
    try:
        return AESGCM(_derive(shared, context)).decrypt(nonce, ciphertext, context)
    except InvalidTag:
        raise StageError(
            f"the shares from client {sender} to {receiver} do not decrypt: changed in transit, "
            "or sealed for another pair or round"
        ) from None
