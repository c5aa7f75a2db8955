"""DPFedAvg: clipping, uniform weights, the noise it adds, adaptive clipping and its state."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

import pytest
import torch
from strategy_helpers import constant_state, flat, random_state, update

from federated.privacy.accounting import adaptive_clip_noise
from federated.strategies import (
    DPFedAvg,
    FedAdam,
    FedAvg,
    Median,
    MultiKrum,
    NormBound,
    Strategy,
)
from federated.strategies.aggregate import clip_delta
from federated.tensors import ClientUpdate, StateDict, l2_norm


def big_model(value: float = 0.0) -> StateDict:
    """20,000 coordinates: enough for a tight estimate of the noise's standard deviation."""
    return {"w": torch.full((200, 100), value), "b": torch.full((10,), value)}


def scaled_to(norm: float, gen: torch.Generator) -> StateDict:
    """A random 4-coordinate delta of exactly ``norm``."""
    direction = torch.randn(4, generator=gen, dtype=torch.float64)
    return {"w": (direction * (norm / float(direction.norm()))).float()}


def test_without_noise_it_is_fedavg_on_the_uniform_mean_of_clipped_deltas() -> None:
    gen = torch.Generator().manual_seed(3)
    base = random_state(gen)
    deltas = [random_state(gen, scale=s) for s in (0.01, 0.5, 3.0, 40.0)]
    examples = [1, 7, 300, 5000]  # ignored: DP weighs every update alike
    staleness = [1.0, 1.0, 0.5, 1.0]
    updates = [
        update(d, n, staleness_factor=f)
        for d, n, f in zip(deltas, examples, staleness, strict=True)
    ]
    strategy = DPFedAvg(FedAvg(server_lr=0.7), clip_norm=1.0, noise_multiplier=0.0, seed=0)
    result = strategy.aggregate(base, updates)
    clipped = [clip_delta(d, 1.0) for d in deltas]
    total = sum(f * flat(c) for f, c in zip(staleness, clipped, strict=True))
    expected = flat(base) + 0.7 * total / sum(staleness)
    assert torch.allclose(flat(result), expected, atol=1e-6)
    assert strategy.clip_norm == 1.0  # fixed clipping never moves


def test_the_noise_has_the_documented_standard_deviation() -> None:
    n, bound, z = 10, 0.5, 2.0
    base = big_model()
    strategy = DPFedAvg(FedAvg(), clip_norm=bound, noise_multiplier=z, seed=1)
    result = strategy.aggregate(base, [ClientUpdate(big_model(), 1) for _ in range(n)])
    values = torch.cat([t.reshape(-1) for t in result.values()]).double()
    expected = z * bound / n
    assert float(values.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(values.mean())) < 4 * expected / math.sqrt(values.numel())


def test_adaptive_clipping_leaves_less_noise_for_the_deltas() -> None:
    n, bound, z, count_stddev = 20, 1.0, 1.5, 1.0
    strategy = DPFedAvg(
        FedAvg(),
        clip_norm=bound,
        noise_multiplier=z,
        clip_quantile=0.5,
        count_stddev=count_stddev,
        seed=2,
    )
    z_delta = adaptive_clip_noise(z, count_stddev)
    assert strategy.update_noise_multiplier == pytest.approx(z_delta)
    assert z_delta > z
    result = strategy.aggregate(big_model(), [ClientUpdate(big_model(), 1) for _ in range(n)])
    values = torch.cat([t.reshape(-1) for t in result.values()]).double()
    assert float(values.std()) == pytest.approx(z_delta * bound / n, rel=0.03)


def test_the_same_seed_gives_the_same_noise_and_no_seed_differs() -> None:
    def run(seed: int | None) -> torch.Tensor:
        strategy = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, seed=seed)
        return flat(strategy.aggregate(constant_state(0.0), [update(constant_state(0.0))]))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(None), run(None))


def test_clipping_bounds_what_one_huge_update_can_do() -> None:
    gen = torch.Generator().manual_seed(4)
    base = constant_state(0.0)
    honest = [random_state(gen, scale=0.05) for _ in range(9)]
    huge = constant_state(1e6)
    updates = [update(d) for d in honest] + [update(huge, 10**6)]
    private = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=0.0, seed=0)
    moved = flat(private.aggregate(base, updates))
    honest_sum = sum(flat(d) for d in honest)
    # the huge update adds at most the clip bound to the sum, and counts as one of ten
    assert float(torch.linalg.vector_norm(moved - honest_sum / 10)) <= 1.0 / 10 + 1e-5
    assert float(torch.linalg.vector_norm(flat(FedAvg().aggregate(base, updates)))) > 1e4


