"""DP-SGD local training: Poisson batches, per-example clipping, secret noise, exact resume."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from federated.privacy import epsilon_spent
from federated.privacy.dp_sgd import (
    CHECKPOINT_KEY,
    check_dp_sgd_model,
    draw_noise_seed,
    sample_rate,
    train_dp_sgd,
)
from federated.recipes import RECIPES, Dataset, HParamValue, Recipe, get_recipe
from federated.recipes.digits import DigitsMLP
from federated.tensors import l2_norm
from federated.training import (
    Checkpoint,
    StepDecision,
    TrainingInterrupted,
    TrainProgress,
    apply_delta,
    load_state_into,
    train_locally,
)


class Recorder:
    """Hooks that keep every progress report and stop (once) after ``stop_at`` steps."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.progress: list[TrainProgress] = []
        self.saved: list[Checkpoint] = []

    def after_step(self, progress: TrainProgress) -> StepDecision:
        self.progress.append(progress)
        if progress.step == self.stop_at:
            self.stop_at = None
            return StepDecision.STOP
        return StepDecision.CONTINUE

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.saved.append(checkpoint)

    def batch_sizes(self) -> list[int]:
        seen = [0] + [p.examples for p in self.progress]
        return [b - a for a, b in itertools.pairwise(seen)]


def linear_setup(
    n: int = 40, *, seed: int = 0, **overrides: HParamValue
) -> tuple[Recipe, dict[str, HParamValue], dict[str, torch.Tensor], Dataset]:
    """A tiny multinomial logistic regression (the synthetic recipe's model) on random data."""
    recipe = get_recipe("synthetic-logreg")
    hp = recipe.resolve_hparams({"dim": 4, "classes": 3, "lr": 0.5, "momentum": 0.0, **overrides})
    gen = torch.Generator().manual_seed(seed)
    data = Dataset(torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen))
    return recipe, hp, recipe.initial_state(hp), data


