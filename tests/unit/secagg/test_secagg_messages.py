"""Every stage message round-trips through its bytes, and malformed bytes are refused."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from secagg_helpers import params_for

from federated.secagg.messages import (
    MASK_KEY,
    SELF_MASK_SEED,
    Advertisement,
    AdvertisementBundle,
    MaskedInput,
    RevealedShare,
    RoundSetup,
    SealedShares,
    ShareDelivery,
    ShareUpload,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.secagg.params import PARAMETERS_BYTES, RoundParameters

ADVERT = Advertisement(3, os.urandom(32), os.urandom(32), os.urandom(64))
SEALED = SealedShares(3, 5, os.urandom(12), os.urandom(84))

MESSAGES = [
    RoundSetup(params_for(10), ((1, os.urandom(32)), (7, os.urandom(32)))),
    ADVERT,
    AdvertisementBundle((ADVERT, replace(ADVERT, index=9))),
    AdvertisementBundle(()),
    ShareUpload(3, (SEALED, replace(SEALED, receiver=6))),
    ShareDelivery(5, (SEALED,)),
    MaskedInput(4, os.urandom(1000)),
    UnmaskRequest((1, 2, 9), (4,)),
    UnmaskResponse(
        2,
        (
            RevealedShare(1, SELF_MASK_SEED, os.urandom(34)),
            RevealedShare(4, MASK_KEY, os.urandom(34)),
        ),
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_and_strict_length(message: object) -> None:
    data = message.encode()  # type: ignore[attr-defined]
    kind = type(message)
    assert kind.decode(data) == message  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        kind.decode(data + b"\0")  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        kind.decode(data[:-1])  # type: ignore[attr-defined]


def test_sizes_are_the_documented_fixed_layouts() -> None:
    assert len(ADVERT.encode()) == Advertisement.SIZE == 132
    assert len(params_for(10).encode()) == PARAMETERS_BYTES == 121
    assert len(SEALED.encode()) == 4 + 4 + 12 + 2 + 84


def test_parameters_refuse_unsafe_values_when_decoded() -> None:
    params = params_for(10)
    weak = bytearray(params.encode())
    weak[24:28] = (3).to_bytes(4, "big")  # threshold 3 of 9: not a majority
    with pytest.raises(ValueError, match="strict majority"):
        RoundParameters.decode(bytes(weak))
    with pytest.raises(ValueError, match="ring sums at most"):
        replace(params, ring_bits=11)


def test_unknown_share_kind_is_refused() -> None:
    data = bytearray(MESSAGES[-1].encode())  # type: ignore[attr-defined]
    data[12] = 7
    with pytest.raises(ValueError, match="share kind"):
        UnmaskResponse.decode(bytes(data))
