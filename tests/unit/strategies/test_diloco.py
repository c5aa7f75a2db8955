"""DiLoCo: the outer Nesterov step against PyTorch's SGD, its server state, and its weights."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load, save
from strategy_helpers import (
    FAST,
    SHAPES,
    constant_state,
    flat,
    minus,
    random_state,
    seeds,
    update,
)

from federated.simulate import main as simulate_main
from federated.strategies import STRATEGIES, DiLoCo, FedAvg, build_strategy, staleness_factor
from federated.strategies.aggregate import weighted_mean_delta
from federated.tensors import ClientUpdate, StateDict


def rounds_of_updates(seed: int, rounds: int, per_round: int = 3) -> list[list[ClientUpdate]]:
    """Updates with unequal examples and staleness factors, so the weights matter."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [
            update(
                random_state(gen, scale=0.1),
                examples=5 + 7 * i,
                staleness_factor=staleness_factor(i),
            )
            for i in range(per_round)
        ]
        for _ in range(rounds)
    ]


def torch_sgd_reference(
    base: StateDict,
    rounds: list[list[ClientUpdate]],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    foreach: bool,
) -> StateDict:
    """torch.optim.SGD stepping on the outer gradient ``-mean delta``, one step per round."""
    params = {name: torch.nn.Parameter(t.clone()) for name, t in base.items()}
    sgd = torch.optim.SGD(
        params.values(), lr=lr, momentum=momentum, nesterov=nesterov, foreach=foreach
    )
    for round_updates in rounds:
        current = {name: p.detach().clone() for name, p in params.items()}
        mean = weighted_mean_delta(current, round_updates)
        for name, p in params.items():
            p.grad = -mean[name]
        sgd.step()
    return {name: p.detach() for name, p in params.items()}


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize(("lr", "momentum"), [(0.7, 0.9), (1.3, 0.5)])
def test_diloco_is_pytorch_sgd_on_the_negated_mean_delta(
    nesterov: bool, lr: float, momentum: float, foreach: bool
) -> None:
    """Bit for bit: the same float32 operations in the same order, up to exact negations."""
    gen = torch.Generator().manual_seed(3)
    base = random_state(gen)
    rounds = rounds_of_updates(seed=4, rounds=6)
    strategy = DiLoCo(outer_lr=lr, outer_momentum=momentum, nesterov=nesterov)
    model = base
    for round_updates in rounds:
        model = strategy.aggregate(model, round_updates)
    expected = torch_sgd_reference(
        base, rounds, lr=lr, momentum=momentum, nesterov=nesterov, foreach=foreach
    )
    for name in SHAPES:
        assert torch.equal(model[name], expected[name]), name
    assert strategy.step == len(rounds)


def test_diloco_nesterov_matches_the_formula_in_float64() -> None:
    """The docstring's rule, written out independently: m <- mu m + d; x <- x + lr (d + mu m)."""
    lr, mu = 0.7, 0.9
    rounds = rounds_of_updates(seed=8, rounds=4, per_round=1)
    strategy = DiLoCo()
    model = constant_state(0.0)
    x = torch.zeros(flat(model).shape, dtype=torch.float64)
    m = torch.zeros_like(x)
    for (only,) in rounds:
        d = flat(only.delta).double()
        m = mu * m + d
        x = x + lr * (d + mu * m)
        model = strategy.aggregate(model, [only])
    torch.testing.assert_close(flat(model).double(), x, rtol=1e-5, atol=1e-6)


def test_diloco_with_outer_lr_1_and_no_momentum_is_fedavg() -> None:
    """Equal up to float32 rounding: FedAvg scales the sum and adds it in one fused op."""
    rounds = rounds_of_updates(seed=12, rounds=3)
    diloco = DiLoCo(outer_lr=1.0, outer_momentum=0.0)
    fedavg = FedAvg()
    base = random_state(torch.Generator().manual_seed(13))
    a, b = base, base
    for round_updates in rounds:
        a = diloco.aggregate(a, round_updates)
        b = fedavg.aggregate(b, round_updates)
    for name in SHAPES:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


