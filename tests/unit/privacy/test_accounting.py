"""The privacy accountant against published and independently computed values."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from federated.privacy.accounting import (
    Spend,
    adaptive_clip_noise,
    epsilon_spent,
    noise_multiplier_for,
    steps_within_budget,
)

# --- reference values ------------------------------------------------------------------------


def test_matches_opacus_published_rdp_value() -> None:
    # opacus/tests/accountants_test.py, test_rdp_accountant: sigma 1.5, q 0.04, 90 epochs
    # (2250 steps), delta 1e-5 -> epsilon 7.32911117143.
    assert epsilon_spent([Spend(1.5, 0.04, 2250)], 1e-5) == pytest.approx(7.32911117143, abs=1e-8)


def test_tf_privacy_mnist_example_within_independent_bounds() -> None:
    # TF Privacy's compute_dp_sgd_privacy documents N=60000, batch 256, sigma 1.12, 60 epochs,
    # delta 1e-5 as (2.92, 1e-5)-DP with the classic RDP conversion (Mironov 2017); opacus'
    # conversion (Balle et al. 2020) is never looser. The PRV accountant (Gopi et al. 2021, a
    # numerical, near-exact method implemented apart from the RDP code) bounds it below.
    from opacus.accountants import PRVAccountant

    q, steps = 256 / 60000, math.ceil(60 * 60000 / 256)
    ours = epsilon_spent([Spend(1.12, q, steps)], 1e-5)
    prv = PRVAccountant()
    prv.history = [(1.12, q, steps)]
    assert prv.get_epsilon(delta=1e-5) <= ours <= 2.92
    assert ours > 2.3


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The exact epsilon of one Gaussian mechanism of sensitivity 1 and noise ``sigma``
    (Balle & Wang 2018, Theorem 8), by bisection on its delta(epsilon)."""

    def delta_at(eps: float) -> float:
        return _phi(0.5 / sigma - eps * sigma) - math.exp(eps) * _phi(-0.5 / sigma - eps * sigma)

    low, high = 0.0, 200.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
    return high


@pytest.mark.parametrize(
    ("z", "steps", "delta"),
    [(1.0, 1, 1e-5), (2.0, 10, 1e-5), (5.0, 100, 1e-6), (0.8, 1, 1e-3), (10.0, 1000, 1e-5)],
)
def test_full_batch_gaussian_is_bounded_by_its_exact_epsilon(
    z: float, steps: int, delta: float
) -> None:
    # With q = 1, T steps of multiplier z are one Gaussian of multiplier z / sqrt(T), whose
    # exact epsilon is known: RDP must not beat it, and is within 15% of it here.
    exact = _exact_gaussian_epsilon(z / math.sqrt(steps), delta)
    ours = epsilon_spent([Spend(z, 1.0, steps)], delta)
    assert exact <= ours <= 1.15 * exact


def test_noise_multiplier_matches_opacus_published_value() -> None:
    # opacus/tests/accountants_test.py, test_get_noise_multiplier_rdp_steps.
    z = noise_multiplier_for(epsilon=8.0, delta=1e-5, sample_rate=0.04, steps=2000)
    assert z == pytest.approx(1.3562, abs=1e-4)
    assert 8.0 - 0.01 <= epsilon_spent([Spend(z, 0.04, 2000)], 1e-5) <= 8.0


# --- composition and monotonicity --------------------------------------------------------------


def test_empty_and_free_histories_cost_nothing() -> None:
    assert epsilon_spent([], 1e-5) == 0.0
    assert epsilon_spent([Spend(1.0, 0.1, 0), Spend(1.0, 0.0, 500)], 1e-5) == 0.0


def test_no_noise_is_infinite_epsilon() -> None:
    assert epsilon_spent([Spend(0.0, 0.1, 1)], 1e-5) == math.inf


