"""Deterministic data partitioning: which examples belong to which shard.

Every machine derives the same split from (seed, number of shards, shard id), so the server
never ships data, only a shard index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_EXAMPLES_PER_SHARD = 2
"""Dirichlet splits are redrawn until every shard has at least this many examples."""


@dataclass(frozen=True)
class Partition:
    """How a data set is split: ``iid``, ``dirichlet`` label skew with ``alpha``, or ``shard``
    (sorted by label and cut into contiguous blocks, the pathological non-IID split)."""

    kind: str
    alpha: float = 0.0

    def __str__(self) -> str:
        return f"dirichlet:{self.alpha:g}" if self.kind == "dirichlet" else self.kind


def parse_partition(text: str) -> Partition:
    """Parse ``iid``, ``shard`` or ``dirichlet:ALPHA`` (ALPHA > 0)."""
    text = text.strip().lower()
    if text in {"iid", "shard"}:
        return Partition(text)
    if text.startswith("dirichlet:"):
        raw = text.split(":", 1)[1]
        try:
            alpha = float(raw)
        except ValueError:
            raise ValueError(f"dirichlet alpha {raw!r} is not a number") from None
        if not alpha > 0 or alpha != alpha or alpha == float("inf"):
            raise ValueError(f"dirichlet alpha must be a positive finite number, got {raw}")
        return Partition("dirichlet", alpha)
    raise ValueError(
        f"unknown partition {text!r}; use iid, shard or dirichlet:ALPHA (e.g. dirichlet:0.3)"
    )


def partition_indices(
    labels: np.ndarray, partition: Partition | str, num_shards: int, seed: int
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_shards`` disjoint, sorted index arrays."""
    if isinstance(partition, str):
        partition = parse_partition(partition)
    n = len(labels)
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if num_shards > n:
        raise ValueError(f"cannot split {n} examples into {num_shards} shards")
    rng = np.random.default_rng([seed, num_shards, 0x5EED])
    if partition.kind == "iid":
        shards = np.array_split(rng.permutation(n), num_shards)
    elif partition.kind == "shard":
        order = np.lexsort((rng.permutation(n), labels))  # by label, ties in random order
        shards = np.array_split(order, num_shards)
    else:
        shards = _dirichlet_split(labels, partition.alpha, num_shards, rng)
    return [np.sort(s).astype(np.int64) for s in shards]


def shard_indices(
    labels: np.ndarray, partition: Partition | str, num_shards: int, seed: int, shard_index: int
) -> np.ndarray:
    """The indices of one shard; ``shard_index`` must be in ``[0, num_shards)``."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is outside [0, {num_shards})")
    return partition_indices(labels, partition, num_shards, seed)[shard_index]


def _dirichlet_split(
    labels: np.ndarray, alpha: float, num_shards: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): each class is spread over shards by Dirichlet(alpha)."""
    classes = np.unique(labels)
    for _attempt in range(100):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_shards)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(num_shards, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
            for shard, part in enumerate(np.split(members, cuts)):
                buckets[shard].append(part)
        shards = [np.concatenate(b) for b in buckets]
        if min(len(s) for s in shards) >= MIN_EXAMPLES_PER_SHARD:
            return shards
    # Extremely small alpha with many shards: fall back to giving each shard a fair slice.
    return list(np.array_split(rng.permutation(len(labels)), num_shards))
