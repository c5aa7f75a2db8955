"""The public parameters of one SecAgg+ round, which every client and the server share.

``RoundParameters.create`` picks the degree and threshold (``graph.choose_degree``) and the
ring (``encoding.ring_bits_for``) from the number of clients and the dropout the round
must survive; the constructor checks any set of values, so a client can refuse a round
whose parameters would not protect it (a threshold that is not a majority, a ring that
would wrap).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

from federated.secagg.encoding import (
    MAX_CONTRIBUTORS,
    MAX_RING_BITS,
    FixedPointCodec,
    Shapes,
    layout_digest,
    num_entries,
    ring_bits_for,
    ring_capacity,
)
from federated.secagg.graph import (
    DEFAULT_FAILURE_PROBABILITY,
    MIN_CLIENTS,
    CommunicationGraph,
    choose_degree,
)
from federated.secagg.keys import ROUND_ID_BYTES

SEED_BYTES = 32
_LAYOUT = struct.Struct(">16sIIIBddQ32s32sI")
PARAMETERS_BYTES = _LAYOUT.size


@dataclass(frozen=True)
class RoundParameters:
    """What a round is: who takes part (by index), its graph, threshold, ring and codec."""

    round_id: bytes
    num_clients: int
    degree: int
    threshold: int
    ring_bits: int
    clip_norm: float
    entry_bound: float
    num_entries: int
    layout_digest: bytes
    graph_seed: bytes
    min_survivors: int

    def __post_init__(self) -> None:
        if len(self.round_id) != ROUND_ID_BYTES:
            raise ValueError(f"round_id must be {ROUND_ID_BYTES} bytes")
        if not MIN_CLIENTS <= self.num_clients <= MAX_CONTRIBUTORS:
            raise ValueError(
                f"a round has {MIN_CLIENTS} to {MAX_CONTRIBUTORS} clients, got {self.num_clients}"
            )
        if not 2 <= self.degree < self.num_clients:
            raise ValueError(f"degree must be in [2, {self.num_clients - 1}], got {self.degree}")
        if not (2 * self.threshold > self.degree and self.threshold <= self.degree):
            raise ValueError(
                f"threshold {self.threshold} must be a strict majority of the degree "
                f"{self.degree}, or a server could gather both secrets of one client"
            )
        if not 1 <= self.ring_bits <= MAX_RING_BITS:
            raise ValueError(f"ring_bits must be in [1, {MAX_RING_BITS}], got {self.ring_bits}")
        if ring_capacity(self.ring_bits) < self.num_clients:
            raise ValueError(
                f"a {self.ring_bits}-bit ring sums at most {ring_capacity(self.ring_bits)} "
                f"int8-range inputs; this round has {self.num_clients} clients"
            )
        FixedPointCodec(self.clip_norm, self.entry_bound)  # validates both
        if self.num_entries < 1:
            raise ValueError("the update must have at least one entry")
        if len(self.layout_digest) != 32 or len(self.graph_seed) != SEED_BYTES:
            raise ValueError("layout_digest and graph_seed are 32 bytes each")
        if not 2 <= self.min_survivors <= self.num_clients:
            raise ValueError(
                f"min_survivors must be in [2, {self.num_clients}], got {self.min_survivors}: "
                "a sum of one input is that input"
            )

    @classmethod
    def create(
        cls,
        *,
        shapes: Shapes,
        num_clients: int,
        clip_norm: float,
        dropout_tolerance: float,
        round_id: bytes | None = None,
        entry_bound: float | None = None,
        ring_bits: int | None = None,
        graph_seed: bytes | None = None,
        min_survivors: int | None = None,
        failure_probability: float = DEFAULT_FAILURE_PROBABILITY,
    ) -> RoundParameters:
        """Parameters for ``num_clients`` sending updates of ``shapes``.

        Defaults: a random round id and graph seed, the smallest ring that holds the round,
        ``entry_bound = clip_norm`` and ``min_survivors = threshold``.
        """
        degree, threshold = choose_degree(
            num_clients,
            dropout_tolerance=dropout_tolerance,
            failure_probability=failure_probability,
        )
        return cls(
            round_id=round_id if round_id is not None else os.urandom(ROUND_ID_BYTES),
            num_clients=num_clients,
            degree=degree,
            threshold=threshold,
            ring_bits=ring_bits if ring_bits is not None else ring_bits_for(num_clients),
            clip_norm=clip_norm,
            entry_bound=entry_bound if entry_bound is not None else clip_norm,
            num_entries=num_entries(shapes),
            layout_digest=layout_digest(shapes),
            graph_seed=graph_seed if graph_seed is not None else os.urandom(SEED_BYTES),
            min_survivors=min_survivors if min_survivors is not None else threshold,
        )

    @property
    def codec(self) -> FixedPointCodec:
        return FixedPointCodec(self.clip_norm, self.entry_bound)

    def graph(self) -> CommunicationGraph:
        return CommunicationGraph(
            num_clients=self.num_clients, degree=self.degree, seed=self.graph_seed
        )

    def encode(self) -> bytes:
        """A fixed ``PARAMETERS_BYTES`` (121) big-endian layout."""
        return _LAYOUT.pack(
            self.round_id,
            self.num_clients,
            self.degree,
            self.threshold,
            self.ring_bits,
            self.clip_norm,
            self.entry_bound,
            self.num_entries,
            self.layout_digest,
            self.graph_seed,
            self.min_survivors,
        )

    @classmethod
    def decode(cls, data: bytes) -> RoundParameters:
        """The inverse of ``encode``; ``ValueError`` on a wrong length or values out of range."""
        if len(data) != _LAYOUT.size:
            raise ValueError(f"round parameters are {_LAYOUT.size} bytes, got {len(data)}")
        fields = _LAYOUT.unpack(data)
        if not all(math.isfinite(v) for v in fields[5:7]):
            raise ValueError("clip_norm and entry_bound must be finite")
        return cls(*fields)