def test_equal_settings_merge_and_order_does_not_matter() -> None:
    whole = epsilon_spent([Spend(1.1, 0.01, 300)], 1e-5)
    parts = [Spend(1.1, 0.01, 100), Spend(2.0, 0.05, 40), Spend(1.1, 0.01, 200)]
    mixed = epsilon_spent(parts, 1e-5)
    assert epsilon_spent([Spend(1.1, 0.01, 100), Spend(1.1, 0.01, 200)], 1e-5) == whole
    assert epsilon_spent(list(reversed(parts)), 1e-5) == pytest.approx(mixed, rel=1e-12)
    assert mixed > whole
    assert mixed > epsilon_spent([Spend(2.0, 0.05, 40)], 1e-5)


def test_epsilon_grows_with_steps_rate_and_smaller_delta_and_falls_with_noise() -> None:
    def eps(z: float = 1.0, q: float = 0.02, steps: int = 500, delta: float = 1e-5) -> float:
        return epsilon_spent([Spend(z, q, steps)], delta)

    series = [
        [eps(steps=s) for s in (1, 10, 100, 1000, 10000)],
        [eps(q=q) for q in (0.001, 0.01, 0.1, 0.5, 1.0)],
        [eps(delta=d) for d in (1e-2, 1e-4, 1e-6, 1e-8)],
        [eps(z=z) for z in (8.0, 4.0, 2.0, 1.0, 0.6)],
    ]
    for values in series:
        assert all(a < b for a, b in itertools.pairwise(values)), values


# --- steps within a budget -----------------------------------------------------------------------


def test_steps_within_budget_is_the_last_step_that_fits() -> None:
    history = [Spend(1.0, 0.02, 300), Spend(1.5, 0.05, 50)]
    k = steps_within_budget(
        history, noise_multiplier=1.2, sample_rate=0.03, epsilon=3.0, delta=1e-5
    )
    assert k > 0
    assert epsilon_spent([*history, Spend(1.2, 0.03, k)], 1e-5) <= 3.0
    assert epsilon_spent([*history, Spend(1.2, 0.03, k + 1)], 1e-5) > 3.0


def test_steps_within_budget_edges() -> None:
    spent = [Spend(1.0, 0.1, 1000)]
    over = epsilon_spent(spent, 1e-5)
    kwargs: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.1, "delta": 1e-5}
    assert steps_within_budget(spent, epsilon=over / 2, **kwargs) == 0  # already over
    assert steps_within_budget(spent, epsilon=over, **kwargs) == 0  # exactly spent
    assert steps_within_budget([], epsilon=1.0, limit=0, **kwargs) == 0
    # Not binding within the limit: the limit comes back.
    huge: dict[str, Any] = {"noise_multiplier": 500.0, "sample_rate": 0.001, "delta": 1e-5}
    assert steps_within_budget([], epsilon=10.0, limit=1000, **huge) == 1000
    assert steps_within_budget([], epsilon=10.0, **huge) == 10_000_000
    # Agrees with the noise the budget asks for.
    z = noise_multiplier_for(epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=400)
    assert (
        steps_within_budget([], noise_multiplier=z, sample_rate=0.05, epsilon=2.0, delta=1e-5)
        >= 400
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("noise_multiplier", 0.0),
        ("noise_multiplier", -1.0),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("epsilon", 0.0),
        ("epsilon", math.nan),
        ("delta", 0.0),
        ("delta", 1.0),
        ("limit", -1),
    ],
)
def test_steps_within_budget_names_a_bad_argument(name: str, value: float) -> None:
    kwargs: dict[str, Any] = {
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "epsilon": 1.0,
        "delta": 1e-5,
        name: value,
    }
    with pytest.raises(ValueError, match=name):
        steps_within_budget([], **kwargs)


