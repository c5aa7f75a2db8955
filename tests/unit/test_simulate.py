"""The core's end-to-end checks: the numbers the issue asks the simulator to show."""

from __future__ import annotations

import json

import pytest

from federated.simulate import Attack, main, parse_attack, simulate

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
