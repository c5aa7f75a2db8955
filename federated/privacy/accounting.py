"""The privacy accountant: how much of an (epsilon, delta) budget a series of noisy steps spent.

Every step this module accounts for is one Sampled Gaussian Mechanism: a sum of
contributions, each clipped to norm C, each contributor (a record for DP-SGD, a user for
user-level DP) taken independently with probability ``sample_rate`` (Poisson sampling), and
Gaussian noise of standard deviation ``noise_multiplier x C`` added. Their Rényi DP is
composed and converted to (epsilon, delta) by opacus' RDP accountant analysis
(``opacus.accountants.analysis.rdp``, from TF Privacy; the conversion of Balle et al. 2020,
Theorem 21) over opacus' default orders. No accountant maths is written here: this module
validates, merges and searches.

The orders are fixed (``RDPAccountant.DEFAULT_ALPHAS``) so that the coordinator and every
contributor compute the same epsilon from the same history. Opacus is imported on first use,
so the contributor's engine can show a budget without loading torch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_STEPS_LIMIT = 10_000_000
"""The most further steps ``steps_within_budget`` looks for: beyond it a budget is, in
practice, not binding."""

_SPEND_KEYS = ("noise_multiplier", "sample_rate", "steps")


@dataclass(frozen=True)
class Spend:
    """``steps`` steps of the Sampled Gaussian Mechanism at one setting.

    ``noise_multiplier`` is the noise's standard deviation over the clip norm (0 means no
    noise: an infinite epsilon); ``sample_rate`` is q, the Poisson probability that any one
    record (or user) is in a step (1.0: every one, every step). ValueError on a negative,
    NaN or infinite value, a rate above 1 or a step count that is not a whole number.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        _check_finite("noise_multiplier", self.noise_multiplier, low=0.0)
        _check_finite("sample_rate", self.sample_rate, low=0.0)
        if self.sample_rate > 1.0:
            raise ValueError(f"sample_rate {self.sample_rate} is above 1: q is a probability")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a whole number of at least 0, not {self.steps!r}")

    def to_json(self) -> dict[str, float | int]:
        return {
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": float(self.sample_rate),
            "steps": int(self.steps),
        }

    @classmethod
    def from_json(cls, data: Any) -> Spend:
        """The spend ``to_json`` wrote; ValueError naming the field when ``data`` is not one
        (a missing or unknown field, a wrong type, a value out of range)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a privacy spend is a JSON object, not {type(data).__name__}")
        missing = [key for key in _SPEND_KEYS if key not in data]
        if missing:
            raise ValueError(f"a privacy spend lacks {', '.join(missing)}")
        unknown = sorted(str(key) for key in data if key not in _SPEND_KEYS)
        if unknown:
            raise ValueError(f"a privacy spend has unknown fields: {', '.join(unknown)}")
        rates = {}
        for key in ("noise_multiplier", "sample_rate"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number, not {value!r}")
            rates[key] = float(value)
        steps = data["steps"]
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        return cls(rates["noise_multiplier"], rates["sample_rate"], steps)


def epsilon_spent(history: Sequence[Spend], delta: float) -> float:
    """The epsilon at ``delta`` of every spend in ``history`` composed (their order does not
    matter); 0.0 for an empty history, ``inf`` when a step without noise took anyone."""
    _check_delta(delta)
    merged = _merge(history)
    if not merged:
        return 0.0
    return _epsilon(_rdp_of(merged), delta)


def steps_within_budget(
    history: Sequence[Spend],
    *,
    noise_multiplier: float,
    sample_rate: float,
    epsilon: float,
    delta: float,
    limit: int = DEFAULT_STEPS_LIMIT,
) -> int:
    """The most further steps at (``noise_multiplier``, ``sample_rate``) that keep
    ``epsilon_spent`` of ``history`` and them within ``epsilon``: 0 if not even one fits,
    at most ``limit``."""
    _check_positive("noise_multiplier", noise_multiplier)
    _check_rate(sample_rate)
    _check_positive("epsilon", epsilon)
    _check_delta(delta)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a whole number of at least 0, not {limit!r}")
    merged = _merge(history)
    spent = _rdp_of(merged) if merged else np.zeros(len(_orders()))
    # RDP adds up over steps, so one step's curve scaled by k is k more steps of it.
    per_step = _rdp_of({(float(noise_multiplier), float(sample_rate)): 1})

    def fits(steps: int) -> bool:
        return _epsilon(spent + steps * per_step, delta) <= epsilon

    if not fits(0):
        return 0
    if fits(limit):
        return limit
    low, high = 0, limit  # fits(low) and not fits(high): epsilon grows with the steps
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def noise_multiplier_for(*, epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier at which ``steps`` steps at ``sample_rate`` spend at most
    ``epsilon`` (within opacus' search tolerance of 0.01 below it): opacus'
    ``get_noise_multiplier`` on the RDP accountant, the same orders ``epsilon_spent`` uses."""
    _check_positive("epsilon", epsilon)
    _check_delta(delta)
    _check_rate(sample_rate)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, not {steps!r}")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet_rdp():
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="rdp",
                )
            )
    except ValueError as exc:  # opacus: "The privacy budget is too low."
        raise ValueError(
            f"epsilon {epsilon} at delta {delta} cannot cover {steps} steps at sample_rate "
            f"{sample_rate} even with a noise multiplier of a million ({exc}); raise epsilon, "
            "or take fewer steps or a lower sample rate"
        ) from None


