"""Serving's stacked numpy scoring computes what the networks compute."""
from __future__ import annotations

import numpy as np
import pytest

from drn.exploration import explore_weights
from drn.features import FeatureBatch, FeatureState
from drn.mind import NewsItem
from drn.model import NetworkConfig, build_network, network_from_weights
from drn.policy import rankings, top_k
from drn.scoring import StackedScorer


def _batch(rng: np.random.Generator, config: NetworkConfig, n: int, density: float) -> FeatureBatch:
    state = rng.standard_normal(config.state_dim).astype(np.float32) * (rng.random(config.state_dim) < density)
    action = rng.standard_normal((n, config.action_dim)).astype(np.float32)
    return FeatureBatch(state, action, tuple(f"N{i}" for i in range(n)))


@pytest.mark.parametrize("config", [NetworkConfig(), NetworkConfig(aggregation="mean"),
                                    NetworkConfig(hidden=(32,)), NetworkConfig(hidden=())])
def test_stacked_scores_equal_each_networks_forward_pass(config):
    exploit = build_network(config, seed=1)
    explore = network_from_weights(config, explore_weights(exploit.state_dict(), seed=5, alpha=0.1))
    rng = np.random.default_rng(0)
    for n, density in ((50, 0.2), (1, 1.0), (7, 0.0)):
        batch = _batch(rng, config, n, density)
        expected = np.stack([exploit.score(batch), explore.score(batch)])
        together = StackedScorer([exploit, explore]).score(batch)
        assert together.shape == (2, n)
        np.testing.assert_allclose(together, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(StackedScorer([explore]).score(batch)[0], expected[1], rtol=1e-5, atol=1e-6)


def test_stacked_scoring_ranks_like_the_network():
    network = build_network(NetworkConfig(), seed=2)
    batch = _batch(np.random.default_rng(3), network.config, 50, 0.2)
    assert np.array_equal(np.argsort(-StackedScorer([network]).score(batch)[0]), np.argsort(-network.score(batch)))


def test_networks_of_different_shapes_are_not_stacked():
    with pytest.raises(ValueError, match="share one config"):
        StackedScorer([build_network(NetworkConfig()), build_network(NetworkConfig(hidden=(32,)))])


def test_rankings_sort_every_row_like_top_k_ties_in_candidate_order():
    scores = np.array([[0.5, 2.0, 0.5, -1.0], [1.0, 1.0, 3.0, 1.0]], dtype=np.float32)
    assert rankings(scores) == [top_k(scores[0], 4), top_k(scores[1], 4)] == [[1, 0, 2, 3], [2, 0, 1, 3]]


def test_per_item_work_follows_each_items_description():
    """Batches taken from a FeatureState let the scorer keep each item's product with its description; a changed
    description (a new category, an item first seen without metadata) must be scored with the new one."""
    exploit = build_network(NetworkConfig(), seed=4)
    explore = network_from_weights(exploit.config, explore_weights(exploit.state_dict(), seed=6, alpha=0.1))
    scorer = StackedScorer([exploit, explore])
    state = FeatureState({f"N{i}": NewsItem(f"N{i}", f"cat{i % 5}", f"sub{i}", entities=(f"E{i}",))
                          for i in range(1100)})  # more item rows than the scorer first makes room for
    state.record_click("U1", "N3", 0.0)
    candidates = [f"N{i}" for i in range(0, 30, 2)] + ["N9999"]  # N9999: never described

    def check(time: float) -> None:
        batch = state.features("U1", candidates, time)
        expected = np.stack([exploit.score(batch), explore.score(batch)])
        np.testing.assert_allclose(scorer.score(batch), expected, rtol=1e-5, atol=1e-5)

    check(10.0)
    check(20.0)  # every item's product reused
    state.add_news(NewsItem("N4", "sports", "football", entities=("E1", "E2")))
    state.add_news(NewsItem("N9999", "news", "world"))
    check(30.0)
    candidates += ["N1050", "N1099"]  # rows past the first 1024: the kept products grow, the earlier ones stay
    check(40.0)
