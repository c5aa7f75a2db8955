"""Ed25519 signatures over canonical manifests: round trips, tampering and bad encodings."""

from __future__ import annotations

import base64
import hashlib
import math
import re

import pytest

from federated.errors import SignatureError
from federated.signing import (
    SigningKey,
    canonical_json,
    fingerprint,
    verify,
    verify_bytes,
)

MANIFEST = {
    "project": "digits",
    "task_id": "task-0001",
    "payload_digest": "ab" * 32,
    "num_examples": 180,
    "metrics": {"loss_after": 0.4, "loss_before": 2.3},
    "display": "Ada Lovelace — é",
}


def test_canonical_json_sorts_keys_drops_spaces_and_keeps_utf8() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "é", "c": None}) == (
        '{"a":"é","b":[1,2.5],"c":null}'.encode()
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"loss": bad})


def test_rfc8032_test_vector_1() -> None:
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = SigningKey.from_private_bytes(seed)
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert base64.b64decode(key.public_key_b64) == public
    signature = key.sign_bytes(b"")
    assert base64.b64decode(signature).hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
        "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    verify_bytes(key.public_key_b64, b"", signature)


def test_sign_then_verify_whatever_the_key_order() -> None:
    key = SigningKey.generate()
    signature = key.sign(MANIFEST)
    assert len(base64.b64decode(signature, validate=True)) == 64
    verify(key.public_key_b64, dict(reversed(list(MANIFEST.items()))), signature)


def test_private_bytes_round_trip() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_private_bytes(key.private_bytes())
    assert again.public_key_b64 == key.public_key_b64
    assert len(key.private_bytes()) == 32
    with pytest.raises(ValueError):
        SigningKey.from_private_bytes(b"short")


def test_repr_does_not_leak_the_private_key() -> None:
    key = SigningKey.generate()
    assert key.private_bytes().hex() not in repr(key)
    assert base64.b64encode(key.private_bytes()).decode() not in repr(key)


@pytest.mark.parametrize(
    "field, value", [("num_examples", 181), ("project", "digitz"), ("metrics", {})]
)
def test_a_changed_manifest_fails(field: str, value: object) -> None:
    key = SigningKey.generate()
    signature = key.sign(MANIFEST)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(key.public_key_b64, {**MANIFEST, field: value}, signature)


def test_a_changed_byte_of_the_payload_fails() -> None:
    key = SigningKey.generate()
    data = bytes(range(256)) * 10
    signature = key.sign_bytes(data)
    for position in (0, 1000, len(data) - 1):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(SignatureError):
            verify_bytes(key.public_key_b64, bytes(tampered), signature)


def test_a_changed_byte_of_the_signature_fails() -> None:
    key = SigningKey.generate()
    raw = bytearray(base64.b64decode(key.sign(MANIFEST)))
    raw[10] ^= 0x80
    with pytest.raises(SignatureError):
        verify(key.public_key_b64, MANIFEST, base64.b64encode(bytes(raw)).decode())


def test_another_key_fails() -> None:
    signature = SigningKey.generate().sign(MANIFEST)
    with pytest.raises(SignatureError, match="another key"):
        verify(SigningKey.generate().public_key_b64, MANIFEST, signature)


@pytest.mark.parametrize(
    "public_key", ["not base64!", base64.b64encode(b"x" * 31).decode(), "", "é"]
)
def test_a_badly_encoded_key_is_a_signature_error(public_key: str) -> None:
    signature = SigningKey.generate().sign(MANIFEST)
    with pytest.raises(SignatureError, match="public key"):
        verify(public_key, MANIFEST, signature)


@pytest.mark.parametrize("signature", ["%%%", base64.b64encode(b"x" * 63).decode(), "", "QUJD"[:3]])
def test_a_badly_encoded_signature_is_a_signature_error(signature: str) -> None:
    key = SigningKey.generate()
    with pytest.raises(SignatureError, match="signature"):
        verify(key.public_key_b64, MANIFEST, signature)


def test_a_manifest_with_nan_cannot_verify() -> None:
    key = SigningKey.generate()
    with pytest.raises(SignatureError, match="canonical"):
        verify(key.public_key_b64, {"loss": math.nan}, key.sign_bytes(b"{}"))


def test_fingerprint_is_16_bytes_of_sha256_in_groups_of_four() -> None:
    key = SigningKey.generate()
    printed = fingerprint(key.public_key_b64)
    assert re.fullmatch(r"[0-9a-f]{4}(:[0-9a-f]{4}){7}", printed)
    raw = base64.b64decode(key.public_key_b64)
    assert printed.replace(":", "") == hashlib.sha256(raw).hexdigest()[:32]
    with pytest.raises(SignatureError):
        fingerprint("nope")
