"""TrimmedMean: up to beta * n outliers cannot pull it out of the honest range."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import (
    FAST,
    assert_within_honest_range,
    honest_and_outliers,
    random_state,
    seeds,
    update,
)

from federated.strategies import TrimmedMean


@FAST
@given(
    seed=seeds,
    total=st.integers(1, 15),
    beta=st.floats(0, 0.49),
    outlier_share=st.floats(0, 1),
    magnitude=st.sampled_from([1e3, 1e8, 1e30]),
)
def test_trimmed_mean_ignores_up_to_beta_n_outliers(
    seed: int, total: int, beta: float, outlier_share: float, magnitude: float
) -> None:
    outlier_count = min(math.floor(outlier_share * total), math.floor(beta * total))  # k <= beta n
    honest, outliers = honest_and_outliers(seed, total - outlier_count, outlier_count, magnitude)
    base = random_state(torch.Generator().manual_seed(seed + 1))
    result = TrimmedMean(beta=beta).aggregate(base, [update(d) for d in honest + outliers])
    assert_within_honest_range(result, base, honest)
