"""Aggregation maths on plain tensors, apart from any strategy object.

The strategies in this package are thin classes over these functions, so each formula can be
tested and reused alone (compare Flower's ``aggregate.py``).

Conventions:

- A *delta* is a ``StateDict`` of client-minus-base tensors with exactly the base's names
  and shapes. Updates reach the strategies already validated by ``codec.decode_update``
  (finite, norm-bounded); the checks here are the cheap ones (names, shapes, weights).
- An update of weight 0 (no examples) contributes nothing and is skipped; if every update
  has weight 0 there is nothing to average and that is a ``ValueError``.
- Floating tensors come back in the base's dtype. Non-floating tensors (integer buffers such
  as a batch-norm step counter) are averaged in float64 and rounded back.

Accumulation precision (streaming weighted mean): the running sum is kept in float32 for
float32 models, one in-place ``add_(delta, alpha=weight)`` per tensor per update. That is a
single memory-bound pass reading the update and the accumulator, and the accumulator costs
one model of memory. float64 would cost two models of memory and 1.5x the memory traffic per
update for no useful gain: float32 summation of n terms has a worst-case relative error of
about n * 2**-24 of the sum of magnitudes (2e-6 for 32 updates, 6e-5 for 1000; the typical
error grows like sqrt(n)), far below the noise of the SGD deltas being averaged and below the
float32 rounding the published model gets anyway. The weights and their total are Python
floats (float64).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import torch

from federated.tensors import ClientUpdate, StateDict

ROBUST_CHUNK_ELEMENTS = 1 << 20
"""Coordinates per stacked block in the robust aggregators: memory is n * this * 8 bytes."""


def staleness_factor(staleness: int, *, exponent: float = 0.5) -> float:
    """FedBuff weight factor ``(1 + staleness) ** -exponent`` for an update ``staleness``
    model versions behind; 1.0 for a fresh update and in (0, 1] always.

    Raises ValueError for a negative or non-integer staleness or a negative exponent.
    """
    if isinstance(staleness, bool) or not isinstance(staleness, int):
        raise ValueError(f"staleness must be an integer number of versions, got {staleness!r}")
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0 versions, got {staleness}")
    if isinstance(exponent, bool) or not isinstance(exponent, int | float):
        raise ValueError(f"exponent must be a number, got {exponent!r}")
    if not math.isfinite(exponent) or exponent < 0:
        raise ValueError(f"exponent must be a finite number >= 0, got {exponent!r}")
    return float((1 + staleness) ** -float(exponent))


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_floating_point and dtype != torch.float64:
        return torch.float32
    return torch.float64


def _to_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype == dtype:
        return t
    if dtype.is_floating_point:
        return t.to(dtype)
    return torch.round(t).to(dtype)


def check_base(base: StateDict) -> None:
    if not base:
        raise ValueError("the base model has no tensors; there is nothing to aggregate into")


def check_delta(base: StateDict, update: ClientUpdate, index: int) -> float:
    """The update's weight after checking its delta matches ``base`` (names and shapes)."""
    who = f"update {index}" + (f" from client {update.client_id!r}" if update.client_id else "")
    delta = update.delta
    if delta.keys() != base.keys():
        missing = sorted(base.keys() - delta.keys())
        extra = sorted(delta.keys() - base.keys())
        raise ValueError(
            f"{who} does not match the model: missing tensors {missing[:3]}, "
            f"unknown tensors {extra[:3]}"
        )
    for name, tensor in delta.items():
        if tensor.shape != base[name].shape:
            raise ValueError(
                f"{who}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the model has {tuple(base[name].shape)}"
            )
    weight = update.weight
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"{who} has weight {weight!r}; weights must be finite and >= 0 "
            f"(check num_examples and staleness_factor)"
        )
    return weight


def _no_updates() -> ValueError:
    return ValueError("no updates to aggregate; a round needs at least one accepted update")


def _all_zero(count: int) -> ValueError:
    return ValueError(
        f"all {count} updates have weight 0 (no examples, or a zero staleness factor); "
        f"there is nothing to average"
    )


def _accumulate(acc: StateDict, base: StateDict, delta: StateDict, weight: float) -> None:
    """acc += weight * delta in place (a function, so no loop variable outlives the call)."""
    if not acc:
        # The first update initialises the accumulator: no zero-fill pass.
        for name, t in delta.items():
            out = torch.empty(t.shape, dtype=_accumulator_dtype(base[name].dtype))
            torch.mul(t, weight, out=out)
            acc[name] = out
    else:
        for name, t in delta.items():
            acc[name].add_(t, alpha=weight)