def adaptive(clip_norm: float = 1.0, quantile: float = 0.5, count_stddev: float = 0.1) -> DPFedAvg:
    return DPFedAvg(
        FedAvg(),
        clip_norm=clip_norm,
        noise_multiplier=0.0,
        clip_quantile=quantile,
        count_stddev=count_stddev,
        seed=7,
    )


def round_of(norms: Iterable[float], seed: int, within: bool | None = None) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    return [ClientUpdate(scaled_to(x, gen), 1, within_clip=within) for x in norms]


def test_adaptive_clipping_moves_the_bound_down_when_all_are_within_and_up_when_none_are() -> None:
    base = {"w": torch.zeros(4)}
    shrinking = adaptive()
    shrinking.aggregate(base, round_of([0.1] * 100, seed=0))
    # b = 1: C * exp(-0.2 * (1 - 0.5)), up to the count's noise of 0.1 / 100
    assert shrinking.clip_norm == pytest.approx(math.exp(-0.1), rel=1e-3)
    growing = adaptive()
    growing.aggregate(base, round_of([10.0] * 100, seed=1))
    assert growing.clip_norm == pytest.approx(math.exp(0.1), rel=1e-3)


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_adaptive_clipping_settles_near_the_target_quantile(quantile: float) -> None:
    base = {"w": torch.zeros(4)}
    strategy = adaptive(clip_norm=0.1, quantile=quantile, count_stddev=200 / 20)
    sampler = torch.Generator().manual_seed(11)
    bounds = []
    for r in range(150):
        norms = (1.0 + 2.0 * torch.rand(200, generator=sampler, dtype=torch.float64)).tolist()
        strategy.aggregate(base, round_of(norms, seed=r))
        bounds.append(strategy.clip_norm)
    target = 1.0 + 2.0 * quantile  # the quantile of uniform norms on [1, 3]
    settled = sum(bounds[-50:]) / 50
    assert settled == pytest.approx(target, rel=0.05)
    assert bounds[0] < 0.2  # it started far below


def test_a_lie_about_being_within_the_clip_is_ignored_beyond_the_slack() -> None:
    base = {"w": torch.zeros(4)}
    liars = adaptive()
    liars.aggregate(base, round_of([10.0] * 100, seed=0, within=True))
    assert liars.clip_norm > 1.0  # counted as not within: the bound grows
    slack = adaptive()
    slack.aggregate(base, round_of([1.04] * 100, seed=0, within=True))
    assert slack.clip_norm < 1.0  # 4% over: a lossy codec's doing, believed
    unreported = adaptive()
    unreported.aggregate(base, round_of([1.04] * 100, seed=0, within=None))
    assert unreported.clip_norm > 1.0  # nothing reported: decided by the norm


def test_state_round_trip_continues_the_adapted_bound_and_the_inner_state() -> None:
    gen = torch.Generator().manual_seed(8)
    base = constant_state(0.0)
    rounds = [[update(random_state(gen)) for _ in range(5)] for _ in range(4)]

    def make() -> DPFedAvg:
        return DPFedAvg(
            FedAdam(), clip_norm=0.3, noise_multiplier=0.0, clip_quantile=0.5, count_stddev=0.5
        )

    first = make()
    for updates in rounds[:3]:
        base = first.aggregate(base, updates)
    state = first.state_tensors()
    assert state["dp/clip_norm"].dtype == torch.float64
    assert {k.split("/")[1] for k in state if k.startswith("inner/")} >= {"m", "v", "step"}
    restarted = make()
    restarted.load_state_tensors(state)
    assert restarted.clip_norm == first.clip_norm != 0.3
    assert isinstance(restarted.inner, FedAdam) and restarted.inner.step == 3
    # no noise on the deltas: the next version is the same, whatever the count's noise
    assert torch.equal(
        flat(first.aggregate(base, rounds[3])), flat(restarted.aggregate(base, rounds[3]))
    )
    restarted.load_state_tensors({})
    assert restarted.clip_norm == 0.3 and restarted.inner.step == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"dp/clip_norm": torch.tensor(math.nan, dtype=torch.float64)},
        {"dp/clip_norm": torch.tensor(-1.0, dtype=torch.float64)},
        {"dp/clip_norm": torch.tensor(0.0, dtype=torch.float64)},
        {"dp/clip_norm": torch.tensor(math.inf, dtype=torch.float64)},
        {"dp/clip_norm": torch.tensor(2, dtype=torch.int64)},
        {"dp/clip_norm": torch.tensor([1.0, 2.0], dtype=torch.float64)},
        {"inner/step": torch.tensor(1)},
        {"dp/clip_norm": torch.tensor(1.0, dtype=torch.float64), "m/layer.bias": torch.ones(4)},
        {"dp/clip_norm": torch.tensor(1.0, dtype=torch.float64), "inner/nonsense": torch.ones(1)},
    ],
)
def test_a_bad_state_is_refused_and_the_current_one_kept(bad: dict[str, torch.Tensor]) -> None:
    strategy = adaptive(clip_norm=0.25)
    with pytest.raises(ValueError, match="state"):
        strategy.load_state_tensors(bad)
    assert strategy.clip_norm == 0.25


