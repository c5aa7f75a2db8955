"""Server-side aggregation strategies: the maths, the robustness claims, the contract."""

from __future__ import annotations

import gc
import json
import math
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from federated.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedOpt,
    FedProx,
    FedYogi,
    Median,
    MultiKrum,
    NormBound,
    Strategy,
    TrimmedMean,
    build_strategy,
    staleness_factor,
)
from federated.strategies.aggregate import (
    clip_delta,
    coordinate_median,
    multi_krum_select,
    pairwise_squared_distances,
)
from federated.tensors import ClientUpdate, StateDict, l2_norm

SHAPES = {"layer.weight": (3, 4), "layer.bias": (4,)}
FAST = settings(max_examples=40, deadline=None)


def random_state(gen: torch.Generator, scale: float = 1.0) -> StateDict:
    return {name: torch.randn(shape, generator=gen) * scale for name, shape in SHAPES.items()}


def constant_state(value: float) -> StateDict:
    return {name: torch.full(shape, float(value)) for name, shape in SHAPES.items()}


def update(delta: StateDict, examples: int = 10, **kwargs: object) -> ClientUpdate:
    return ClientUpdate(delta=delta, num_examples=examples, **kwargs)  # type: ignore[arg-type]


def flat(state: StateDict) -> torch.Tensor:
    return torch.cat([state[name].reshape(-1) for name in SHAPES])


def mean_state(states: list[StateDict]) -> StateDict:
    return {name: torch.stack([s[name] for s in states]).mean(dim=0) for name in SHAPES}


def minus(a: StateDict, b: StateDict) -> StateDict:
    return {name: a[name] - b[name] for name in a}


seeds = st.integers(min_value=0, max_value=2**31 - 1)


# --- FedAvg / FedProx -------------------------------------------------------------------


@FAST
@given(seed=seeds, count=st.integers(1, 8), examples=st.lists(st.integers(1, 10_000), min_size=8))
def test_fedavg_of_identical_updates_is_that_update(
    seed: int, count: int, examples: list[int]
) -> None:
    gen = torch.Generator().manual_seed(seed)
    base, delta = random_state(gen), random_state(gen)
    result = FedAvg().aggregate(base, [update(delta, examples[i]) for i in range(count)])
    for name in SHAPES:
        torch.testing.assert_close(result[name], base[name] + delta[name])


def test_fedavg_respects_weights_and_server_lr() -> None:
    base = constant_state(1.0)
    updates = [update(constant_state(1.0), 1), update(constant_state(4.0), 3)]
    # (1 * 1 + 3 * 4) / 4 = 3.25, times server_lr 0.5, plus base 1.
    result = FedAvg(server_lr=0.5).aggregate(base, updates)
    for name in SHAPES:
        assert torch.allclose(result[name], torch.full(SHAPES[name], 1.0 + 0.5 * 3.25))


def test_fedavg_example_cap_stops_an_inflated_count_from_dominating() -> None:
    base = constant_state(0.0)
    honest = update(constant_state(1.0), 100, max_examples=100)
    inflated = update(constant_state(-1.0), 10**9, max_examples=100)
    result = FedAvg().aggregate(base, [honest, inflated])
    for name in SHAPES:
        assert torch.allclose(result[name], torch.zeros(SHAPES[name]), atol=1e-6)
    uncapped = update(constant_state(-1.0), 10**9)
    assert FedAvg().aggregate(base, [honest, uncapped])["layer.bias"][0] < -0.99


def test_fedavg_weights_by_staleness_factor() -> None:
    base = constant_state(0.0)
    fresh = update(constant_state(1.0), 10, staleness_factor=staleness_factor(0))
    stale = update(constant_state(0.0), 10, staleness_factor=staleness_factor(3))  # 1/2
    result = FedAvg().aggregate(base, [fresh, stale])
    assert torch.allclose(result["layer.bias"], torch.full((4,), 1.0 / 1.5))