def test_diloco_state_round_trip_continues_identically() -> None:
    params = {"outer_lr": 0.7, "outer_momentum": 0.9}
    base = random_state(torch.Generator().manual_seed(21))
    rounds = rounds_of_updates(seed=22, rounds=3)

    continuous = build_strategy("diloco", params)
    model = base
    for round_updates in rounds:
        model = continuous.aggregate(model, round_updates)

    first = build_strategy("diloco", params)
    restarted_model = first.aggregate(base, rounds[0])
    saved = save(first.state_tensors())  # what the coordinator writes to disk
    for round_updates in rounds[1:]:
        restarted = build_strategy("diloco", params)  # a new process each round
        restarted.load_state_tensors(load(saved))
        restarted_model = restarted.aggregate(restarted_model, round_updates)
        saved = save(restarted.state_tensors())

    for name in SHAPES:
        assert torch.equal(model[name], restarted_model[name])
    assert load(saved).keys() == {"step", "m/layer.weight", "m/layer.bias"}
    assert torch.equal(load(saved)["step"], torch.tensor(3))


def test_diloco_fresh_strategy_has_no_state_and_momentum_carries_over() -> None:
    strategy = DiLoCo()
    assert strategy.state_tensors() == {}
    base = constant_state(0.0)
    one = strategy.aggregate(base, [update(constant_state(1.0))])
    # m = 1, step = 1 + 0.9 * 1: the first outer step already looks ahead (Nesterov).
    assert torch.allclose(flat(one), torch.full_like(flat(one), 0.7 * 1.9))
    two = strategy.aggregate(one, [update(constant_state(1.0))])
    # m = 0.9 + 1 = 1.9, step = 1 + 0.9 * 1.9 = 2.71
    assert torch.allclose(flat(minus(two, one)), torch.full_like(flat(one), 0.7 * 2.71))


def test_diloco_state_is_unchanged_by_a_failed_round() -> None:
    strategy = DiLoCo()
    base = constant_state(0.0)
    strategy.aggregate(base, [update(constant_state(1.0))])
    before = {k: t.clone() for k, t in strategy.state_tensors().items()}
    bad = {"layer.weight": torch.ones(3, 4), "layer.bias": torch.ones(9)}
    failures: list[list[ClientUpdate]] = [
        [update(constant_state(1.0)), update(bad)],
        [],
        [update(constant_state(1.0), examples=0)],
    ]
    for failing in failures:
        with pytest.raises(ValueError):
            strategy.aggregate(base, iter(failing))
    after = strategy.state_tensors()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_diloco_weights_a_stale_update_less() -> None:
    fresh, stale = constant_state(1.0), constant_state(-1.0)
    factor = staleness_factor(3)  # 0.5, the coordinator's default exponent
    updates = [update(fresh, examples=10), update(stale, examples=10, staleness_factor=factor)]
    weighted = DiLoCo(outer_lr=1.0, outer_momentum=0.0).aggregate(constant_state(0.0), updates)
    expected = (10 * 1.0 + 10 * factor * -1.0) / (10 + 10 * factor)  # 1/3: the fresh one wins
    assert torch.allclose(flat(weighted), torch.full((16,), expected))
    same_as_fedavg = FedAvg().aggregate(constant_state(0.0), updates)
    for name in SHAPES:
        torch.testing.assert_close(weighted[name], same_as_fedavg[name])


def test_diloco_gives_integer_buffers_the_plain_mean_delta() -> None:
    base = {**constant_state(0.0), "bn.num_batches_tracked": torch.tensor(10, dtype=torch.int64)}

    def with_counter(steps: int) -> StateDict:
        return {**constant_state(1.0), "bn.num_batches_tracked": torch.tensor(steps)}

    strategy = DiLoCo()
    out = strategy.aggregate(base, [update(with_counter(4)), update(with_counter(6))])
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert int(out["bn.num_batches_tracked"]) == 15
    assert "m/bn.num_batches_tracked" not in strategy.state_tensors()
    again = strategy.aggregate(out, [update(with_counter(2))])
    assert int(again["bn.num_batches_tracked"]) == 17