def test_fixed_clipping_keeps_its_configured_bound_over_a_saved_one() -> None:
    strategy = DPFedAvg(FedAvg(), clip_norm=0.5, noise_multiplier=1.0)
    strategy.load_state_tensors({"dp/clip_norm": torch.tensor(3.0, dtype=torch.float64)})
    assert strategy.clip_norm == 0.5


@pytest.mark.parametrize(
    "inner", [Median(), MultiKrum(num_byzantine=1), NormBound(Median(), max_norm=1.0)]
)
def test_a_strategy_that_picks_single_updates_is_refused(inner: Strategy) -> None:
    with pytest.raises(ValueError, match="streaming strategy"):
        DPFedAvg(inner, clip_norm=1.0, noise_multiplier=1.0)


def test_an_empty_round_is_refused_and_changes_nothing() -> None:
    strategy = adaptive()
    with pytest.raises(ValueError, match="no updates"):
        strategy.aggregate(constant_state(0.0), iter([]))
    assert strategy.clip_norm == 1.0


def test_a_staleness_factor_over_one_is_refused() -> None:
    strategy = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=0.0)
    with pytest.raises(ValueError, match="staleness factor"):
        strategy.aggregate(constant_state(0.0), [update(constant_state(1.0), staleness_factor=2.0)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_quantile": 0.5}, "needs count_stddev"),
        ({"count_stddev": 5.0}, "set clip_quantile"),
        ({"clip_quantile": 0.5, "count_stddev": 0.4}, "count_stddev"),  # 2 * 0.4 <= 1
        ({"clip_quantile": 1.0, "count_stddev": 5.0}, "clip_quantile"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"clip_lr": 0.0}, "clip_lr"),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs: dict[str, float], message: str) -> None:
    arguments: dict[str, float] = {"clip_norm": 1.0, "noise_multiplier": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        DPFedAvg(FedAvg(), **arguments)  # type: ignore[arg-type]


class _Picky(FedAvg):
    name: ClassVar[str] = "picky"

    def check_round_size(self, updates: int) -> None:
        if updates < 3:
            raise ValueError("picky needs 3 updates")


def test_it_wraps_the_inner_strategy() -> None:
    inner = FedAdam()
    strategy = DPFedAvg(
        inner, clip_norm=2.0, noise_multiplier=1.0, clip_quantile=0.5, count_stddev=5.0
    )
    assert strategy.streaming is True
    strategy.aggregate(constant_state(0.0), [update(constant_state(1.0)) for _ in range(3)])
    assert inner.step == 1  # one pseudo-gradient per round
    described = strategy.describe()
    assert described["name"] == "dp-fedavg" and described["mechanism"] == "gaussian"
    assert described["inner"] == inner.describe()
    assert described["noise_multiplier"] == 1.0 and described["clip_norm"] == 2.0
    assert described["clip_quantile"] == 0.5
    with pytest.raises(ValueError, match="3 updates"):
        DPFedAvg(_Picky(), clip_norm=1.0, noise_multiplier=1.0).check_round_size(2)
    assert l2_norm(constant_state(0.0)) == 0.0