@FAST
@given(seed=seeds, count=st.integers(1, 12))
def test_fedavg_matches_a_float64_reference(seed: int, count: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = random_state(gen)
    deltas = [random_state(gen, scale=10.0) for _ in range(count)]
    examples = torch.randint(1, 1000, (count,), generator=gen).tolist()
    result = FedProx(mu=0.1, server_lr=0.7).aggregate(
        base, [update(d, n) for d, n in zip(deltas, examples, strict=True)]
    )
    total = sum(examples)
    for name in SHAPES:
        expected = (
            base[name].double()
            + 0.7 * sum(d[name].double() * n for d, n in zip(deltas, examples, strict=True)) / total
        )
        torch.testing.assert_close(result[name].double(), expected, rtol=1e-5, atol=1e-5)
        assert result[name].dtype == torch.float32


def test_fedavg_skips_zero_weight_updates_and_rejects_all_zero() -> None:
    base = constant_state(0.0)
    result = FedAvg().aggregate(
        base, [update(constant_state(2.0), 5), update(constant_state(9.0), 0)]
    )
    assert torch.allclose(result["layer.bias"], torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="weight 0"):
        FedAvg().aggregate(base, [update(constant_state(1.0), 0), update(constant_state(1.0), 0)])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_rejects_no_updates(name: str) -> None:
    with pytest.raises(ValueError, match="no updates"):
        build_strategy(name).aggregate(constant_state(0.0), iter([]))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_rejects_a_delta_that_does_not_match_the_model(name: str) -> None:
    base = constant_state(0.0)
    good = [update(constant_state(1.0)) for _ in range(5)]
    wrong_shape = {**constant_state(1.0), "layer.bias": torch.ones(5)}
    with pytest.raises(ValueError, match=r"layer\.bias"):
        build_strategy(name).aggregate(base, [*good, update(wrong_shape, client_id="c7")])
    missing = {"layer.weight": torch.ones(3, 4)}
    with pytest.raises(ValueError, match="missing tensors"):
        build_strategy(name).aggregate(base, [*good, update(missing)])


def test_fedavg_streams_without_holding_earlier_updates() -> None:
    """Each update must be collectable once the next one is requested."""
    base = constant_state(0.0)
    alive_when_next_requested: list[bool] = []
    previous: list[weakref.ref[torch.Tensor]] = []

    def stream() -> Iterator[ClientUpdate]:
        for i in range(6):
            gc.collect()
            if previous:
                alive_when_next_requested.append(previous[-1]() is not None)
            delta = constant_state(float(i))
            previous.append(weakref.ref(delta["layer.weight"]))
            yield update(delta)
            del delta

    for strategy in (FedAvg(), FedAdam(), NormBound(FedAvg(), max_norm=1.0)):
        alive_when_next_requested.clear()
        previous.clear()
        strategy.aggregate(base, stream())
        assert alive_when_next_requested == [False] * 5, type(strategy).__name__


def test_fedavg_does_not_modify_base_or_deltas() -> None:
    base = constant_state(1.0)
    delta = constant_state(2.0)
    FedAvg().aggregate(base, [update(delta)])
    assert torch.equal(base["layer.bias"], torch.ones(4))
    assert torch.equal(delta["layer.bias"], torch.full((4,), 2.0))


# --- Median and trimmed mean ------------------------------------------------------------


def honest_and_outliers(
    seed: int, honest_count: int, outlier_count: int, magnitude: float
) -> tuple[list[StateDict], list[StateDict]]:
    gen = torch.Generator().manual_seed(seed)
    honest = [random_state(gen) for _ in range(honest_count)]
    outliers = []
    for _ in range(outlier_count):
        signs = {n: torch.randint(0, 2, s, generator=gen) * 2.0 - 1 for n, s in SHAPES.items()}
        outliers.append({n: signs[n] * magnitude for n in SHAPES})
    return honest, outliers


def assert_within_honest_range(result: StateDict, base: StateDict, honest: list[StateDict]) -> None:
    stacked = torch.stack([flat(d) for d in honest])
    moved = flat(minus(result, base))
    low, high = stacked.min(dim=0).values, stacked.max(dim=0).values
    assert bool(torch.all(moved >= low - 1e-4)), "pulled below every honest value"
    assert bool(torch.all(moved <= high + 1e-4)), "pulled above every honest value"


@FAST
@given(
    seed=seeds,
    total=st.integers(1, 15),
    outlier_share=st.floats(0, 1),
    magnitude=st.sampled_from([1e3, 1e8, 1e30]),
)
def test_median_ignores_fewer_than_half_outliers(
    seed: int, total: int, outlier_share: float, magnitude: float
) -> None:
    outlier_count = min(math.floor(outlier_share * total), (total - 1) // 2)  # k < n / 2
    honest, outliers = honest_and_outliers(seed, total - outlier_count, outlier_count, magnitude)
    base = random_state(torch.Generator().manual_seed(seed + 1))
    result = Median().aggregate(base, [update(d) for d in outliers + honest])
    assert_within_honest_range(result, base, honest)


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


def test_median_and_trimmed_mean_hand_examples() -> None:
    base = constant_state(0.0)
    values = [1.0, 2.0, 3.0, 100.0]
    updates = [update(constant_state(v)) for v in values]
    assert Median().aggregate(base, updates)["layer.bias"][0] == pytest.approx(2.5)
    assert TrimmedMean(beta=0.25).aggregate(base, updates)["layer.bias"][0] == pytest.approx(2.5)
    assert TrimmedMean(beta=0.0).aggregate(base, updates)["layer.bias"][0] == pytest.approx(26.5)
    odd = [update(constant_state(v)) for v in [5.0, -1.0, 3.0]]
    assert Median().aggregate(base, odd)["layer.bias"][0] == pytest.approx(3.0)


def test_median_matches_numpy_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import federated.strategies.aggregate as aggregate

    monkeypatch.setattr(aggregate, "ROBUST_CHUNK_ELEMENTS", 5)  # split every tensor in blocks
    gen = torch.Generator().manual_seed(3)
    deltas = [random_state(gen) for _ in range(6)]
    result = coordinate_median(constant_state(0.0), deltas)
    for name in SHAPES:
        expected = np.median(np.stack([d[name].numpy() for d in deltas]), axis=0)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-6)


# --- Multi-Krum --------------------------------------------------------------------------


@FAST
@given(
    seed=seeds,
    num_byzantine=st.integers(0, 4),
    extra_honest=st.integers(0, 4),
    scale=st.floats(2.0, 100.0),
)
def test_multi_krum_excludes_scaled_sign_flip_attackers(
    seed: int, num_byzantine: int, extra_honest: int, scale: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    honest_count = num_byzantine + 3 + extra_honest  # n = honest + f >= 2f + 3
    direction = random_state(gen)
    honest = [
        {n: direction[n] + 0.1 * torch.randn(SHAPES[n], generator=gen) for n in SHAPES}
        for _ in range(honest_count)
    ]
    honest_mean = mean_state(honest)
    attackers = [{n: -scale * honest_mean[n] for n in SHAPES} for _ in range(num_byzantine)]
    deltas = attackers + honest  # attackers first, so index order cannot hide them
    selected = multi_krum_select(deltas, num_byzantine=num_byzantine, num_selected=honest_count)
    assert sorted(selected) == list(range(num_byzantine, len(deltas)))

    strategy = MultiKrum(num_byzantine=num_byzantine)
    base = constant_state(0.0)
    result = strategy.aggregate(base, [update(d) for d in deltas])
    assert set(strategy.last_selected).isdisjoint(range(num_byzantine))
    assert float(torch.dot(flat(result), flat(honest_mean))) > 0


def test_multi_krum_needs_2f_plus_3_updates() -> None:
    base = constant_state(0.0)
    with pytest.raises(ValueError, match="at least 7 updates"):
        MultiKrum(num_byzantine=2).aggregate(base, [update(constant_state(1.0))] * 6)
    with pytest.raises(ValueError, match="num_selected"):
        MultiKrum(num_byzantine=0, num_selected=4).aggregate(
            base, [update(constant_state(1.0))] * 3
        )


def test_pairwise_distances_are_exact_for_large_offsets() -> None:
    offset = {n: torch.full(s, 1e3) for n, s in SHAPES.items()}
    a = {n: offset[n] + 0.5 for n in SHAPES}
    distances = pairwise_squared_distances([offset, a])
    assert float(distances[0, 1]) == pytest.approx(16 * 0.25, rel=1e-9)


# --- NormBound ---------------------------------------------------------------------------


@FAST
@given(seed=seeds, scale=st.floats(0.01, 1000.0), bound=st.floats(0.1, 100.0))
def test_clip_delta_bounds_the_norm_and_keeps_the_direction(
    seed: int, scale: float, bound: float
) -> None:
    delta = random_state(torch.Generator().manual_seed(seed), scale=scale)
    clipped = clip_delta(delta, bound)
    norm = l2_norm(delta)
    assert l2_norm(clipped) == pytest.approx(min(norm, bound), rel=1e-5)
    if norm <= bound:
        assert clipped is delta
    else:
        cosine = float(torch.dot(flat(clipped), flat(delta))) / (l2_norm(clipped) * norm)
        assert cosine == pytest.approx(1.0, abs=1e-5)


def test_norm_bound_clips_before_the_inner_strategy() -> None:
    base = constant_state(0.0)
    big = constant_state(10.0)  # norm 10 * sqrt(16) = 40
    small = constant_state(0.01)  # norm 0.04, under the bound
    wrapped = NormBound(FedAvg(), max_norm=1.0)
    result = wrapped.aggregate(base, [update(big, 1), update(small, 1)])
    expected = (10.0 / 40.0 + 0.01) / 2
    assert torch.allclose(result["layer.bias"], torch.full((4,), expected))
    unwrapped = FedAvg().aggregate(base, [update(big, 1), update(small, 1)])
    assert unwrapped["layer.bias"][0] > 5.0


def test_norm_bound_is_a_wrapper() -> None:
    assert NormBound(FedAvg(), max_norm=1.0).streaming is True
    assert NormBound(Median(), max_norm=1.0).streaming is False
    inner = FedAdam()
    wrapped = NormBound(inner, max_norm=2.0)
    wrapped.aggregate(constant_state(0.0), [update(constant_state(1.0))])
    assert inner.step == 1
    assert wrapped.state_tensors().keys() == inner.state_tensors().keys()
    assert wrapped.describe() == {**inner.describe(), "norm_bound": 2.0}


# --- FedOpt family -----------------------------------------------------------------------


def reference_fedopt(
    kind: str, rounds: list[np.ndarray], eta: float, b1: float, b2: float, tau: float
) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, in float64 numpy, starting from x = 0."""
    x = np.zeros_like(rounds[0])
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    for d in rounds:
        m = b1 * m + (1 - b1) * d
        if kind == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        elif kind == "fedyogi":
            v = v - (1 - b2) * d * d * np.sign(v - d * d)
        else:
            v = v + d * d
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_matches_the_paper_over_three_rounds(cls: type[FedOpt]) -> None:
    gen = torch.Generator().manual_seed(11)
    params = {"eta": 0.05, "beta1": 0.8, "tau": 1e-2}
    if cls is not FedAdagrad:
        params["beta2"] = 0.95
    strategy = cls(**params)
    model = constant_state(0.0)
    means = []
    for _ in range(3):
        deltas = [random_state(gen) for _ in range(3)]
        means.append(flat(mean_state(deltas)).numpy().astype(np.float64))
        model = strategy.aggregate(model, [update(d) for d in deltas])
    expected = reference_fedopt(cls.name, means, 0.05, 0.8, params.get("beta2", 0.0), 1e-2)
    np.testing.assert_allclose(flat(model).numpy(), expected, rtol=1e-4, atol=1e-6)


@FAST
@given(seed=seeds, count=st.integers(1, 5))
def test_fedadam_moves_in_the_direction_of_the_mean_delta(seed: int, count: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = random_state(gen)
    deltas = [random_state(gen) for _ in range(count)]
    mean = mean_state(deltas)
    for strategy in (FedAdam(), FedYogi(), FedAdagrad()):
        moved = flat(minus(strategy.aggregate(base, [update(d) for d in deltas]), base))
        direction = flat(mean)
        significant = direction.abs() > 1e-3
        assert torch.equal(torch.sign(moved[significant]), torch.sign(direction[significant]))
        assert float(torch.dot(moved, direction)) > 0


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_state_round_trip_continues_identically(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    base = random_state(gen)
    round1 = [random_state(gen) for _ in range(3)]
    round2 = [random_state(gen) for _ in range(3)]

    continuous = build_strategy(name)
    after1 = continuous.aggregate(base, [update(d) for d in round1])
    after2 = continuous.aggregate(after1, [update(d) for d in round2])

    first = build_strategy(name)
    restarted_after1 = first.aggregate(base, [update(d) for d in round1])
    saved = save(first.state_tensors())  # what the coordinator writes to disk
    restarted = build_strategy(name)
    restarted.load_state_tensors(load(saved))
    restarted_after2 = restarted.aggregate(restarted_after1, [update(d) for d in round2])

    for n in SHAPES:
        assert torch.equal(after2[n], restarted_after2[n])
    assert torch.equal(restarted.state_tensors()["step"], torch.tensor(2))


def test_fedopt_state_is_unchanged_by_a_failed_round() -> None:
    strategy = FedAdam()
    base = constant_state(0.0)
    strategy.aggregate(base, [update(constant_state(1.0))])
    before = {k: t.clone() for k, t in strategy.state_tensors().items()}
    bad = {"layer.weight": torch.ones(3, 4), "layer.bias": torch.ones(9)}
    with pytest.raises(ValueError):
        strategy.aggregate(base, [update(constant_state(1.0)), update(bad)])
    after = strategy.state_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fedopt_rejects_foreign_state() -> None:
    strategy = FedAdam()
    with pytest.raises(ValueError, match="unknown tensors"):
        strategy.load_state_tensors({"step": torch.tensor(1), "weights": torch.zeros(2)})
    with pytest.raises(ValueError, match="missing 'step'"):
        strategy.load_state_tensors({"m/a": torch.zeros(2), "v/a": torch.zeros(2)})
    strategy.load_state_tensors(
        {"m/a": torch.zeros(2), "v/a": torch.zeros(2), "step": torch.tensor(1)}
    )
    with pytest.raises(ValueError, match="state does not match the model"):
        strategy.aggregate(constant_state(0.0), [update(constant_state(1.0))])
    with pytest.raises(ValueError, match="has no state"):
        FedAvg().load_state_tensors({"step": torch.tensor(1)})


# --- Construction, registry, describe ---------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrimmedMean(beta=0.5), r"beta must be in \[0, 0.5\)"),
        (lambda: TrimmedMean(beta=-0.1), "beta"),
        (lambda: FedAvg(server_lr=0.0), "server_lr"),
        (lambda: FedAvg(server_lr=math.nan), "server_lr must be finite"),
        (lambda: FedProx(mu=-1.0), "mu"),
        (lambda: FedAdam(beta1=1.0), "beta1"),
        (lambda: FedAdam(beta2=-0.1), "beta2"),
        (lambda: FedYogi(tau=0.0), "tau"),
        (lambda: FedAdagrad(eta=math.inf), "eta"),
        (lambda: FedAdam(eta="0.1"), "eta must be a number"),  # type: ignore[arg-type]
        (lambda: MultiKrum(num_byzantine=-1), "num_byzantine"),
        (lambda: MultiKrum(num_selected=0), "num_selected"),
        (lambda: MultiKrum(num_byzantine=1.5), "integer"),  # type: ignore[arg-type]
        (lambda: NormBound(FedAvg(), max_norm=0.0), "norm_bound"),
        (lambda: NormBound(FedAvg(), max_norm=math.inf), "norm_bound"),
    ],
)
def test_constructors_reject_bad_arguments_at_once(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_constructors_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        TrimmedMean(0.2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        FedAdam(0.1)  # type: ignore[call-arg]


def test_registry_names() -> None:
    assert sorted(STRATEGIES) == sorted(
        [
            "fedavg",
            "fedprox",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "median",
            "trimmed-mean",
            "multi-krum",
        ]
    )
    for name, cls in STRATEGIES.items():
        assert cls.name == name and issubclass(cls, Strategy)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_describe_is_json_and_rebuilds_the_same_strategy(name: str) -> None:
    for params in ({}, {"norm_bound": 3.0}):
        strategy = build_strategy(name, params)
        description = json.loads(json.dumps(strategy.describe()))
        assert description["name"] == name
        rest = {k: v for k, v in description.items() if k != "name"}
        rebuilt = build_strategy(name, rest)
        assert rebuilt.describe() == description
        assert isinstance(rebuilt, NormBound) == ("norm_bound" in params)


def test_build_strategy_passes_params() -> None:
    strategy = build_strategy("trimmed-mean", {"beta": 0.2})
    assert isinstance(strategy, TrimmedMean) and strategy.beta == 0.2
    prox = build_strategy("fedprox", {"mu": 0.5})
    assert isinstance(prox, FedProx) and prox.describe()["mu"] == 0.5
    assert prox.client_hparams() == {"prox_mu": 0.5}
    wrapped = build_strategy("fedadam", {"eta": 0.1, "norm_bound": 5.0})
    assert isinstance(wrapped, NormBound) and isinstance(wrapped.inner, FedAdam)
    assert wrapped.inner.eta == 0.1


def test_build_strategy_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; choose one of fedavg"):
        build_strategy("fedsgd")
    with pytest.raises(ValueError, match="unknown parameter 'learning_rate' for strategy 'fedavg'"):
        build_strategy("fedavg", {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="beta2"):  # FedAdagrad has no beta2
        build_strategy("fedadagrad", {"beta2": 0.9})
    with pytest.raises(ValueError, match="strategy 'trimmed-mean': beta must be in"):
        build_strategy("trimmed-mean", {"beta": 0.7})
    with pytest.raises(ValueError, match="strategy 'median': norm_bound must be in"):
        build_strategy("median", {"norm_bound": -1.0})


# --- staleness ---------------------------------------------------------------------------


def test_staleness_factor() -> None:
    assert staleness_factor(0) == 1.0
    assert staleness_factor(3) == pytest.approx(0.5)
    assert staleness_factor(7, exponent=1.0) == pytest.approx(1 / 8)
    assert staleness_factor(5, exponent=0.0) == 1.0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="staleness"):
            staleness_factor(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exponent"):
        staleness_factor(1, exponent=-0.5)


@FAST
@given(staleness=st.integers(0, 10_000), exponent=st.floats(0, 4))
def test_staleness_factor_is_in_unit_interval_and_non_increasing(
    staleness: int, exponent: float
) -> None:
    factor = staleness_factor(staleness, exponent=exponent)
    assert 0 < factor <= 1
    assert staleness_factor(staleness + 1, exponent=exponent) <= factor
