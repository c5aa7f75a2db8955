"""Differential privacy: the accountant (``accounting``) and record-level DP-SGD for a
contributor's local training (``dp_sgd``).

The accountant's names load without torch (the contributor's engine may show a budget);
DP-SGD's load torch and opacus on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federated.privacy.accounting import (
    DEFAULT_STEPS_LIMIT,
    Spend,
    adaptive_clip_noise,
    epsilon_spent,
    noise_multiplier_for,
    steps_within_budget,
)

if TYPE_CHECKING:
    from federated.privacy.dp_sgd import (
        DPTrainResult,
        check_dp_sgd_model,
        draw_noise_seed,
        sample_rate,
        train_dp_sgd,
    )

_DP_SGD_NAMES = frozenset(
    {"DPTrainResult", "check_dp_sgd_model", "draw_noise_seed", "sample_rate", "train_dp_sgd"}
)


def __getattr__(name: str) -> object:
    if name in _DP_SGD_NAMES:
        from federated.privacy import dp_sgd

        return getattr(dp_sgd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_STEPS_LIMIT",
    "DPTrainResult",
    "Spend",
    "adaptive_clip_noise",
    "check_dp_sgd_model",
    "draw_noise_seed",
    "epsilon_spent",
    "noise_multiplier_for",
    "sample_rate",
    "steps_within_budget",
    "train_dp_sgd",
]
