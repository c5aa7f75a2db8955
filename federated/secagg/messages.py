"""The messages of a SecAgg+ round, each with a compact fixed binary layout (no pickle).

Internal to this library for now: the step that puts SecAgg on the wire moves them into
``federated/protocol`` (with their limits in ``protocol/limits.py``), keeping these bytes
as request bodies or giving them protocol types. Integers are big-endian; every list has
a u32 count, every variable field a length. ``decode`` refuses trailing or missing bytes.

    stage                 client -> server          server -> client
    0 set-up                                        RoundSetup (parameters, neighbours' identity keys)
    1 advertise keys      Advertisement             AdvertisementBundle (the neighbours')
    2 share keys          ShareUpload               ShareDelivery (the shares sealed for me)
    3 masked input        MaskedInput
    4 unmask              UnmaskResponse            UnmaskRequest (who survived, who dropped)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from federated.secagg.keys import KEY_BYTES, NONCE_BYTES, SIGNATURE_BYTES
from federated.secagg.params import PARAMETERS_BYTES, RoundParameters


class _Reader:
    """Reads fields off a message, raising ``ValueError`` on a short or long message."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._what = what

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise ValueError(f"{self._what} is truncated")
        out = bytes(self._data[self._at : self._at + size])
        self._at += size
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def done(self) -> None:
        if self._at != len(self._data):
            raise ValueError(f"{self._what} has {len(self._data) - self._at} trailing bytes")


@dataclass(frozen=True)
class RoundSetup:
    """The round's parameters and the identity keys of the client's neighbours.

    The roster is what signatures are checked against, so in the coordinator it must come
    from a source the relay cannot rewrite (signed by the project key with the task).
    """

    params: RoundParameters
    roster: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        items = b"".join(struct.pack(">I", i) + key for i, key in self.roster)
        return self.params.encode() + struct.pack(">I", len(self.roster)) + items

    @classmethod
    def decode(cls, data: bytes) -> RoundSetup:
        r = _Reader(data, "round set-up")
        params = RoundParameters.decode(r.take(PARAMETERS_BYTES))
        roster = tuple((r.u32(), r.take(KEY_BYTES)) for _ in range(r.u32()))
        r.done()
        return cls(params, roster)


@dataclass(frozen=True)
class Advertisement:
    """Stage 1: client ``index``'s two X25519 public keys, signed by its identity key."""

    index: int
    c_public: bytes
    s_public: bytes
    signature: bytes

    SIZE = 4 + 2 * KEY_BYTES + SIGNATURE_BYTES

    def encode(self) -> bytes:
        return struct.pack(">I", self.index) + self.c_public + self.s_public + self.signature

    @classmethod
    def read(cls, r: _Reader) -> Advertisement:
        return cls(r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES), r.take(SIGNATURE_BYTES))

    @classmethod
    def decode(cls, data: bytes) -> Advertisement:
        r = _Reader(data, "advertisement")
        out = cls.read(r)
        r.done()
        return out


@dataclass(frozen=True)
class AdvertisementBundle:
    """Stage 1 reply: the advertisements of the client's neighbours that advertised."""

    adverts: tuple[Advertisement, ...]

    def encode(self) -> bytes:
        return struct.pack(">I", len(self.adverts)) + b"".join(a.encode() for a in self.adverts)

    @classmethod
    def decode(cls, data: bytes) -> AdvertisementBundle:
        r = _Reader(data, "advertisement bundle")
        adverts = tuple(Advertisement.read(r) for _ in range(r.u32()))
        r.done()
        return cls(adverts)


@dataclass(frozen=True)
class SealedShares:
    """The sender's shares for the receiver (of its b and its s secret), AES-GCM sealed."""

    sender: int
    receiver: int
    nonce: bytes
    ciphertext: bytes

    def encode(self) -> bytes:
        head = struct.pack(">II", self.sender, self.receiver) + self.nonce
        return head + struct.pack(">H", len(self.ciphertext)) + self.ciphertext

    @classmethod
    def read(cls, r: _Reader) -> SealedShares:
        sender, receiver, nonce = r.u32(), r.u32(), r.take(NONCE_BYTES)
        return cls(sender, receiver, nonce, r.take(r.u16()))