def test_diloco_keeps_a_float64_model_in_float64() -> None:
    base = {name: t.double() for name, t in constant_state(0.0).items()}
    delta = {name: t.double() for name, t in constant_state(1.0).items()}
    out = DiLoCo().aggregate(base, [update(delta)])
    assert all(t.dtype == torch.float64 for t in out.values())


@FAST
@given(seed=seeds, count=st.integers(1, 5))
def test_diloco_first_round_moves_along_the_mean_delta(seed: int, count: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = random_state(gen)
    updates = [update(random_state(gen), examples=1 + i) for i in range(count)]
    mean = flat(weighted_mean_delta(base, updates))
    moved = flat(minus(DiLoCo().aggregate(base, updates), base))
    # From zero momentum the first Nesterov step is (1 + mu) * d.
    torch.testing.assert_close(moved, 0.7 * 1.9 * mean, rtol=1e-5, atol=1e-5)


def test_diloco_rejects_foreign_or_mismatched_state() -> None:
    strategy = DiLoCo()
    with pytest.raises(ValueError, match="unknown tensors"):
        strategy.load_state_tensors({"step": torch.tensor(1), "v/a": torch.zeros(2)})
    with pytest.raises(ValueError, match="missing 'step'"):
        strategy.load_state_tensors({"m/a": torch.zeros(2)})
    with pytest.raises(ValueError, match="inconsistent"):
        strategy.load_state_tensors({"step": torch.tensor(0), "m/a": torch.zeros(2)})
    assert strategy.state_tensors() == {}  # every refused load kept the fresh state
    strategy.load_state_tensors({"m/a": torch.zeros(2), "step": torch.tensor(1)})
    with pytest.raises(ValueError, match="state does not match the model"):
        strategy.aggregate(constant_state(0.0), [update(constant_state(1.0))])
    fedadam_state = build_strategy("fedadam")
    fedadam_state.aggregate(constant_state(0.0), [update(constant_state(1.0))])
    with pytest.raises(ValueError, match="not a diloco state"):
        DiLoCo().load_state_tensors(fedadam_state.state_tensors())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"outer_lr": 0.0}, "outer_lr"),
        ({"outer_momentum": 1.0}, "outer_momentum"),
        ({"outer_momentum": -0.1}, "outer_momentum"),
        ({"nesterov": "yes"}, "nesterov must be true or false"),
    ],
)
def test_diloco_rejects_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"strategy 'diloco': {message}"):
        build_strategy("diloco", params)


def test_diloco_is_registered_with_its_parameters() -> None:
    assert STRATEGIES["diloco"] is DiLoCo
    strategy = build_strategy("diloco", {"outer_lr": 0.5, "outer_momentum": 0.8})
    assert strategy.describe() == {
        "name": "diloco",
        "outer_lr": 0.5,
        "outer_momentum": 0.8,
        "nesterov": True,
    }
    assert DiLoCo.streaming and strategy.client_hparams() == {}


def test_diloco_trains_digits_in_the_simulator_as_well_as_fedavg(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end through the simulator's CLI: 10 non-IID clients, 10 rounds."""
    common = ["--recipe", "digits-mlp", "--clients", "10", "--rounds", "10", "--json"]
    outer = ["--strategy-param", "outer_lr=0.7", "--strategy-param", "outer_momentum=0.9"]
    assert simulate_main([*common, "--strategy", "diloco", *outer]) == 0
    diloco = json.loads(capsys.readouterr().out)
    assert simulate_main([*common, "--strategy", "fedavg"]) == 0
    fedavg = json.loads(capsys.readouterr().out)
    assert diloco["config"]["strategy"] == {
        "name": "diloco",
        "outer_lr": 0.7,
        "outer_momentum": 0.9,
        "nesterov": True,
    }
    assert diloco["final_accuracy"] >= 0.9
    assert diloco["final_accuracy"] >= fedavg["final_accuracy"] - 0.02
