"""Shared set-up of the SecAgg+ tests: small layouts, random updates, rounds driven by hand."""

from __future__ import annotations

import base64

import torch

from federated.secagg import RoundParameters, SecAggClient, SecAggServer
from federated.secagg.messages import AdvertisementBundle
from federated.signing import SigningKey

SHAPES: dict[str, tuple[int, ...]] = {
    "fc1.weight": (16, 32),
    "fc1.bias": (16,),
    "fc2.weight": (4, 16),
}
"""592 entries in three tensors: a layout with more than one tensor, quick to mask."""


def random_updates(
    n: int, *, std: float = 0.005, seed: int = 0, shapes: dict[str, tuple[int, ...]] = SHAPES
) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        i: {name: torch.randn(shape, generator=gen) * std for name, shape in shapes.items()}
        for i in range(n)
    }


def params_for(n: int, **overrides: object) -> RoundParameters:
    kwargs: dict[str, object] = {
        "shapes": SHAPES,
        "num_clients": n,
        "clip_norm": 1.0,
        "dropout_tolerance": 0.3,
        "round_id": bytes(range(16)),
        "graph_seed": b"g" * 32,
    }
    kwargs.update(overrides)
    return RoundParameters.create(**kwargs)  # type: ignore[arg-type]


def raw_key(key: SigningKey) -> bytes:
    return base64.b64decode(key.public_key_b64)


class HandRound:
    """A round stepped by hand, so a test can tamper with what the server relays."""

    def __init__(self, params: RoundParameters) -> None:
        self.params = params
        n = params.num_clients
        self.identities = {i: SigningKey.generate() for i in range(n)}
        self.server = SecAggServer(
            params=params,
            roster={i: raw_key(self.identities[i]) for i in range(n)},
            shapes=SHAPES,
        )
        self.clients = {
            i: SecAggClient(
                index=i, identity=self.identities[i], setup=self.server.setup(i), rounding_seed=i
            )
            for i in range(n)
        }

    def advertise(self) -> dict[int, AdvertisementBundle]:
        for client in self.clients.values():
            self.server.receive_advertisement(client.advertise())
        return self.server.close_advertising()