def _encode_sealed(index: int, sealed: tuple[SealedShares, ...]) -> bytes:
    return struct.pack(">II", index, len(sealed)) + b"".join(s.encode() for s in sealed)


def _decode_sealed(data: bytes, what: str) -> tuple[int, tuple[SealedShares, ...]]:
    r = _Reader(data, what)
    index = r.u32()
    sealed = tuple(SealedShares.read(r) for _ in range(r.u32()))
    r.done()
    return index, sealed


@dataclass(frozen=True)
class ShareUpload:
    """Stage 2: one sealed pair of shares for each neighbour that advertised."""

    sender: int
    sealed: tuple[SealedShares, ...]

    def encode(self) -> bytes:
        return _encode_sealed(self.sender, self.sealed)

    @classmethod
    def decode(cls, data: bytes) -> ShareUpload:
        return cls(*_decode_sealed(data, "share upload"))


@dataclass(frozen=True)
class ShareDelivery:
    """Stage 2 reply: the shares sealed for ``receiver`` by its neighbours that shared."""

    receiver: int
    sealed: tuple[SealedShares, ...]

    def encode(self) -> bytes:
        return _encode_sealed(self.receiver, self.sealed)

    @classmethod
    def decode(cls, data: bytes) -> ShareDelivery:
        return cls(*_decode_sealed(data, "share delivery"))


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3: the masked update, ``ring_bits`` bits an entry (``encoding.pack``)."""

    sender: int
    data: bytes

    def encode(self) -> bytes:
        return struct.pack(">IQ", self.sender, len(self.data)) + self.data

    @classmethod
    def decode(cls, data: bytes) -> MaskedInput:
        r = _Reader(data, "masked input")
        sender = r.u32()
        out = cls(sender, r.take(r.u64()))
        r.done()
        return out


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4: which of the client's neighbours sent a masked input, and which dropped."""

    survived: tuple[int, ...]
    dropped: tuple[int, ...]

    def encode(self) -> bytes:
        parts = [
            struct.pack(">I", len(self.survived)),
            *(struct.pack(">I", i) for i in self.survived),
        ]
        parts += [
            struct.pack(">I", len(self.dropped)),
            *(struct.pack(">I", i) for i in self.dropped),
        ]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> UnmaskRequest:
        r = _Reader(data, "unmask request")
        survived = tuple(r.u32() for _ in range(r.u32()))
        dropped = tuple(r.u32() for _ in range(r.u32()))
        r.done()
        return cls(survived, dropped)


SELF_MASK_SEED = 0
"""``RevealedShare.kind`` of a share of b_j (asked for a neighbour that survived)."""
MASK_KEY = 1
"""``RevealedShare.kind`` of a share of s_sk_j (asked for a neighbour that dropped)."""


@dataclass(frozen=True)
class RevealedShare:
    """The share of one secret of ``owner`` that the responding client held."""

    owner: int
    kind: int
    values: bytes

    def encode(self) -> bytes:
        return struct.pack(">IBH", self.owner, self.kind, len(self.values)) + self.values

    @classmethod
    def read(cls, r: _Reader) -> RevealedShare:
        owner, kind = r.u32(), r.u8()
        if kind not in (SELF_MASK_SEED, MASK_KEY):
            raise ValueError(f"unknown share kind {kind}")
        return cls(owner, kind, r.take(r.u16()))


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4 reply: one share per neighbour named in the request, of one secret each."""

    sender: int
    revealed: tuple[RevealedShare, ...]

    def encode(self) -> bytes:
        head = struct.pack(">II", self.sender, len(self.revealed))
        return head + b"".join(s.encode() for s in self.revealed)

    @classmethod
    def decode(cls, data: bytes) -> UnmaskResponse:
        r = _Reader(data, "unmask response")
        sender = r.u32()
        revealed = tuple(RevealedShare.read(r) for _ in range(r.u32()))
        r.done()
        return cls(sender, revealed)
