"""DBGD's explore network and step, and the epsilon-greedy explorer."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from drn.exploration import ALPHA, ETA, EpsilonGreedy, dbgd_step, explore_weights


def make_weights() -> dict[str, torch.Tensor]:
    """A small state_dict: two linear layers and a BatchNorm, with its integer buffer."""
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for key, value in net.state_dict().items():
        if value.is_floating_point():
            weights[key] = torch.rand(value.shape, generator=generator) * 2 - 1
        else:
            weights[key] = torch.full_like(value, 7)
    return weights


def all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_regeneration_is_bit_identical_and_independent_of_key_order_and_global_rng():
    w = make_weights()
    first = explore_weights(w, seed=123)
    with torch.random.fork_rng():
        torch.manual_seed(999)
        again = explore_weights(w, seed=123)
    reordered = explore_weights(dict(reversed(list(w.items()))), seed=123)
    assert all_equal(first, again)
    assert all_equal(first, reordered)
    assert list(first) == list(w)


def test_a_different_seed_gives_a_different_explore_network():
    w = make_weights()
    a, b = explore_weights(w, seed=1), explore_weights(w, seed=2)
    assert not torch.equal(a["0.weight"], b["0.weight"])


def test_alpha_zero_is_the_served_network():
    w = make_weights()
    assert all_equal(explore_weights(w, seed=5, alpha=0.0), w)


@pytest.mark.parametrize("noise", ["element", "tensor"])
def test_perturbation_is_within_alpha_times_w(noise):
    w = make_weights()
    explored = explore_weights(w, seed=3, alpha=ALPHA, noise=noise)
    for key, tensor in w.items():
        if tensor.is_floating_point():
            delta = explored[key] - tensor
            assert torch.all(delta.abs() <= ALPHA * tensor.abs() * (1 + 1e-6))


def test_element_noise_covers_minus_one_to_one_per_element():
    w = {"big": torch.full((100, 100), 2.0)}
    u = (explore_weights(w, seed=4, alpha=0.5)["big"] - 2.0) / (0.5 * 2.0)
    assert u.min() < -0.99 and u.max() > 0.99
    assert abs(u.mean().item()) < 0.02
    assert u.unique().numel() > 9000


def test_tensor_noise_scales_each_tensor_by_one_factor():
    w = make_weights()
    explored = explore_weights(w, seed=4, noise="tensor")
    factors = set()
    for key in ("0.weight", "2.weight", "1.running_mean"):
        ratio = explored[key] / w[key]
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))
        factors.add(round(ratio.flatten()[0].item(), 6))
    assert len(factors) == 3


def test_integer_buffers_are_copied_untouched():
    w = make_weights()
    explored = explore_weights(w, seed=8, alpha=0.5)
    assert torch.equal(explored["1.num_batches_tracked"], w["1.num_batches_tracked"])
    assert explored["1.num_batches_tracked"].dtype == torch.int64
    explored["1.num_batches_tracked"].add_(1)
    assert w["1.num_batches_tracked"].item() == 7


def test_explore_weights_do_not_change_the_input():
    w = make_weights()
    before = {k: v.clone() for k, v in w.items()}
    explore_weights(w, seed=9, alpha=0.5)
    assert all_equal(w, before)


def test_invalid_arguments_are_rejected():
    w = make_weights()
    with pytest.raises(ValueError):
        explore_weights(w, seed=0, noise="row")
    with pytest.raises(ValueError):
        explore_weights(w, seed=0, alpha=-0.1)
    with pytest.raises(ValueError):
        dbgd_step(w, w, form="adam")
    with pytest.raises(ValueError, match="keys"):
        dbgd_step(w, {k: v for k, v in w.items() if k != "2.bias"})


SMALL_W = {"w": torch.tensor([1.0, 2.0, -4.0]), "steps": torch.tensor(3)}
SMALL_EXPLORE = {"w": torch.tensor([3.0, -2.0, -4.0]), "steps": torch.tensor(9)}


def test_standard_step_moves_along_the_perturbation():
    stepped = dbgd_step(SMALL_W, SMALL_EXPLORE, eta=0.5)
    assert torch.equal(stepped["w"], torch.tensor([2.0, 0.0, -4.0]))
    assert torch.equal(stepped["steps"], torch.tensor(3))


def test_literal_step_adds_eta_times_the_explore_weights():
    stepped = dbgd_step(SMALL_W, SMALL_EXPLORE, eta=0.5, form="literal")
    assert torch.equal(stepped["w"], torch.tensor([2.5, 1.0, -6.0]))
    assert torch.equal(stepped["steps"], torch.tensor(3))


def test_default_step_uses_eta_and_recovers_w_from_a_regenerated_explore_network():
    w = make_weights()
    explored = explore_weights(w, seed=11)
    stepped = dbgd_step(w, explored)
    for key in ("0.weight", "2.bias"):
        assert torch.allclose(stepped[key], w[key] + ETA * (explored[key] - w[key]))
        assert not torch.equal(stepped[key], w[key])


def test_epsilon_zero_is_the_greedy_sort():
    scores = [0.3, 0.9, -1.0, 0.5, 0.9]
    explorer = EpsilonGreedy(0.0, np.random.default_rng(0))
    for _ in range(5):
        assert explorer.rank(scores) == [1, 4, 3, 0, 2]


def test_epsilon_one_ranks_uniformly_at_random():
    scores = [4.0, 3.0, 2.0, 1.0]
    explorer = EpsilonGreedy(1.0, np.random.default_rng(1))
    draws = 24_000
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for _ in range(draws):
        counts[tuple(explorer.rank(scores))] += 1
    expected = draws / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 49.7  # chi-square, 23 degrees of freedom, p = 0.001


def test_intermediate_epsilon_mixes_per_position():
    n, epsilon, draws = 5, 0.5, 8000
    explorer = EpsilonGreedy(epsilon, np.random.default_rng(2))
    rankings = [explorer.rank([5.0, 4.0, 3.0, 2.0, 1.0]) for _ in range(draws)]
    top_first = sum(r[0] == 0 for r in rankings) / draws
    assert math.isclose(top_first, (1 - epsilon) + epsilon / n, abs_tol=0.02)
    assert all(sorted(r) == list(range(n)) for r in rankings)


def test_epsilon_greedy_is_deterministic_by_seed_and_checks_epsilon():
    scores = list(range(10))
    a = [EpsilonGreedy(0.3, np.random.default_rng(5)).rank(scores) for _ in range(3)]
    b = [EpsilonGreedy(0.3, np.random.default_rng(5)).rank(scores) for _ in range(3)]
    assert a == b
    with pytest.raises(ValueError):
        EpsilonGreedy(1.5, np.random.default_rng(0))