def same_delta(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- sampling ----------------------------------------------------------------------------------


def test_sample_rate() -> None:
    assert sample_rate(16, 160) == 0.1
    assert sample_rate(64, 10) == 1.0
    for bad in ((0, 10), (10, 0)):
        with pytest.raises(ValueError, match="at least 1"):
            sample_rate(*bad)


def test_poisson_batches_vary_and_average_q_times_n() -> None:
    n, batch, steps = 200, 20, 400  # q = 0.1: Binomial(200, 0.1) batches, mean 20, var 18
    recipe, hp, base, data = linear_setup(n, batch_size=batch, max_steps=steps)
    hooks = Recorder()
    out = train_dp_sgd(
        recipe, hp, base, data, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=7, hooks=hooks
    )
    sizes = torch.tensor(hooks.batch_sizes(), dtype=torch.float64)
    assert len(sizes) == steps == out.spend.steps
    assert out.spend == type(out.spend)(1.0, 0.1, steps)
    assert abs(float(sizes.mean()) - 20.0) < 1.5  # 7 standard errors
    assert 9.0 < float(sizes.var()) < 30.0
    assert len(set(sizes.tolist())) > 8


def test_empty_batches_are_noise_only_steps() -> None:
    # q = 1/30: a batch is empty with probability (29/30)**30, about 0.36.
    recipe, hp, base, data = linear_setup(30, batch_size=1, max_steps=20)
    hooks = Recorder()
    out = train_dp_sgd(
        recipe, hp, base, data, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=3, hooks=hooks
    )
    sizes = hooks.batch_sizes()
    empty = [i for i, size in enumerate(sizes) if size == 0]
    assert empty and len(empty) < len(sizes)
    assert all(math.isnan(hooks.progress[i].loss) for i in empty)
    assert all(math.isfinite(hooks.progress[i].loss) for i in range(20) if i not in empty)
    assert all(bool(torch.isfinite(v).all()) for v in out.result.delta.values())
    # Empty batches alone: noise only, so no noise means no change.
    recipe, hp, base, data = linear_setup(1000, batch_size=1, max_steps=1)
    seed = next(s for s in range(100) if _first_batch_is_empty(1000, s))
    quiet = train_dp_sgd(
        recipe, hp, base, data, noise_multiplier=0.0, max_grad_norm=1.0, noise_seed=seed
    )
    noisy = train_dp_sgd(
        recipe, hp, base, data, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=seed
    )
    assert all(not bool(v.any()) for v in quiet.result.delta.values())
    assert l2_norm(noisy.result.delta) > 0


def _first_batch_is_empty(n: int, seed: int) -> bool:
    from federated.privacy.dp_sgd import _stream_seed, poisson_batch

    return len(poisson_batch(n, 1 / n, _stream_seed(seed, 0, "sample"))) == 0


# --- randomness --------------------------------------------------------------------------------


def test_same_seed_same_delta_other_seed_other_delta() -> None:
    recipe, hp, base, data = linear_setup(batch_size=8, max_steps=5)

    def run(seed: int) -> dict[str, torch.Tensor]:
        return train_dp_sgd(
            recipe, hp, base, data, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=seed
        ).result.delta

    assert same_delta(run(11), run(11))
    assert not same_delta(run(11), run(12))


def test_draw_noise_seed_is_fresh_and_128_bits() -> None:
    seeds = {draw_noise_seed() for _ in range(20)}
    assert len(seeds) == 20
    assert all(0 <= s < 2**128 for s in seeds)


def test_stopped_and_resumed_run_equals_one_uninterrupted_run() -> None:
    recipe, hp, base, data = linear_setup(
        batch_size=8, max_steps=12, momentum=0.9, lr_schedule="cosine", warmup_steps=3
    )
    kwargs: dict[str, Any] = {"noise_multiplier": 1.1, "max_grad_norm": 0.7}
    seed = draw_noise_seed()
    whole = train_dp_sgd(recipe, hp, base, data, noise_seed=seed, **kwargs)

    hooks = Recorder(stop_at=5)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_dp_sgd(recipe, hp, base, data, noise_seed=seed, hooks=hooks, **kwargs)
    saved = Checkpoint.from_bytes(stopped.value.checkpoint.to_bytes())
    assert saved.step == 5 and saved.extra[CHECKPOINT_KEY]["noise_seed"] == seed
    resumed = train_dp_sgd(recipe, hp, base, data, noise_seed=seed, resume=saved, **kwargs)

    assert same_delta(resumed.result.delta, whole.result.delta)
    assert resumed.spend == whole.spend
    assert resumed.result.steps == whole.result.steps == 12


def test_resume_refuses_another_seed_or_setting() -> None:
    recipe, hp, base, data = linear_setup(batch_size=8, max_steps=4)
    kwargs: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    with pytest.raises(TrainingInterrupted) as stopped:
        train_dp_sgd(recipe, hp, base, data, noise_seed=5, hooks=Recorder(stop_at=2), **kwargs)
    saved = stopped.value.checkpoint
    for change in ({"noise_seed": 6}, {"noise_seed": 5, "noise_multiplier": 2.0}):
        with pytest.raises(ValueError, match="start the task afresh"):
            train_dp_sgd(recipe, hp, base, data, resume=saved, **{**kwargs, **change})
    plain = train_locally(recipe, hp, base, data, hooks=Recorder(stop_at=None))
    assert plain.steps == 4
    not_dp = Checkpoint(
        step=2, model=base, optimizer_tensors={}, optimizer_meta={}, examples=0,
        loss_before=0.0, seconds=0.0, loss_sum=0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="start the task afresh"):
        train_dp_sgd(recipe, hp, base, data, noise_seed=5, resume=not_dp, **kwargs)


# --- clipping ----------------------------------------------------------------------------------


def test_per_example_clipping_bounds_one_outliers_influence() -> None:
    # Every record in the one step (batch >= n: q = 1), no noise, plain SGD at lr 1: the
    # update is minus the mean of the clipped gradients, so replacing one record moves it by
    # at most 2 C / n, however extreme the record.
    n, clip = 10, 0.5
    recipe, hp, base, data = linear_setup(n, batch_size=n, max_steps=1, lr=1.0)
    wild = data.features.clone()
    wild[0] *= 1e6
    relabelled = data.labels.clone()
    relabelled[0] = (relabelled[0] + 1) % 3  # and another label for it
    outlier = Dataset(wild, relabelled)
    kwargs: dict[str, Any] = {"noise_multiplier": 0.0, "max_grad_norm": clip, "noise_seed": 1}
    calm = train_dp_sgd(recipe, hp, base, data, **kwargs).result.delta
    pushed = train_dp_sgd(recipe, hp, base, outlier, **kwargs).result.delta
    moved = l2_norm({k: pushed[k] - calm[k] for k in calm})
    assert moved <= 2 * clip / n * (1 + 1e-5)
    assert l2_norm(pushed) <= clip * (1 + 1e-5)
    assert moved > 0.01  # the outlier does count, within its bound
    # Without DP the same record moves the model by orders of magnitude more.
    assert l2_norm(train_locally(recipe, hp, base, outlier).delta) > 1e3


def test_global_clip_norm_does_not_apply() -> None:
    recipe, hp, base, data = linear_setup(batch_size=8, max_steps=3)
    clipped = {**hp, "clip_norm": 1e-3}
    kwargs: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise_seed": 2}
    assert same_delta(
        train_dp_sgd(recipe, hp, base, data, **kwargs).result.delta,
        train_dp_sgd(recipe, clipped, base, data, **kwargs).result.delta,
    )


# --- every recipe ------------------------------------------------------------------------------

RECIPE_OVERRIDES: dict[str, dict[str, HParamValue]] = {
    "tabular-csv": {"label_column": "y", "feature_columns": "a, b", "num_classes": 3, "hidden": 8},
    "byte-lm": {"preset": "tiny", "seq_len": 16},
}


def recipe_data(name: str, hp: Mapping[str, HParamValue]) -> Dataset:
    if name == "tabular-csv":  # local data: two numeric columns, three classes
        gen = torch.Generator().manual_seed(0)
        return Dataset(torch.randn(24, 2, generator=gen), torch.randint(0, 3, (24,), generator=gen))
    shard = get_recipe(name).load_shard(hp, 0)
    return Dataset(shard.features[:24], shard.labels[:24])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_passes_the_check_and_trains_dp_steps(name: str) -> None:
    recipe = get_recipe(name)
    hp = recipe.resolve_hparams({**RECIPE_OVERRIDES.get(name, {}), "max_steps": 2, "batch_size": 6})
    assert check_dp_sgd_model(recipe, hp) == []
    data = recipe_data(name, hp)
    out = train_dp_sgd(
        recipe, hp, recipe.initial_state(hp), data, noise_multiplier=1.0, max_grad_norm=1.0,
        noise_seed=9,
    )  # fmt: skip
    assert out.spend.steps == 2 and out.spend.sample_rate == 0.25
    assert out.result.delta.keys() == recipe.initial_state(hp).keys()
    assert all(bool(torch.isfinite(v).all()) for v in out.result.delta.values())
    assert l2_norm(out.result.delta) > 0
    assert math.isnan(out.result.loss_before) and math.isnan(out.result.loss_after)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_without_noise_or_clipping_dp_sgd_is_plain_full_batch_sgd(name: str) -> None:
    # q = 1 (every record each step), no noise, a clip nothing reaches: the per-example
    # gradients must sum to the true batch gradient, so DP-SGD takes train_locally's steps.
    # This catches gradient a per-layer method misses (the byte-lm's tied output
    # projection), and checks FedProx's term outside the clip.
    recipe = get_recipe(name)
    hp = recipe.resolve_hparams(
        {
            **RECIPE_OVERRIDES.get(name, {}),
            "max_steps": 3, "batch_size": 64, "optimizer": "sgd", "momentum": 0.0,
            "clip_norm": 0.0, "prox_mu": 0.5, "lr": 0.05,
        }
    )  # fmt: skip
    data, base = recipe_data(name, hp), recipe.initial_state(hp)
    dp = train_dp_sgd(recipe, hp, base, data, noise_multiplier=0.0, max_grad_norm=1e9, noise_seed=1)
    plain = train_locally(recipe, hp, base, data)
    for key, value in plain.delta.items():
        torch.testing.assert_close(dp.result.delta[key], value, rtol=1e-3, atol=1e-6)


class _NormedDigits(DigitsMLP):
    name = "digits-normed"
    extra_hparams: ClassVar = DigitsMLP.extra_hparams

    def build_model(self, hparams: Mapping[str, HParamValue]) -> nn.Module:
        return nn.Sequential(
            nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 10)
        )


