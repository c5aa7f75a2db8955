"""The core's end-to-end checks: the numbers the issue asks the simulator to show."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from federated.privacy.accounting import Spend, epsilon_spent
from federated.privacy.dp_sgd import sample_rate
from federated.privacy.user_level import user_level_epsilon
from federated.recipes import get_recipe
from federated.simulate import Attack, main, parse_attack, simulate
from federated.simulate_privacy import RecordLevelDP, UserLevelDP, train_vectorised
from federated.training import total_steps_for, train_locally

DIGITS = {"recipe": "digits-mlp", "clients": 10, "rounds": 30, "partition": "dirichlet:0.3"}


@pytest.fixture(scope="module")
def f32_run():
    return simulate(**DIGITS, strategy="fedavg", codec="f32")


def test_fedavg_reaches_93_percent_on_non_iid_digits(f32_run) -> None:
    assert max(r.accuracy for r in f32_run.rounds) >= 0.93
    assert f32_run.final_accuracy >= 0.93
    assert len(f32_run.rounds) == 30


def test_int8_matches_f32_at_a_quarter_of_the_bytes(f32_run) -> None:
    int8 = simulate(**DIGITS, strategy="fedavg", codec="int8+zstd")
    assert abs(int8.final_accuracy - f32_run.final_accuracy) <= 0.01
    ratio = int8.summary()["bytes_up"] / f32_run.summary()["bytes_up"]
    assert ratio <= 0.26, ratio


def test_robust_aggregation_survives_scaled_sign_flip_and_fedavg_does_not() -> None:
    attack = Attack("scale", -10.0)
    common = {**DIGITS, "partition": "iid", "rounds": 20, "attackers": 2, "attack": attack}
    plain = simulate(**common, strategy="fedavg")
    trimmed = simulate(**common, strategy="trimmed-mean", strategy_params={"beta": 0.2})
    median = simulate(**common, strategy="median")
    assert trimmed.final_accuracy >= 0.90
    assert median.final_accuracy >= 0.90
    assert plain.final_accuracy < trimmed.final_accuracy - 0.2


@pytest.mark.parametrize("attack", [Attack("scale", -10.0), Attack("noise", 0.5)])
def test_the_coordinators_norm_defences_save_fedavg_from_two_attackers_in_ten(
    attack: Attack,
) -> None:
    common = {**DIGITS, "partition": "iid", "rounds": 6, "clients": 10, "codec": "int8"}
    clean = simulate(**common)
    attacked = simulate(**common, attackers=2, attack=attack)
    defended = simulate(**common, attackers=2, attack=attack, defend=True)
    assert defended.final_accuracy >= clean.final_accuracy - 0.03
    assert attacked.final_accuracy < defended.final_accuracy - 0.05
    assert simulate(**common, defend=True).final_accuracy >= clean.final_accuracy - 0.01


def test_cli_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["--rounds", "2", "--clients", "3", "--partition", "iid", "--codec", "f16", "--json"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["config"]["codec"] == "f16"
    assert summary["bytes_up"] > 0 and 0 <= summary["final_accuracy"] <= 1


def test_cli_table_and_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "1", "--clients", "2"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "final accuracy" in out
    assert main(["--rounds", "1", "--clients", "2", "--partition", "zipf"]) == 2
    assert "unknown partition 'zipf'" in capsys.readouterr().err
    assert main(["--rounds", "1", "--clients", "2", "--attackers", "3"]) == 2
    with pytest.raises(Exception, match="scale:FACTOR"):
        parse_attack("flip")


# --- differential privacy and the fast path ------------------------------------------------

SMALL: dict[str, Any] = {"recipe": "digits-mlp", "partition": "iid", "codec": "f32"}


def test_the_fast_path_trains_what_train_locally_does() -> None:
    recipe = get_recipe("digits-mlp")
    hp = recipe.resolve_hparams(
        {
            "partition": "dirichlet:0.5",
            "num_shards": 6,
            "local_epochs": 2.0,
            "weight_decay": 0.01,
        }
    )
    shards = [recipe.load_shard(hp, i) for i in range(6)]
    assert len({len(s) for s in shards}) > 1  # tasks of different lengths, padded together
    base = recipe.initial_state(hp)
    seeds = [11 * i + 3 for i in range(6)]
    fast = train_vectorised(recipe, hp, base, shards, seeds)
    for shard, seed, got in zip(shards, seeds, fast, strict=True):
        slow = train_locally(recipe, hp, base, shard, seed=seed).delta
        for name, tensor in slow.items():
            assert torch.allclose(got[name], tensor, rtol=1e-4, atol=1e-6), name


def test_a_fast_simulation_is_the_plain_one() -> None:
    plain = simulate(**SMALL, clients=5, rounds=3)
    fast = simulate(**SMALL, clients=5, rounds=3, fast=True)
    for a, b in zip(plain.rounds, fast.rounds, strict=True):
        assert a.accuracy == pytest.approx(b.accuracy, abs=0.003)
        assert a.bytes_up == b.bytes_up
    assert "privacy" not in plain.summary() and "privacy" not in plain.config
    assert "fast" not in plain.config and fast.config["fast"] is True


def test_the_fast_path_refuses_what_it_cannot_train() -> None:
    with pytest.raises(ValueError, match="fast path cannot train optimizer 'adamw'"):
        simulate(**SMALL, clients=2, rounds=1, fast=True, hparams={"optimizer": "adamw"})
    with pytest.raises(ValueError, match="DP-SGD"):
        simulate(**SMALL, clients=2, rounds=1, fast=True, privacy=RecordLevelDP(1.0, 1.0))


def test_user_level_dp_spends_a_full_gaussian_mechanism_per_version() -> None:
    z = 2.0
    privacy = UserLevelDP(noise_multiplier=z, clip_norm=0.5, clip_quantile=0.5)
    run = simulate(**SMALL, clients=60, rounds=3, fast=True, privacy=privacy)
    spent = run.summary()["privacy"]
    assert spent["level"] == "user" and spent["most_versions"] == 3
    assert spent["epsilon"] == user_level_epsilon(noise_multiplier=z, versions=3, delta=1e-5)
    assert spent["count_stddev"] == pytest.approx(60 / 20)
    assert spent["clip_norms"][0] == 0.5 and spent["clip_norms"][1] != 0.5
    assert run.config["privacy"]["kind"] == "UserLevelDP"
    assert 0 <= run.final_accuracy <= 1


def test_user_level_dp_through_the_lossy_codec_and_refusing_the_norm_defences() -> None:
    privacy = UserLevelDP(noise_multiplier=0.5, clip_norm=0.2)
    run = simulate(**{**SMALL, "codec": "int8"}, clients=4, rounds=2, privacy=privacy)
    assert run.privacy is not None and run.privacy["clip_norms"] == [0.2, 0.2]
    with pytest.raises(ValueError, match="defend and user-level DP"):
        simulate(**SMALL, clients=4, rounds=1, privacy=privacy, defend=True)


def test_record_level_dp_charges_each_client_for_its_own_tasks() -> None:
    privacy = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0)
    run = simulate(**SMALL, clients=3, rounds=2, privacy=privacy)
    assert run.privacy is not None and run.privacy["level"] == "record"
    recipe = get_recipe("digits-mlp")
    hp = recipe.resolve_hparams({"partition": "iid", "num_shards": 3})
    for client, epsilon in run.privacy["epsilon_per_client"].items():
        n = len(recipe.load_shard(hp, int(client)))
        task = Spend(1.0, sample_rate(int(hp["batch_size"]), n), total_steps_for(hp, n))
        assert epsilon == pytest.approx(epsilon_spent([task, task], 1e-5))
    assert run.privacy["epsilon"] == max(run.privacy["epsilon_per_client"].values())
    assert 0 < run.privacy["epsilon"] < math.inf
