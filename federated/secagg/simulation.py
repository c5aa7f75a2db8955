"""An in-process SecAgg+ round for tests and benches: n clients and the server, via bytes.

Every message is encoded by its sender and decoded by its receiver, its size counted
against the client that sent (up) or received (down) it, and each side's compute time is
measured (encoding and decoding included). ``Dropouts`` say who leaves after which stage;
``Transcript`` keeps everything the server saw, for tests of what it can learn.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from federated.secagg.client import SecAggClient
from federated.secagg.encoding import layout_of
from federated.secagg.messages import (
    Advertisement,
    AdvertisementBundle,
    MaskedInput,
    RoundSetup,
    ShareDelivery,
    ShareUpload,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.secagg.params import RoundParameters
from federated.secagg.server import SecAggResult, SecAggServer
from federated.signing import SigningKey


@dataclass(frozen=True)
class Dropouts:
    """Who leaves when: each set names clients that send nothing from that point on."""

    before_advertising: frozenset[int] = frozenset()
    after_advertising: frozenset[int] = frozenset()
    after_sharing: frozenset[int] = frozenset()
    after_masking: frozenset[int] = frozenset()


@dataclass
class Transcript:
    """Every message the server received or sent, as bytes, by stage and client."""

    setups: dict[int, bytes] = field(default_factory=dict)
    adverts: dict[int, bytes] = field(default_factory=dict)
    bundles: dict[int, bytes] = field(default_factory=dict)
    uploads: dict[int, bytes] = field(default_factory=dict)
    deliveries: dict[int, bytes] = field(default_factory=dict)
    masked: dict[int, bytes] = field(default_factory=dict)
    requests: dict[int, bytes] = field(default_factory=dict)
    responses: dict[int, bytes] = field(default_factory=dict)


@dataclass
class RoundReport:
    result: SecAggResult
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    client_seconds: dict[int, float]
    server_seconds: float
    transcript: Transcript
    clients: dict[int, SecAggClient]


class _Clock:
    """Seconds of compute per party (a client index, or ``_SERVER``)."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}

    @contextmanager
    def on(self, who: int) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[who] = self.seconds.get(who, 0.0) + time.perf_counter() - start


_SERVER = -1


def run_round(
    params: RoundParameters,
    updates: Mapping[int, Mapping[str, torch.Tensor]],
    *,
    identities: Mapping[int, SigningKey] | None = None,
    dropouts: Dropouts | None = None,
    rounding_seed: int = 0,
    keep_transcript: bool = False,
) -> RoundReport:
    """Run one round of ``params.num_clients`` clients; ``updates[i]`` is client i's update.

    Raises what the round raises (``SecAggAbort`` when too many drop).
    """
    n = params.num_clients
    drops = dropouts or Dropouts()
    if identities is None:
        identities = {i: SigningKey.generate() for i in range(n)}
    roster = {i: base64.b64decode(identities[i].public_key_b64) for i in range(n)}
    clock = _Clock()
    up: dict[int, int] = dict.fromkeys(range(n), 0)
    down: dict[int, int] = dict.fromkeys(range(n), 0)
    record = Transcript()

    def send(i: int, data: bytes, log: dict[int, bytes]) -> bytes:
        up[i] += len(data)
        if keep_transcript:
            log[i] = data
        return data

    def deliver(i: int, data: bytes, log: dict[int, bytes]) -> bytes:
        down[i] += len(data)
        if keep_transcript:
            log[i] = data
        return data

    with clock.on(_SERVER):
        server = SecAggServer(params=params, roster=roster, shapes=layout_of(updates[0]))
    alive = set(range(n)) - drops.before_advertising
    clients: dict[int, SecAggClient] = {}
    for i in sorted(alive):
        with clock.on(_SERVER):
            raw = deliver(i, server.setup(i).encode(), record.setups)
        with clock.on(i):
            clients[i] = SecAggClient(
                index=i,
                identity=identities[i],
                setup=RoundSetup.decode(raw),
                rounding_seed=rounding_seed * 1_000_003 + i,
            )
            data = send(i, clients[i].advertise().encode(), record.adverts)
        with clock.on(_SERVER):
            server.receive_advertisement(Advertisement.decode(data))

    with clock.on(_SERVER):
        bundles = {i: b.encode() for i, b in server.close_advertising().items()}
    alive -= drops.after_advertising
    for i in sorted(alive & set(bundles)):
        raw = deliver(i, bundles[i], record.bundles)
        with clock.on(i):
            upload = clients[i].share_keys(AdvertisementBundle.decode(raw)).encode()
        data = send(i, upload, record.uploads)
        with clock.on(_SERVER):
            server.receive_shares(ShareUpload.decode(data))

    with clock.on(_SERVER):
        deliveries = {i: d.encode() for i, d in server.close_sharing().items()}
    alive -= drops.after_sharing
    for i in sorted(alive & set(deliveries)):
        raw = deliver(i, deliveries[i], record.deliveries)
        with clock.on(i):
            masked = clients[i].masked_input(ShareDelivery.decode(raw), updates[i]).encode()
        data = send(i, masked, record.masked)
        with clock.on(_SERVER):
            server.receive_masked_input(MaskedInput.decode(data))

    with clock.on(_SERVER):
        requests = {i: r.encode() for i, r in server.close_masking().items()}
    alive -= drops.after_masking
    for i in sorted(alive & set(requests)):
        raw = deliver(i, requests[i], record.requests)
        with clock.on(i):
            response = clients[i].unmask(UnmaskRequest.decode(raw)).encode()
        data = send(i, response, record.responses)
        with clock.on(_SERVER):
            server.receive_unmask(UnmaskResponse.decode(data))

    with clock.on(_SERVER):
        result = server.finish()
    server_seconds = clock.seconds.pop(_SERVER, 0.0)
    return RoundReport(
        result=result,
        bytes_up=up,
        bytes_down=down,
        client_seconds=clock.seconds,
        server_seconds=server_seconds,
        transcript=record,
        clients=clients,
    )