def adaptive_clip_noise(noise_multiplier: float, count_stddev: float) -> float:
    """The noise multiplier left for the update sum under adaptive clipping (Andrew et al.
    2021, "Differentially Private Learning with Adaptive Clipping", Theorem 1).

    Each round also releases the count of clients whose update was within the clip, with
    Gaussian noise of standard deviation ``count_stddev`` on a query of sensitivity 1/2 (a
    noise multiplier of ``2 x count_stddev``). Two Gaussian queries of multipliers z_delta and
    z_count cost what one of z costs when z**-2 = z_delta**-2 + z_count**-2, so::

        z_delta = (z**-2 - (2 * count_stddev)**-2) ** -0.5

    which the accountant then charges as ``noise_multiplier``. ValueError when
    ``2 x count_stddev <= noise_multiplier``: the count alone would cost the whole budget.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("count_stddev", count_stddev)
    count_multiplier = 2.0 * count_stddev
    if count_multiplier <= noise_multiplier:
        raise ValueError(
            f"count_stddev {count_stddev} is too small for noise_multiplier "
            f"{noise_multiplier}: the clipped-count query would cost the whole budget; raise "
            f"count_stddev above {noise_multiplier / 2} (Andrew et al. suggest the expected "
            "number of clients per round / 20) or lower the noise multiplier"
        )
    return float((noise_multiplier**-2 - count_multiplier**-2) ** -0.5)


# --- helpers -----------------------------------------------------------------------------------


def _merge(history: Sequence[Spend]) -> dict[tuple[float, float], int]:
    """Steps per (noise multiplier, sample rate): their RDP only depends on the sum. Spends
    that take nobody (no steps, or rate 0) cost nothing and are dropped."""
    merged: dict[tuple[float, float], int] = {}
    for spend in history:
        if not isinstance(spend, Spend):
            raise ValueError(f"a privacy history holds Spend entries, not {type(spend).__name__}")
        if spend.steps == 0 or spend.sample_rate == 0.0:
            continue
        key = (float(spend.noise_multiplier), float(spend.sample_rate))
        merged[key] = merged.get(key, 0) + spend.steps
    return merged


def _orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return [float(order) for order in RDPAccountant.DEFAULT_ALPHAS]


def _rdp_of(merged: Mapping[tuple[float, float], int]) -> np.ndarray:
    """The composed RDP curve, over ``_orders()``, of (non-empty) merged spends."""
    from opacus.accountants.analysis import rdp

    orders = _orders()
    curves = [
        np.asarray(rdp.compute_rdp(q=rate, noise_multiplier=sigma, steps=steps, orders=orders))
        for (sigma, rate), steps in merged.items()
    ]
    return np.sum(curves, axis=0)


def _epsilon(curve: np.ndarray, delta: float) -> float:
    from opacus.accountants.analysis import rdp

    with _quiet_rdp():
        epsilon, _order = rdp.get_privacy_spent(orders=_orders(), rdp=curve, delta=delta)
    return float(epsilon)


@contextlib.contextmanager
def _quiet_rdp() -> Iterator[None]:
    """Silence opacus' "Optimal order is the smallest/largest alpha" warning: the orders
    are fixed on purpose (every party must find the same epsilon), and at the range's edge
    the bound is still a valid upper bound, only a looser one. Nothing else is hidden.
    (``catch_warnings`` swaps process-wide state: two threads inside it at once may
    restore each other's filters, which costs at most a warning shown or hidden.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Optimal order is the (smallest|largest) alpha", category=UserWarning
        )
        yield


def _check_finite(name: str, value: float, *, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number of at least {low}, not {value}")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number above 0, not {value}")


def _check_rate(sample_rate: float) -> None:
    _check_positive("sample_rate", sample_rate)
    if sample_rate > 1.0:
        raise ValueError(f"sample_rate {sample_rate} is above 1: q is a probability")


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be a number strictly between 0 and 1, not {delta!r}")


__all__ = [
    "DEFAULT_STEPS_LIMIT",
    "Spend",
    "adaptive_clip_noise",
    "epsilon_spent",
    "noise_multiplier_for",
    "steps_within_budget",
]
