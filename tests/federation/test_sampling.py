"""Which sites a one-off query goes to when only a fraction is sampled per round."""

from __future__ import annotations

from medfl.federation import sample_nodes

NODES = list(range(5000, 6000))  # 1,000 node ids


def test_fraction_one_asks_every_node_in_order():
    assert sample_nodes(reversed(NODES), 1.0, minimum=4, seed=0) == NODES


def test_a_tenth_of_a_thousand_is_a_hundred_distinct_nodes_fixed_by_the_seed():
    picked = sample_nodes(NODES, 0.1, minimum=4, seed=7)
    assert len(picked) == len(set(picked)) == 100 and set(picked) <= set(NODES)
    assert sample_nodes(NODES, 0.1, minimum=4, seed=7) == picked
    assert sample_nodes(NODES, 0.1, minimum=4, seed=8) != picked


def test_the_minimum_and_the_number_of_nodes_bound_the_sample():
    # as many as Flower's strategies sample per round: int(fraction * n), at least minimum
    assert len(sample_nodes(NODES, 0.001, minimum=4, seed=0)) == 4  # int(1.0) = 1 < 4
    assert len(sample_nodes(NODES[:3], 0.5, minimum=4, seed=0)) == 3
    assert len(sample_nodes(NODES[:7], 0.5, minimum=2, seed=0)) == 3  # int(3.5)
