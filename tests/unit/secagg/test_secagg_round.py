"""Whole rounds: the unmasked sum is the plain sum within the codec's error, with dropouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from secagg_helpers import SHAPES, params_for, random_updates

from federated.secagg import Dropouts, RoundParameters, SecAggAbort, run_round
from federated.tensors import l2_norm


def plain_sum(
    updates: dict[int, dict[str, torch.Tensor]], who: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    return {
        name: sum((updates[i][name] for i in who), torch.zeros(shape))
        for name, shape in SHAPES.items()
    }


def check_sum(
    params: RoundParameters,
    updates: dict[int, dict[str, torch.Tensor]],
    dropouts: Dropouts | None = None,
) -> tuple[int, ...]:
    report = run_round(params, updates, dropouts=dropouts)
    result = report.result
    expected = plain_sum(updates, result.survivors)
    errors = np.concatenate([(result.total[k] - expected[k]).reshape(-1).numpy() for k in SHAPES])
    m, scale = len(result.survivors), params.codec.scale
    assert result.error_bound == pytest.approx(m * scale)
    assert np.abs(errors).max() <= result.error_bound
    # Stochastic rounding errors are independent, each of variance <= scale^2 / 4.
    assert np.sqrt(np.mean(errors.astype(np.float64) ** 2)) <= 1.15 * scale * np.sqrt(m) / 2
    # And the sum is far from trivially small next to that error.
    assert (
        np.abs(np.concatenate([expected[k].reshape(-1).numpy() for k in SHAPES])).mean() > 3 * scale
    )
    return result.survivors


@pytest.mark.parametrize("n", [10, 50])
def test_sum_matches_plain_sum_within_codec_error(n: int) -> None:
    updates = random_updates(n, std=0.01, seed=n)
    params = params_for(n, entry_bound=0.05)
    assert check_sum(params, updates) == tuple(range(n))


def test_default_entry_bound_is_the_clip_norm() -> None:
    updates = random_updates(10, std=0.05, seed=3)
    params = params_for(10, clip_norm=2.0)
    assert params.entry_bound == 2.0
    check_sum(params, updates)


def test_updates_over_the_clip_norm_are_clipped() -> None:
    updates = random_updates(10, std=1.0, seed=4)  # norms ~ 24, clipped to 1
    report = run_round(params_for(10, entry_bound=0.2), updates)
    clipped = {i: {k: v / max(1.0, l2_norm(u)) for k, v in u.items()} for i, u in updates.items()}
    expected = plain_sum(clipped, report.result.survivors)
    for k in SHAPES:
        assert (
            float((report.result.total[k] - expected[k]).abs().max()) <= report.result.error_bound
        )


def test_thirty_percent_drop_after_masking() -> None:
    """Inputs sent, then gone before unmasking: their self-masks come from neighbours' shares."""
    n = 50
    gone = frozenset(np.random.default_rng(0).choice(n, 15, replace=False).tolist())
    params = params_for(n, dropout_tolerance=0.3, entry_bound=0.05)
    survivors = check_sum(params, random_updates(n, std=0.01, seed=7), Dropouts(after_masking=gone))
    assert survivors == tuple(range(n))  # they sent their inputs: the sum includes them


def test_thirty_percent_drop_after_masking_on_a_sparse_graph() -> None:
    n = 60
    params = params_for(n, dropout_tolerance=0.1, entry_bound=0.05)
    assert (params.degree, params.threshold) == (32, 17)  # a real SecAgg+ graph, 32 of 59
    gone = frozenset(np.random.default_rng(1).choice(n, 18, replace=False).tolist())
    graph = params.graph()
    assert max(len(graph.neighbours(j) & gone) for j in range(n)) > 9  # some lose many
    check_sum(params, random_updates(n, std=0.01, seed=8), Dropouts(after_masking=gone))


def test_drop_before_masking_removes_their_pairwise_masks() -> None:
    """Shares sent, no input: the server rebuilds their s keys to cancel pairwise masks."""
    n = 20
    params = params_for(n, entry_bound=0.05)
    dropouts = Dropouts(after_sharing=frozenset({2, 5, 11}), after_masking=frozenset({7, 13}))
    survivors = check_sum(params, random_updates(n, std=0.01, seed=9), dropouts)
    assert set(survivors) == set(range(n)) - {2, 5, 11}


def test_drop_after_advertising_and_before_anything() -> None:
    n = 20
    params = params_for(n, entry_bound=0.05)
    dropouts = Dropouts(
        before_advertising=frozenset({0}),
        after_advertising=frozenset({4, 9}),
        after_sharing=frozenset({15}),
    )
    survivors = check_sum(params, random_updates(n, std=0.01, seed=10), dropouts)
    assert set(survivors) == set(range(n)) - {0, 4, 9, 15}


def test_a_32_bit_ring_gives_the_same_sum() -> None:
    updates = random_updates(10, std=0.01, seed=11)
    narrow = run_round(params_for(10, entry_bound=0.05), updates, rounding_seed=5)
    wide = run_round(params_for(10, entry_bound=0.05, ring_bits=32), updates, rounding_seed=5)
    assert wide.bytes_up[0] > narrow.bytes_up[0]
    for k in SHAPES:
        assert torch.equal(narrow.result.total[k], wide.result.total[k])


@pytest.mark.parametrize(
    ("dropouts", "reason"),
    [
        (Dropouts(before_advertising=frozenset(range(6))), "too_few_survivors"),
        (Dropouts(after_advertising=frozenset(range(5))), "too_few_neighbours"),
        (Dropouts(after_sharing=frozenset(range(5))), "too_few_neighbours"),
        (Dropouts(after_masking=frozenset(range(5))), "too_few_shares"),
    ],
)
def test_too_many_dropouts_abort_with_a_reason(dropouts: Dropouts, reason: str) -> None:
    params = params_for(10)  # k = 9, t = 5: each client must keep 5 neighbours
    with pytest.raises(SecAggAbort) as caught:
        run_round(params, random_updates(10), dropouts=dropouts)
    assert caught.value.reason == reason
    assert "fewer than" in str(caught.value)


def test_too_few_inputs_abort_even_when_shares_suffice() -> None:
    params = params_for(10, min_survivors=8)
    with pytest.raises(SecAggAbort, match="minimum of 8") as caught:
        run_round(params, random_updates(10), dropouts=Dropouts(after_sharing=frozenset({1, 2, 3})))
    assert caught.value.reason == "too_few_survivors"


def test_bytes_are_counted_per_client() -> None:
    """Every message's encoded size, exactly: 132-byte adverts, 106 bytes a sealed pair..."""
    params = params_for(10, entry_bound=0.05)  # k = 9: everyone is everyone's neighbour
    report = run_round(params, random_updates(10), dropouts=Dropouts(after_sharing=frozenset({3})))
    entries = sum(int(np.prod(s)) for s in SHAPES.values())
    advert, upload = 132, 8 + 9 * (4 + 4 + 12 + 2 + 68 + 16)
    masked = 12 + -(-entries * params.ring_bits // 8)
    response = 8 + 9 * (4 + 1 + 2 + 34)
    assert report.bytes_up[3] == advert + upload
    assert report.bytes_up[0] == advert + upload + masked + response
    setup = 121 + 4 + 9 * 36
    bundle, delivery, request = 4 + 9 * 132, upload, 8 + 9 * 4
    assert report.bytes_down[3] == setup + bundle
    assert report.bytes_down[0] == setup + bundle + delivery + request
    assert report.server_seconds > 0 and set(report.client_seconds) == set(range(10))
