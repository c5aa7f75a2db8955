"""The demo's private projects (``barnraise-backend demo --privacy dp-sgd|dp-fedavg``):
settings whose noise is calibrated so that the rounds asked for fit a budget of epsilon 8
at delta 1e-5, and the line the demo prints of the budget spent."""

from __future__ import annotations

import math
from typing import Any

from federated.privacy.accounting import noise_multiplier_for
from federated.privacy.dp_sgd import sample_rate
from federated.recipes import get_recipe
from federated.training import total_steps_for

DEMO_EPSILON = 8.0
DEMO_DELTA = 1e-5
DEMO_ROUNDS_WITHOUT_LIMIT = 20
"""A demo run until Ctrl-C is budgeted for this many versions."""
HEADROOM = 1.25
"""Budgeted for a quarter more work than the rounds need (tasks redone after a restart)."""


def privacy_settings(
    privacy: str, *, rounds: int | None, hparams: dict[str, Any]
) -> dict[str, Any]:
    """The project settings of a demo project under ``privacy`` (none: no settings)."""
    if privacy == "none":
        return {}
    versions = math.ceil((rounds or DEMO_ROUNDS_WITHOUT_LIMIT) * HEADROOM)
    common = {
        "privacy": privacy,
        "dp_epsilon": DEMO_EPSILON,
        "dp_delta": DEMO_DELTA,
        "spot_check_rate": 0,
        "dp_clip_norm": 1.0,
    }
    if privacy == "dp-fedavg":  # one noisy aggregate per version, everyone's data in each
        z = noise_multiplier_for(
            epsilon=DEMO_EPSILON, delta=DEMO_DELTA, sample_rate=1.0, steps=versions
        )
        return {**common, "dp_noise_multiplier": round(z, 4) + 1e-4, "max_loss_regression": 0}
    # dp-sgd: each contributor trains one task per version on its shard
    recipe = get_recipe("digits-mlp")
    resolved = recipe.resolve_hparams(hparams)
    smallest = min(len(recipe.load_shard(resolved, i)) for i in range(int(resolved["num_shards"])))
    q = sample_rate(int(resolved["batch_size"]), smallest)
    steps = versions * total_steps_for(resolved, smallest)
    sigma = noise_multiplier_for(epsilon=DEMO_EPSILON, delta=DEMO_DELTA, sample_rate=q, steps=steps)
    return {**common, "dp_noise_multiplier": round(sigma, 4) + 1e-4, "fit_tasks": False}


def budget_line(view: dict[str, Any]) -> str:
    """``, epsilon 2.31 of 8`` for a private project's view, else nothing."""
    spent = view.get("privacy_spent")
    terms = view.get("privacy")
    if not spent or not terms:
        return ""
    return f", epsilon {spent['epsilon']:.3g} of {terms['epsilon']:g}"
