"""The version gate: a new version that makes the held-out loss worse is not published.

After an aggregate is built, its held-out loss is compared with its base version's. Within
``max_loss_regression`` (relative) plus ``MIN_LOSS_RISE`` it is published as it is. Beyond, the update without
which the aggregate is best is taken out (verdict ``harms_model``) and the rest aggregated
again, one update at a time, so a poisoned update that passed every other test is found
by what it does to the model; the cost is paid only when the gate trips. If no subset
passes within ``MAX_REMOVALS`` tries, nothing is published and the updates are kept out
(``version_gate``); their tasks may be trained again.

Per-update scores against the base were measured and rejected as a filter: on digits-mlp
with Dirichlet(0.3) shards every honest update alone makes the held-out loss worse (by
0.5 to 2 nats in every one of 20 rounds) while their average makes it better, so only the
aggregate can be judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backend.store import UpdateRecord
from federated.strategies import Strategy
from federated.tensors import StateDict

MAX_REMOVALS = 4
"""Updates the gate takes out of one aggregate at most before it gives the aggregate up."""

REFERENCE_VERSIONS = 3
"""A new version is held to the worst held-out loss of the last this many versions, not to
its base's alone: one lucky FedBuff version would otherwise make the next honest one look
like a regression (the async bench kept out 3-7 % of honest updates that way)."""


def reference_loss(losses: list[float | None]) -> float | None:
    """The loss a new version is held to, from its base's and its predecessors'."""
    known = [x for x in losses[-REFERENCE_VERSIONS:] if x is not None and x == x]
    return max(known) if known else None


MIN_LOSS_RISE = 0.1
"""Nats a version's held-out loss may rise whatever ``max_loss_regression`` says: once the
loss is small, a relative limit alone tripped on ordinary noise (an async bench of digits
at loss 0.08 kept out 10 % of its honest updates), while a poisoning that matters moves
the loss by whole nats."""


@dataclass(frozen=True)
class Aggregate:
    """A candidate version: its model, the strategy that made it, its held-out metrics."""

    state: StateDict
    strategy: Strategy
    metrics: dict[str, float]

    @property
    def loss(self) -> float | None:
        value = self.metrics.get("loss")
        return float(value) if value is not None else None


@dataclass
class Gated:
    """What the gate let through (``aggregate`` None: nothing) and why the others not."""

    aggregate: Aggregate | None
    kept: list[UpdateRecord]
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)


def gate(
    aggregate_of: Callable[[list[UpdateRecord]], Aggregate],
    updates: list[UpdateRecord],
    base_loss: float | None,
    tolerance: float,
    *,
    search: bool = True,
) -> Gated:
    """Aggregate ``updates`` and hold the result to ``base_loss`` x (1 + ``tolerance``).

    ``search`` False: judge the one aggregate of them all, never look for the update that
    harms it (user-level privacy counts every aggregate computed against the budget)."""
    candidate = aggregate_of(updates)
    if tolerance <= 0 or base_loss is None or candidate.loss is None:
        return Gated(candidate, list(updates))
    limit = base_loss * (1 + tolerance) + MIN_LOSS_RISE
    kept = list(updates)
    verdicts: dict[str, tuple[str, str]] = {}
    removals = MAX_REMOVALS if search else 0
    while _over(candidate, limit) and len(kept) > 1 and len(verdicts) < removals:
        trials = [(aggregate_of([u for u in kept if u.id != out.id]), out) for out in kept]
        best, culprit = min(trials, key=lambda t: _loss_or_inf(t[0]))
        verdicts[culprit.id] = (
            "harms_model",
            f"with it the new version's held-out loss was {_loss_or_inf(candidate):.4g}, "
            f"without it {_loss_or_inf(best):.4g} (the base version's: {base_loss:.4g})",
        )
        kept = [u for u in kept if u.id != culprit.id]
        candidate = best
    if _over(candidate, limit):
        for u in kept:
            verdicts[u.id] = (
                "version_gate",
                f"the version made of it and the others had a held-out loss of "
                f"{_loss_or_inf(candidate):.4g}, more than {tolerance:.0%} above the base "
                f"version's {base_loss:.4g}; nothing was published",
            )
        return Gated(None, [], verdicts)
    return Gated(candidate, kept, verdicts)


def _loss_or_inf(aggregate: Aggregate) -> float:
    loss = aggregate.loss
    return float("inf") if loss is None or loss != loss else loss


def _over(aggregate: Aggregate, limit: float) -> bool:
    return _loss_or_inf(aggregate) > limit