def test_check_names_what_stops_a_model() -> None:
    recipe = _NormedDigits()
    problems = check_dp_sgd_model(recipe, recipe.resolve_hparams({}))
    text = " ".join(problems)
    assert "BatchNorm" in text and "buffers" in text and "dropout" in text
    assert all(p.startswith("recipe 'digits-normed'") for p in problems)


# --- learning and arguments --------------------------------------------------------------------


def test_digits_still_learn_under_dp() -> None:
    recipe = get_recipe("digits-mlp")
    hp = recipe.resolve_hparams(
        {"num_shards": 1, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "local_epochs": 3,
         "hidden": 32}
    )  # fmt: skip
    base, data = recipe.initial_state(hp), recipe.load_shard(hp, 0)
    out = train_dp_sgd(
        recipe, hp, base, data, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=4
    )
    model = recipe.build_model(hp)
    load_state_into(model, apply_delta(base, out.result.delta))
    test = recipe.load_test(hp)
    assert test is not None
    assert recipe.evaluate(model, test)["accuracy"] > 0.6  # chance is 0.1
    assert epsilon_spent([out.spend], 1e-5) < 5.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"noise_seed": -1}, "noise_seed"),
        ({"noise_seed": True}, "noise_seed"),
    ],
)
def test_bad_arguments_are_refused(change: dict[str, Any], message: str) -> None:
    recipe, hp, base, data = linear_setup(batch_size=8, max_steps=1)
    kwargs: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise_seed": 1}
    with pytest.raises(ValueError, match=message):
        train_dp_sgd(recipe, hp, base, data, **{**kwargs, **change})
    with pytest.raises(ValueError, match="empty"):
        train_dp_sgd(recipe, hp, base, Dataset(data.features[:0], data.labels[:0]), **kwargs)


def test_claimed_examples_are_capped() -> None:
    recipe, hp, base, data = linear_setup(40, batch_size=8, max_steps=1)
    out = train_dp_sgd(
        recipe, hp, base, data, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=1,
        max_examples=25,
    )  # fmt: skip
    assert out.result.num_examples == 25
    assert out.spend.sample_rate == 0.2  # q follows the data set, not the claim
