"""User-level DP helpers: the contributor's clipping and its bit, and the numbers of a project."""

from __future__ import annotations

import math

import pytest
import torch

from federated.privacy.accounting import Spend, adaptive_clip_noise, epsilon_spent
from federated.privacy.clipping import (
    WITHIN_CLIP_SLACK,
    clip_update,
    counts_as_within,
    update_norm,
)
from federated.privacy.user_level import (
    PARTICIPATION_SAMPLE_RATE,
    default_count_stddev,
    noise_multiplier_for_versions,
    noise_to_signal,
    update_noise_multiplier,
    user_level_epsilon,
)
from federated.tensors import l2_norm


def delta(seed: int, scale: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(5, 3, generator=gen) * scale, "b": torch.randn(3, generator=gen)}


def test_a_long_update_is_scaled_to_the_bound_in_the_same_direction() -> None:
    original = delta(0, scale=10.0)
    clipped, within = clip_update(original, 2.0)
    assert within is False
    assert l2_norm(clipped) == pytest.approx(2.0, rel=1e-6)
    scale = float(clipped["w"][0, 0] / original["w"][0, 0])
    for name in original:
        assert torch.allclose(clipped[name], original[name] * scale)


def test_a_short_update_comes_back_itself_and_says_so() -> None:
    original = delta(1, scale=0.01)
    norm = update_norm(original)
    clipped, within = clip_update(original, norm * 1.5)
    assert within is True and clipped is original
    exactly, within = clip_update(original, norm)
    assert within is True and exactly is original
    assert update_norm(original) == pytest.approx(l2_norm(original), rel=1e-9)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_clip_update_refuses_a_bad_bound(bound: object) -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        clip_update(delta(2, 1.0), bound)  # type: ignore[arg-type]


def test_clip_update_refuses_a_non_finite_update() -> None:
    broken = {"w": torch.tensor([1.0, math.nan])}
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(broken, 1.0)


@pytest.mark.parametrize(
    ("reported", "norm", "expected"),
    [
        (True, 0.5, True),
        (True, 1.0 + WITHIN_CLIP_SLACK * 0.9, True),  # a lossy codec's few per cent
        (True, 1.0 + WITHIN_CLIP_SLACK * 1.1, False),  # a lie
        (True, 100.0, False),
        (False, 0.5, False),  # cannot be told from an honest clipped update: counted as sent
        (None, 0.99, True),
        (None, 1.01, False),
    ],
)
def test_the_coordinator_believes_the_bit_only_as_far_as_the_norm_allows(
    reported: bool | None, norm: float, expected: bool
) -> None:
    assert counts_as_within(reported, norm, 1.0) is expected


def test_noise_to_signal_is_the_noise_norm_on_the_mean_over_the_bound() -> None:
    value = noise_to_signal(noise_multiplier=2.0, expected_updates=100, num_parameters=10_000)
    assert value == pytest.approx(2.0 * 100 / 100)
    # measured: z * C / n per coordinate over d coordinates, against C
    gen = torch.Generator().manual_seed(3)
    bound = 0.7
    noise = torch.randn(10_000, generator=gen, dtype=torch.float64) * (2.0 * bound / 100)
    assert float(noise.norm()) / bound == pytest.approx(value, rel=0.02)
    more = noise_to_signal(noise_multiplier=2.0, expected_updates=1000, num_parameters=10_000)
    assert more == pytest.approx(value / 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -1.0, "expected_updates": 10, "num_parameters": 10},
        {"noise_multiplier": math.nan, "expected_updates": 10, "num_parameters": 10},
        {"noise_multiplier": 1.0, "expected_updates": 0, "num_parameters": 10},
        {"noise_multiplier": 1.0, "expected_updates": 10, "num_parameters": 2.5},
    ],
)
def test_noise_to_signal_refuses_bad_numbers(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        noise_to_signal(**kwargs)  # type: ignore[arg-type]


def test_the_count_noise_and_what_it_leaves_for_the_deltas() -> None:
    assert default_count_stddev(1000) == pytest.approx(50.0)
    assert default_count_stddev(1000, noise_multiplier=3.0) == pytest.approx(50.0)
    strict = default_count_stddev(100, noise_multiplier=11.5)  # 100 / 20 would leave nothing
    assert strict == 11.5
    assert update_noise_multiplier(11.5, strict) == pytest.approx(11.5 * 2 / math.sqrt(3))
    assert update_noise_multiplier(1.3, None) == 1.3
    assert update_noise_multiplier(0.0, 5.0) == 0.0
    assert update_noise_multiplier(1.3, 5.0) == pytest.approx(adaptive_clip_noise(1.3, 5.0))
    assert update_noise_multiplier(1.3, 5.0) == pytest.approx((1.3**-2 - 10.0**-2) ** -0.5)
    with pytest.raises(ValueError, match="count_stddev"):
        update_noise_multiplier(2.0, 1.0)


def test_user_level_epsilon_charges_every_version_at_sampling_rate_one() -> None:
    assert PARTICIPATION_SAMPLE_RATE == 1.0
    assert user_level_epsilon(noise_multiplier=1.0, versions=0, delta=1e-5) == 0.0
    assert user_level_epsilon(noise_multiplier=0.0, versions=3, delta=1e-5) == math.inf
    z = noise_multiplier_for_versions(epsilon=8.0, delta=1e-5, versions=30)
    spent = user_level_epsilon(noise_multiplier=z, versions=30, delta=1e-5)
    assert spent == epsilon_spent([Spend(z, 1.0, 30)], 1e-5)
    assert 7.8 <= spent <= 8.0
    assert user_level_epsilon(noise_multiplier=z, versions=60, delta=1e-5) > spent
    with pytest.raises(ValueError, match="versions"):
        user_level_epsilon(noise_multiplier=1.0, versions=-1, delta=1e-5)
