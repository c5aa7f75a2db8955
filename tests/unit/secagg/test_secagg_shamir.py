"""Shamir sharing: any t of n shares give the secret back; t - 1 do not."""

from __future__ import annotations

import itertools
import os

import pytest

from federated.secagg import shamir


@pytest.mark.parametrize(("n", "t"), [(5, 3), (6, 6), (7, 1), (8, 5)])
def test_every_set_of_t_shares_reconstructs(n: int, t: int) -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=t, xs=list(range(1, n + 1)))
    for chosen in itertools.combinations(shares.values(), t):
        assert shamir.combine(list(chosen), threshold=t) == secret
    assert shamir.combine(list(shares.values()), threshold=t) == secret


def test_sparse_points_like_client_indices() -> None:
    secret = os.urandom(32)
    xs = [4, 17, 9, 33, 2, 101, 58]
    shares = shamir.split(secret, threshold=4, xs=xs)
    assert shamir.combine([shares[x] for x in (101, 2, 58, 9)], threshold=4) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    shares = shamir.split(os.urandom(32), threshold=4, xs=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="need 4 distinct shares"):
        shamir.combine([shares[1], shares[2], shares[3]], threshold=4)
    with pytest.raises(ValueError, match="need 4 distinct shares"):
        shamir.combine([shares[1], shares[1], shares[2], shares[3]], threshold=4)


def test_t_minus_one_shares_interpolate_to_a_wrong_secret() -> None:
    """Forcing a reconstruction from t - 1 points fits the wrong polynomial every time."""
    for _ in range(20):
        secret = os.urandom(32)
        shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4])
        for pair in itertools.combinations(shares.values(), 2):
            assert reconstruct_or_none(list(pair), 2) != secret


def test_a_changed_share_changes_the_result() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3])
    bad = shamir.Share(2, ((shares[2].values[0] + 1) % shamir.PRIME, shares[2].values[1]))
    assert reconstruct_or_none([shares[1], bad, shares[3]], 3) != secret


def reconstruct_or_none(shares: list[shamir.Share], threshold: int) -> bytes | None:
    """The secret ``combine`` finds, or None where a chunk fell outside 16 bytes."""
    try:
        return shamir.combine(shares, threshold=threshold)
    except ValueError:
        return None


def test_share_bytes_round_trip_and_checks() -> None:
    share = shamir.split(os.urandom(32), threshold=2, xs=[7, 8])[7]
    data = share.value_bytes()
    assert len(data) == 2 * shamir.ELEMENT_BYTES
    assert shamir.Share.from_value_bytes(7, data) == share
    with pytest.raises(ValueError, match="multiple of 17"):
        shamir.Share.from_value_bytes(7, data[:-1])
    with pytest.raises(ValueError, match="field elements"):
        shamir.Share.from_value_bytes(7, b"\xff" * 17)
    with pytest.raises(ValueError, match="x must be"):
        shamir.Share(0, (1,))


@pytest.mark.parametrize(
    ("secret", "threshold", "xs", "message"),
    [
        (b"short", 2, [1, 2], "multiple of 16"),
        (bytes(32), 3, [1, 2], "threshold must be"),
        (bytes(32), 2, [1, 1, 2], "distinct"),
        (bytes(32), 2, [0, 1], "distinct and in"),
    ],
)
def test_split_refuses_bad_arguments(
    secret: bytes, threshold: int, xs: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        shamir.split(secret, threshold=threshold, xs=xs)
