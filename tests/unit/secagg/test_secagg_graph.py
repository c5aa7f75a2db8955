"""The SecAgg+ graph: k-regular and symmetric, seeded, with k ~ log n and t a majority."""

from __future__ import annotations

import pytest

from federated.secagg import CommunicationGraph, abort_probability, choose_degree, threshold_for


@pytest.mark.parametrize(
    ("n", "dropout", "expected"),
    [(100, 0.1, (34, 18)), (1000, 0.1, (38, 20)), (10_000, 0.1, (42, 22)), (10, 0.3, (9, 5))],
)
def test_degree_grows_slowly_with_n(n: int, dropout: float, expected: tuple[int, int]) -> None:
    assert choose_degree(n, dropout_tolerance=dropout) == expected


@pytest.mark.parametrize("n", [3, 4, 10, 50, 100, 1000])
@pytest.mark.parametrize("dropout", [0.01, 0.1, 0.3, 0.45])
def test_chosen_degree_meets_its_failure_target_with_a_majority_threshold(
    n: int, dropout: float
) -> None:
    k, t = choose_degree(n, dropout_tolerance=dropout, failure_probability=1e-6)
    assert 2 * t > k >= t >= 2
    assert k == n - 1 or (k % 2 == 0 and abort_probability(n, k, dropout) <= 1e-6)
    if k < n - 1 and k > 2:
        assert abort_probability(n, k - 2, dropout) > 1e-6  # the smallest that does


def test_abort_probability_is_a_binomial_tail() -> None:
    # k = 4, t = 3, survive with 0.9: P[at most 2 of 4 survive] = 1 - 0.9^4 - 4 * 0.9^3 * 0.1
    assert abort_probability(1, 4, 0.1) == pytest.approx(1 - 0.9**4 - 4 * 0.9**3 * 0.1)
    assert abort_probability(1000, 4, 0.4) == 1.0


@pytest.mark.parametrize(("n", "dropout"), [(2, 0.1), (10, 0.0), (10, 0.5)])
def test_choose_degree_refuses_rounds_it_cannot_protect(n: int, dropout: float) -> None:
    with pytest.raises(ValueError):
        choose_degree(n, dropout_tolerance=dropout)


@pytest.mark.parametrize(("n", "k"), [(20, 4), (50, 10), (11, 10), (12, 11), (3, 2)])
def test_graph_is_regular_symmetric_and_connected(n: int, k: int) -> None:
    graph = CommunicationGraph(num_clients=n, degree=k, seed=b"s" * 32)
    for i in range(n):
        assert len(graph.neighbours(i)) == k and i not in graph.neighbours(i)
        assert all(i in graph.neighbours(j) for j in graph.neighbours(i))
    reached, frontier = {0}, [0]
    while frontier:
        nxt = [j for i in frontier for j in graph.neighbours(i) if j not in reached]
        reached.update(nxt)
        frontier = nxt
    assert reached == set(range(n))


def test_graph_is_determined_by_its_seed() -> None:
    a = CommunicationGraph(num_clients=40, degree=6, seed=b"a" * 32)
    again = CommunicationGraph(num_clients=40, degree=6, seed=b"a" * 32)
    other = CommunicationGraph(num_clients=40, degree=6, seed=b"b" * 32)
    assert all(a.neighbours(i) == again.neighbours(i) for i in range(40))
    assert any(a.neighbours(i) != other.neighbours(i) for i in range(40))
    # A shuffled ring: neighbours are not simply the adjacent indices.
    assert a.neighbours(0) != frozenset({37, 38, 39, 1, 2, 3})


@pytest.mark.parametrize(("n", "k"), [(10, 3), (10, 0), (10, 10), (2, 1)])
def test_graph_refuses_degrees_it_cannot_build(n: int, k: int) -> None:
    with pytest.raises(ValueError):
        CommunicationGraph(num_clients=n, degree=k, seed=bytes(32))


def test_threshold_is_a_strict_majority() -> None:
    assert [threshold_for(k) for k in (2, 3, 4, 9, 34)] == [2, 2, 3, 5, 18]
