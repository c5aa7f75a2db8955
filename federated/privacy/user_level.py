"""User-level differential privacy, the numbers a project is created with and shows.

Under DP-FedAvg (``federated.strategies.dp_fedavg``) one contributor's update, clipped to
``C``, is the unit of privacy: each version's mean delta gets Gaussian noise of standard
deviation ``z * C`` over the sum of weights, and the epsilon after ``T`` versions is that
of ``T`` Gaussian mechanisms of noise multiplier ``z``, composed. These helpers are pure, so
the coordinator can warn at creation and the project page can show the spend without
touching a model.
"""

from __future__ import annotations

import math

from federated.privacy.accounting import (
    Spend,
    adaptive_clip_noise,
    epsilon_spent,
    noise_multiplier_for,
)

PARTICIPATION_SAMPLE_RATE = 1.0
"""The sampling rate the user-level accounting assumes: every version's manifest names the
updates it took in, and manifests are public, so who took part in a version is no secret
and no amplification by sampling may be claimed: each version costs a full Gaussian
mechanism to everyone in it."""

COUNT_STDDEV_SHARE = 1 / 20
"""Andrew et al. 2021 ("Differentially Private Learning with Adaptive Clipping") set the
noise on the count of unclipped updates to the expected number of updates over 20: the
bound still tracks its quantile, and the share of the budget it takes is small."""


def noise_to_signal(
    *, noise_multiplier: float, expected_updates: int, num_parameters: int
) -> float:
    """The L2 norm of the noise on one version's mean delta over the clip bound ``C``.

    The noise has ``num_parameters`` coordinates of standard deviation ``z * C / n``
    (``n`` updates of weight 1), so its norm is about ``z * C * sqrt(d) / n``, while no
    single update, and so no mean of them, is longer than ``C``. Over 1 the noise is
    longer than any signal a version can carry: the project needs more updates per
    version, fewer parameters, or a larger epsilon.
    """
    z = _finite_at_least("noise_multiplier", noise_multiplier, 0.0)
    n = _count("expected_updates", expected_updates)
    d = _count("num_parameters", num_parameters)
    return z * math.sqrt(d) / n


def default_count_stddev(expected_updates: int, *, noise_multiplier: float = 0.0) -> float:
    """The noise on the count of unclipped updates for adaptive clipping: expected / 20,
    and at least ``noise_multiplier``, so that the bits never take more than a quarter of
    the budget (``update_noise_multiplier`` then at most 2 / sqrt(3), 1.15, x the
    multiplier). Expected / 20 alone is not over ``noise_multiplier / 2`` once the
    multiplier passes expected / 10, and then no share of the budget is left for the
    deltas at all (a strict budget on few updates per version)."""
    share = _count("expected_updates", expected_updates) * COUNT_STDDEV_SHARE
    return max(share, _finite_at_least("noise_multiplier", noise_multiplier, 0.0))


def update_noise_multiplier(noise_multiplier: float, count_stddev: float | None) -> float:
    """The noise multiplier left for the deltas once the clipping bits take their share.

    ``count_stddev`` None: fixed clipping, the deltas get all of ``noise_multiplier``.
    Otherwise the bits' noise ``count_stddev`` and the deltas' ``z_delta`` together cost
    what ``noise_multiplier`` alone would (Andrew et al. 2021, Theorem 1):
    ``z_delta = (z**-2 - (2 * count_stddev)**-2) ** -0.5`` (``adaptive_clip_noise``).
    Raises ValueError when ``count_stddev`` is not over ``noise_multiplier / 2``: the bits
    would take the whole budget. Without noise (``noise_multiplier`` 0) there is no budget
    to share and 0 comes back.
    """
    z = _finite_at_least("noise_multiplier", noise_multiplier, 0.0)
    if count_stddev is None or z == 0.0:
        return z
    return float(adaptive_clip_noise(z, count_stddev))


def user_level_epsilon(*, noise_multiplier: float, versions: int, delta: float) -> float:
    """Epsilon spent by every contributor after ``versions`` DP-FedAvg versions.

    Each version is a Gaussian mechanism of ``noise_multiplier`` at sampling rate
    ``PARTICIPATION_SAMPLE_RATE`` (1.0: participation is public, see there); adaptive
    clipping's bits are inside that budget (``update_noise_multiplier``).
    """
    if versions == 0:
        return 0.0
    z = _finite_at_least("noise_multiplier", noise_multiplier, 0.0)
    if z == 0.0:
        return math.inf
    spend = Spend(z, PARTICIPATION_SAMPLE_RATE, _count("versions", versions))
    return float(epsilon_spent([spend], delta))


def noise_multiplier_for_versions(*, epsilon: float, delta: float, versions: int) -> float:
    """The smallest noise multiplier whose ``versions`` versions spend at most ``epsilon``
    (sampling rate ``PARTICIPATION_SAMPLE_RATE``)."""
    return float(
        noise_multiplier_for(
            epsilon=epsilon,
            delta=delta,
            sample_rate=PARTICIPATION_SAMPLE_RATE,
            steps=_count("versions", versions),
        )
    )


def _finite_at_least(name: str, value: float, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low:g}, got {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value
