from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federated.data import Partition, parse_partition, partition_indices, shard_indices


@pytest.mark.parametrize("text", ["iid", "shard", "dirichlet:0.3", "Dirichlet:2"])
def test_parse_partition_accepts(text: str) -> None:
    assert str(parse_partition(text)) == text.lower()


@pytest.mark.parametrize(
    "text",
    ["", "random", "dirichlet:", "dirichlet:x", "dirichlet:0", "dirichlet:-1", "dirichlet:nan"],
)
def test_parse_partition_rejects_with_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"dirichlet|partition"):
        parse_partition(text)


@given(
    n=st.integers(20, 400),
    shards=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["iid", "shard", "dirichlet:0.3", "dirichlet:5"]),
)
def test_partition_is_a_deterministic_disjoint_cover(
    n: int, shards: int, seed: int, kind: str
) -> None:
    labels = np.random.default_rng(seed).integers(0, 10, size=n)
    parts = partition_indices(labels, kind, shards, seed)
    assert len(parts) == shards
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))
    again = partition_indices(labels, kind, shards, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert np.array_equal(shard_indices(labels, kind, shards, seed, shards - 1), parts[-1])


def test_dirichlet_small_alpha_skews_labels_and_iid_does_not() -> None:
    labels = np.repeat(np.arange(10), 100)
    skewed = partition_indices(labels, Partition("dirichlet", 0.1), 10, seed=1)
    iid = partition_indices(labels, "iid", 10, seed=1)

    def mean_distinct(parts: list[np.ndarray]) -> float:
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_distinct(iid) == 10
    assert mean_distinct(skewed) < 6


def test_shard_partition_gives_each_shard_few_labels() -> None:
    labels = np.repeat(np.arange(10), 50)
    parts = partition_indices(labels, "shard", 10, seed=3)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_bad_shard_arguments() -> None:
    labels = np.zeros(5, dtype=np.int64)
    with pytest.raises(ValueError, match="cannot split 5 examples into 6"):
        partition_indices(labels, "iid", 6, 0)
    with pytest.raises(ValueError, match="outside"):
        shard_indices(labels, "iid", 2, 0, 2)