def weighted_delta_sum(
    base: StateDict, updates: Iterable[ClientUpdate]
) -> tuple[StateDict, float, int]:
    """Stream ``updates`` once, holding one accumulator: ``(sum of weight * delta, total
    weight, updates seen)``. No reference to an update is kept after it is added, so a lazy
    iterable is aggregated in O(model) memory.

    Raises ValueError if there are no updates, a delta does not match ``base``, or every
    weight is 0.
    """
    check_base(base)
    acc: StateDict = {}
    total = 0.0
    seen = 0
    for update in updates:
        weight = check_delta(base, update, seen)
        seen += 1
        if weight > 0:
            _accumulate(acc, base, update.delta, weight)
            total += weight
        del update  # let a streamed update be freed before the next one is produced
    if seen == 0:
        raise _no_updates()
    if total <= 0:
        raise _all_zero(seen)
    return acc, total, seen


def weighted_mean_delta(base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
    """The weighted mean delta (accumulator dtype: float32 for float32 models)."""
    acc, total, _ = weighted_delta_sum(base, updates)
    for t in acc.values():
        t.mul_(1.0 / total)
    return acc


def add_scaled_into(base: StateDict, delta: StateDict, scale: float) -> StateDict:
    """``base + scale * delta``, written over ``delta``'s storage (which the caller gives up)
    and returned in the base's dtypes."""
    result: StateDict = {}
    for name, b in base.items():
        d = delta[name]
        if d.dtype == b.dtype:
            torch.add(b, d, alpha=scale, out=d)
            result[name] = d
        else:
            result[name] = _to_dtype(torch.add(b, d, alpha=scale), b.dtype)
    return result


def collect_updates(base: StateDict, updates: Iterable[ClientUpdate]) -> list[ClientUpdate]:
    """All updates with a positive weight, checked against ``base``, for the non-streaming
    strategies. Raises ValueError if there are none."""
    check_base(base)
    kept: list[ClientUpdate] = []
    seen = 0
    for update in updates:
        if check_delta(base, update, seen) > 0:
            kept.append(update)
        seen += 1
    if seen == 0:
        raise _no_updates()
    if not kept:
        raise _all_zero(seen)
    return kept


def _column_blocks(deltas: Sequence[StateDict], name: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """(flat coordinate range, n x block float32/64 stack) over one tensor."""
    flats = [d[name].reshape(-1) for d in deltas]
    numel = flats[0].numel()
    dtype = _accumulator_dtype(flats[0].dtype)
    for start in range(0, numel, ROBUST_CHUNK_ELEMENTS):
        stop = min(start + ROBUST_CHUNK_ELEMENTS, numel)
        block = torch.stack([f[start:stop].to(dtype) for f in flats])
        yield slice(start, stop), block


def coordinate_median(base: StateDict, deltas: Sequence[StateDict]) -> StateDict:
    """Coordinate-wise median of ``deltas`` (the mean of the two middle values for an even
    count), unweighted. Fewer than half the deltas, however large, cannot move a coordinate
    outside the range of the others."""
    n = len(deltas)
    if n == 0:
        raise _no_updates()
    result: StateDict = {}
    for name, b in base.items():
        out = torch.empty(b.numel(), dtype=_accumulator_dtype(b.dtype))
        for where, block in _column_blocks(deltas, name):
            if n % 2 == 1:
                out[where] = torch.kthvalue(block, (n + 1) // 2, dim=0).values
            else:
                low = torch.kthvalue(block, n // 2, dim=0).values
                high = torch.kthvalue(block, n // 2 + 1, dim=0).values
                out[where] = low.add_(high).mul_(0.5)
        result[name] = out.reshape(b.shape)
    return result


def trim_count(n: int, beta: float) -> int:
    """How many values trimmed mean drops from each side of ``n``: floor(beta * n)."""
    return math.floor(beta * n)


def coordinate_trimmed_mean(
    base: StateDict, deltas: Sequence[StateDict], *, beta: float
) -> StateDict:
    """Coordinate-wise mean after dropping the ``floor(beta * n)`` largest and smallest
    values, unweighted; ``beta`` in [0, 0.5) so at least one value remains. Up to that many
    outliers on either side cannot move a coordinate outside the range of the others."""
    n = len(deltas)
    if n == 0:
        raise _no_updates()
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")
    k = trim_count(n, beta)
    result: StateDict = {}
    for name, b in base.items():
        out = torch.empty(b.numel(), dtype=_accumulator_dtype(b.dtype))
        for where, block in _column_blocks(deltas, name):
            kept = torch.sort(block, dim=0).values[k : n - k]
            out[where] = kept.sum(dim=0, dtype=torch.float64).div_(n - 2 * k).to(out.dtype)
        result[name] = out.reshape(b.shape)
    return result


def pairwise_squared_distances(deltas: Sequence[StateDict]) -> torch.Tensor:
    """n x n float64 squared L2 distances between the deltas, through a blocked Gram matrix
    (float64, so no catastrophic cancellation for float32 data)."""
    n = len(deltas)
    gram = torch.zeros((n, n), dtype=torch.float64)
    if n == 0:
        return gram
    for name in deltas[0]:
        flats = [d[name].reshape(-1) for d in deltas]
        for start in range(0, flats[0].numel(), ROBUST_CHUNK_ELEMENTS):
            stop = start + ROBUST_CHUNK_ELEMENTS
            block = torch.stack([f[start:stop].to(torch.float64) for f in flats])
            gram += block @ block.T
    norms = torch.diagonal(gram)
    distances = norms[:, None] + norms[None, :] - 2.0 * gram
    distances.clamp_(min=0.0)
    distances.fill_diagonal_(0.0)
    return distances


def krum_scores(distances: torch.Tensor, *, num_byzantine: int) -> torch.Tensor:
    """Krum score per delta: the sum of squared distances to its ``n - f - 2`` nearest
    other deltas (Blanchard et al. 2017). Needs ``n >= 2f + 3``."""
    n = distances.shape[0]
    check_krum_size(n, num_byzantine)
    neighbours = n - num_byzantine - 2
    others = distances.clone()
    others.fill_diagonal_(math.inf)
    nearest = torch.topk(others, neighbours, dim=1, largest=False).values
    return nearest.sum(dim=1)


def check_krum_size(n: int, num_byzantine: int) -> None:
    if n < 2 * num_byzantine + 3:
        raise ValueError(
            f"Krum with num_byzantine={num_byzantine} needs at least "
            f"{2 * num_byzantine + 3} updates (2f + 3), got {n}; wait for more updates "
            f"or lower num_byzantine"
        )


def multi_krum_select(
    deltas: Sequence[StateDict], *, num_byzantine: int, num_selected: int
) -> list[int]:
    """Indices of the ``num_selected`` deltas with the lowest Krum scores (ties: lower index
    first), in ascending score order."""
    n = len(deltas)
    if n == 0:
        raise _no_updates()
    check_krum_size(n, num_byzantine)
    if not 1 <= num_selected <= n:
        raise ValueError(f"num_selected must be in [1, {n}] for {n} updates, got {num_selected}")
    scores = krum_scores(pairwise_squared_distances(deltas), num_byzantine=num_byzantine)
    order = torch.argsort(scores, stable=True)
    return [int(i) for i in order[:num_selected]]


def clip_delta(delta: StateDict, max_norm: float) -> StateDict:
    """``delta`` scaled down to global L2 norm ``max_norm`` if it is longer; ``delta`` itself
    (not a copy) if it is within the bound."""
    total = 0.0
    for t in delta.values():
        total += float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    norm = math.sqrt(total)
    if norm <= max_norm:
        return delta
    scale = max_norm / norm
    return {name: t * scale for name, t in delta.items()}


def clip_updates(updates: Iterable[ClientUpdate], max_norm: float) -> Iterator[ClientUpdate]:
    """Lazily clip each update's delta to ``max_norm``; streams as its input does."""
    for update in updates:
        clipped = clip_delta(update.delta, max_norm)
        if clipped is update.delta:
            yield update
        else:
            yield replace(update, delta=clipped)
        del update, clipped


# Server optimisers of Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2.
# Each takes the averaged pseudo-gradient ``delta`` of one tensor and updates the first and
# second moments ``m`` and ``v`` in place.


def momentum_update_(m: torch.Tensor, delta: torch.Tensor, *, beta1: float) -> None:
    """m <- beta1 * m + (1 - beta1) * delta."""
    m.mul_(beta1).add_(delta, alpha=1.0 - beta1)


def adam_second_moment_(v: torch.Tensor, delta: torch.Tensor, *, beta2: float) -> None:
    """v <- beta2 * v + (1 - beta2) * delta^2."""
    v.mul_(beta2).addcmul_(delta, delta, value=1.0 - beta2)


def yogi_second_moment_(v: torch.Tensor, delta: torch.Tensor, *, beta2: float) -> None:
    """v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)."""
    squared = delta * delta
    direction = torch.sub(v, squared).sign_()
    v.addcmul_(squared, direction, value=-(1.0 - beta2))


def adagrad_second_moment_(v: torch.Tensor, delta: torch.Tensor) -> None:
    """v <- v + delta^2."""
    v.addcmul_(delta, delta)


def adaptive_step_into(
    base: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    *,
    eta: float,
    tau: float,
) -> torch.Tensor:
    """``base + eta * m / (sqrt(v) + tau)`` written into ``out`` (which may be the delta
    buffer the caller no longer needs)."""
    torch.sqrt(v, out=out).add_(tau)
    torch.addcdiv(base, m, out, value=eta, out=out)
    return out