@pytest.mark.parametrize(
    ("name", "value"),
    [("epsilon", -1.0), ("delta", 2.0), ("sample_rate", 0.0), ("steps", 0), ("steps", 1.5)],
)
def test_noise_multiplier_for_names_a_bad_argument(name: str, value: float) -> None:
    kwargs: dict[str, Any] = {"epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10}
    with pytest.raises(ValueError, match=name):
        noise_multiplier_for(**{**kwargs, name: value})


def test_noise_multiplier_for_an_impossible_budget_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="raise epsilon"):
        noise_multiplier_for(epsilon=1e-9, delta=1e-12, sample_rate=1.0, steps=1_000_000)


def test_epsilon_spent_refuses_a_bad_delta_or_entry() -> None:
    for delta in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="delta"):
            epsilon_spent([Spend(1.0, 0.1, 1)], delta)
    with pytest.raises(ValueError, match="Spend"):
        epsilon_spent([(1.0, 0.1, 1)], 1e-5)  # type: ignore[list-item]


# --- adaptive clipping ---------------------------------------------------------------------------


def test_adaptive_clip_noise_formula() -> None:
    # z = 1, count std 1: (1 - 1/4) ** -0.5 = 2 / sqrt(3).
    assert adaptive_clip_noise(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    # Andrew et al.'s example scale: z = 1.0 with sigma_b = expected clients / 20 = 5.
    assert adaptive_clip_noise(1.0, 5.0) == pytest.approx((1 - 1 / 100) ** -0.5, rel=1e-12)
    assert adaptive_clip_noise(2.0, 1e9) == pytest.approx(2.0, rel=1e-9)


def test_adaptive_clip_noise_costs_what_one_gaussian_costs() -> None:
    # Without subsampling, Gaussian RDP is alpha / (2 z**2): the update sum at z_delta and
    # the count at 2 x count_stddev compose to exactly one Gaussian at z.
    z, count_stddev, steps = 1.3, 2.0, 50
    z_delta = adaptive_clip_noise(z, count_stddev)
    both = [Spend(z_delta, 1.0, steps), Spend(2 * count_stddev, 1.0, steps)]
    assert epsilon_spent(both, 1e-5) == pytest.approx(
        epsilon_spent([Spend(z, 1.0, steps)], 1e-5), rel=1e-9
    )


def test_adaptive_clip_noise_refuses_a_count_that_costs_everything() -> None:
    with pytest.raises(ValueError, match="raise count_stddev above 1.0"):
        adaptive_clip_noise(2.0, 1.0)  # 2 x 1.0 == z: the count alone costs the budget
    with pytest.raises(ValueError, match="count_stddev"):
        adaptive_clip_noise(2.0, 0.5)
    with pytest.raises(ValueError, match="count_stddev"):
        adaptive_clip_noise(1.0, 0.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        adaptive_clip_noise(-1.0, 1.0)


# --- Spend on the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spend", [Spend(1.1, 0.01, 300), Spend(0.0, 1.0, 0), Spend(123.456789, 1 / 3, 10**7)]
)
def test_spend_json_round_trip(spend: Spend) -> None:
    data = json.loads(json.dumps(spend.to_json()))
    assert data == {
        "noise_multiplier": spend.noise_multiplier,
        "sample_rate": spend.sample_rate,
        "steps": spend.steps,
    }
    assert Spend.from_json(data) == spend


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"noise_multiplier": 1.0, "sample_rate": 0.1}, "steps"),
        ({"sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": -1.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": math.nan, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": math.inf, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": -0.1, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.1, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": math.nan, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1.5}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": "3"}, "steps"),
        ({"noise_multiplier": True, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": "1", "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "mu": 2}, "unknown"),
        ([1.0, 0.1, 1], "JSON object"),
    ],
)
def test_spend_from_json_refuses_bad_input(data: Any, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Spend.from_json(data)


def test_the_accountant_loads_without_torch() -> None:
    # The contributor's engine never loads torch; it may still show a budget.
    code = (
        "import sys; from federated.privacy import Spend, epsilon_spent; "
        "assert 'torch' not in sys.modules, 'torch loaded on import'; "
        "import federated.privacy as p; assert callable(p.train_dp_sgd)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
