"""Contribution credit: what an accepted update is worth, and recent average credit.

Credit for one accepted update = the training the task asked for, in examples processed
(``local_epochs`` passes over the examples, or ``max_steps`` x ``batch_size``), x the
recipe's training FLOPs per example, in GFLOP (1e9 FLOP). The examples are the client's
claim capped at the task's ``max_examples`` (a claim above it is refused at upload), so a
client cannot claim more work than it was given. The credit is pending until the update's
fate is settled (``backend.services.crediting``): granted when it is aggregated (or found
too stale, through no fault of its own), withheld when it is kept out.

Recent average credit (RAC) follows BOINC: an exponentially weighted average of credit per
day with a half-life of 7 days. We keep, per contributor, ``recent_sum`` (credit decayed to
``recent_time``); RAC at ``now`` is that sum decayed to ``now`` times ln2 / half-life in days,
so a contributor earning c GFLOP every day converges to RAC = c. Decayed sums add, so a
team's RAC is the sum of its members'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from backend.settings import RECENT_CREDIT_HALF_LIFE_S

GFLOP = 1e9
_DAY_S = 86_400.0


def task_work(hparams: Mapping[str, Any], num_examples: int, max_examples: int) -> int:
    """Examples processed by the training a task asked for on ``num_examples`` examples
    (capped at ``max_examples``): its epochs over them, or its step budget's batches."""
    examples = max(0, min(int(num_examples), int(max_examples)))
    if examples == 0:
        return 0
    steps = int(hparams.get("max_steps", 0) or 0)
    if steps > 0:
        return steps * int(hparams.get("batch_size", 1) or 1)
    return max(1, math.ceil(float(hparams.get("local_epochs", 1.0)) * examples))


def update_credit(
    num_examples: int,
    max_examples: int,
    flops_per_example: float,
    hparams: Mapping[str, Any] | None = None,
) -> float:
    """GFLOP credited for one accepted update (one pass over its examples without
    ``hparams``)."""
    if hparams is None:
        work = max(0, min(int(num_examples), int(max_examples)))
    else:
        work = task_work(hparams, num_examples, max_examples)
    return work * float(flops_per_example) / GFLOP


def decayed(
    recent_sum: float, since: float, now: float, half_life_s: float = RECENT_CREDIT_HALF_LIFE_S
) -> float:
    """``recent_sum`` as of ``since``, decayed to ``now``."""
    if recent_sum == 0.0:
        return 0.0
    elapsed = max(0.0, now - since)
    return recent_sum * math.pow(0.5, elapsed / half_life_s)


def add_credit(
    recent_sum: float,
    since: float,
    credit: float,
    now: float,
    half_life_s: float = RECENT_CREDIT_HALF_LIFE_S,
) -> float:
    """The new recent sum after earning ``credit`` at ``now``."""
    return decayed(recent_sum, since, now, half_life_s) + credit


def recent_average(
    recent_sum: float, since: float, now: float, half_life_s: float = RECENT_CREDIT_HALF_LIFE_S
) -> float:
    """Recent average credit in GFLOP per day at ``now``."""
    half_life_days = half_life_s / _DAY_S
    return decayed(recent_sum, since, now, half_life_s) * math.log(2) / half_life_days
