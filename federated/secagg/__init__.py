"""SecAgg+ (Bell et al. 2020): the server learns the sum of the updates, not any one of them.

A pure library, no networking: the two sides of one round as state machines
(``SecAggClient``, ``SecAggServer``), their messages as compact bytes, and
``simulation.run_round`` to play a round in process. The stages, with who sends what::

    0 set-up       server -> client   parameters, neighbours' identity keys
    1 advertise    client -> server   two X25519 public keys signed by the identity key
                   server -> client   the neighbours' advertisements (checked by the client)
    2 share keys   client -> server   Shamir shares of the self-mask seed b and the secret s,
                                      sealed (AES-GCM) to each neighbour
                   server -> client   the shares sealed for it
    3 masked input client -> server   y = x + PRG(b) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)
    4 unmask       server -> client   which neighbours survived, which dropped
                   client -> server   a share of b_j for each survivor, of s_j for each dropped

Modules: ``shamir`` (secret sharing over GF(2^130 - 5)), ``prg`` (ChaCha20 masks),
``keys`` (X25519, HKDF, AES-GCM, signed advertisements), ``encoding`` (clip, public-scale
quantisation to int8 range, rings mod 2^w, bit packing), ``graph`` (the Harary graph, k and
t), ``params`` (``RoundParameters``), ``messages``, ``client``, ``server``, ``simulation``,
``errors``.
"""

from __future__ import annotations

from federated.secagg.client import ClientStage, SecAggClient
from federated.secagg.encoding import (
    MAX_CONTRIBUTORS,
    QUANT_LEVEL,
    FixedPointCodec,
    ring_bits_for,
    ring_capacity,
)
from federated.secagg.errors import (
    ABORT_REASONS,
    ForgedAdvertisement,
    RefusedRequest,
    SecAggAbort,
    SecAggError,
    StageError,
)
from federated.secagg.graph import (
    DEFAULT_FAILURE_PROBABILITY,
    CommunicationGraph,
    abort_probability,
    choose_degree,
    threshold_for,
)
from federated.secagg.params import RoundParameters
from federated.secagg.server import SecAggResult, SecAggServer, ServerStage
from federated.secagg.simulation import Dropouts, RoundReport, Transcript, run_round

__all__ = [
    "ABORT_REASONS",
    "DEFAULT_FAILURE_PROBABILITY",
    "MAX_CONTRIBUTORS",
    "QUANT_LEVEL",
    "ClientStage",
    "CommunicationGraph",
    "Dropouts",
    "FixedPointCodec",
    "ForgedAdvertisement",
    "RefusedRequest",
    "RoundParameters",
    "RoundReport",
    "SecAggAbort",
    "SecAggClient",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "ServerStage",
    "StageError",
    "Transcript",
    "abort_probability",
    "choose_degree",
    "ring_bits_for",
    "ring_capacity",
    "run_round",
    "threshold_for",
]
