"""Who shares with whom: the sparse SecAgg+ graph, and its degree k and threshold t.

The graph is the Harary graph H(k, n) laid over a public, seeded shuffle of the n clients:
on a ring of the shuffled clients, each is joined to the k/2 nearest on either side
(k even), or to everyone when k = n - 1. It is k-regular and k-connected, every client can
compute its own neighbours from (n, k, seed) and so check what the server forwards, and
because the shuffle is random, a client's neighbours are a random set of the others.

The threshold is a strict majority of a client's neighbours, ``t = k // 2 + 1``: each
neighbour reveals at most one of a client's two secrets, so even a server that tells
different neighbours different stories can never gather t shares of both (2t > k).

The degree is the smallest even k for which, when each client drops with probability
``dropout_tolerance`` (independently), the chance that some client keeps fewer than t
surviving neighbours (and the round aborts) is at most ``failure_probability``: by the
union bound, ``n * P[Binomial(k, 1 - dropout) < t]``. That grows like log n (Bell et al.
2020): at 10% dropout, k = 34 for 100 clients, 38 for 1000, 52 for a million. A round too
small for that uses the complete graph.
"""

from __future__ import annotations

import hashlib
import math

DEFAULT_FAILURE_PROBABILITY = 1e-6
"""The most likely a round may abort for want of shares at its design dropout rate."""
MIN_CLIENTS = 3
"""A sum over two clients would hand each the other's input; three is the least."""


def threshold_for(degree: int) -> int:
    """The shares needed to reconstruct a secret: a strict majority of ``degree``."""
    return degree // 2 + 1


def _binomial_below(trials: int, successes_below: int, p: float) -> float:
    """P[Binomial(trials, p) < successes_below], summed in log space so large k is safe."""
    if p >= 1.0:
        return 0.0
    total = 0.0
    for s in range(min(successes_below, trials + 1)):
        log_term = (
            math.lgamma(trials + 1)
            - math.lgamma(s + 1)
            - math.lgamma(trials - s + 1)
            + s * math.log(p)
            + (trials - s) * math.log1p(-p)
        )
        total += math.exp(log_term)
    return min(total, 1.0)


def abort_probability(num_clients: int, degree: int, dropout: float) -> float:
    """Upper bound on P[some client keeps fewer than t of its k neighbours] (union bound)."""
    tail = _binomial_below(degree, threshold_for(degree), 1.0 - dropout)
    return min(1.0, num_clients * tail)


def choose_degree(
    num_clients: int,
    *,
    dropout_tolerance: float,
    failure_probability: float = DEFAULT_FAILURE_PROBABILITY,
) -> tuple[int, int]:
    """(k, t) for ``num_clients`` that survives ``dropout_tolerance`` (see the module doc).

    Raises ``ValueError`` for fewer than ``MIN_CLIENTS`` clients, a tolerance outside
    (0, 0.5) (a majority of each neighbourhood must survive) or a probability outside (0, 1).
    """
    if num_clients < MIN_CLIENTS:
        raise ValueError(f"a secure round needs at least {MIN_CLIENTS} clients, got {num_clients}")
    if not 0.0 < dropout_tolerance < 0.5:
        raise ValueError(
            "dropout_tolerance must be in (0, 0.5): the threshold is a majority of each "
            f"client's neighbours, so more than half must stay; got {dropout_tolerance}"
        )
    if not 0.0 < failure_probability < 1.0:
        raise ValueError(f"failure_probability must be in (0, 1), got {failure_probability}")
    for degree in range(2, num_clients - 1, 2):
        if abort_probability(num_clients, degree, dropout_tolerance) <= failure_probability:
            return degree, threshold_for(degree)
    complete = num_clients - 1
    return complete, threshold_for(complete)


class CommunicationGraph:
    """The neighbours of every client of a round: H(k, n) over a shuffle seeded by ``seed``."""

    def __init__(self, *, num_clients: int, degree: int, seed: bytes) -> None:
        if num_clients < MIN_CLIENTS:
            raise ValueError(f"a graph needs at least {MIN_CLIENTS} clients, got {num_clients}")
        complete = degree == num_clients - 1
        if not complete and (degree < 2 or degree % 2 or degree >= num_clients):
            raise ValueError(
                f"degree must be even and in [2, {num_clients - 2}], or {num_clients - 1} "
                f"(every other client); got {degree}"
            )
        self.num_clients = num_clients
        self.degree = degree
        # A shuffle both sides compute alike on any platform: sort by a hash of (seed, i).
        order = sorted(
            range(num_clients),
            key=lambda i: hashlib.sha256(seed + i.to_bytes(4, "big")).digest(),
        )
        position = {client: p for p, client in enumerate(order)}
        if complete:
            everyone = frozenset(range(num_clients))
            self._neighbours = [everyone - {i} for i in range(num_clients)]
        else:
            half = degree // 2
            self._neighbours = [
                frozenset(
                    order[(position[i] + step) % num_clients]
                    for step in [*range(-half, 0), *range(1, half + 1)]
                )
                for i in range(num_clients)
            ]

    def neighbours(self, client: int) -> frozenset[int]:
        """The k clients that hold shares of ``client``'s secrets and mask pairwise with it."""
        if not 0 <= client < self.num_clients:
            raise ValueError(f"client index must be in [0, {self.num_clients}), got {client}")
        return self._neighbours[client]
