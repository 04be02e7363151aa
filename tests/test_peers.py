import importlib.util
import sys

import numpy as np
import pytest

from drn.baselines import RandomPolicy
from drn.evaluate import evaluate, time_split
from drn.features import FeatureState
from drn.mind import Dataset
from drn.online import run_live
from drn.peers import PEERS, VWPolicy, feature_lines, inclusion_probabilities
from drn.world import DAY, World, WorldConfig, log_random_order

# `make test` installs the peers group; elsewhere only the missing-dependency test runs
needs_vw = pytest.mark.skipif(importlib.util.find_spec("vowpalwabbit") is None, reason="pip install -e '.[peers]'")


def _first_batch():
    world, state = World(WorldConfig(n_users=50), seed=3), FeatureState()
    request = world.next_request()
    for news_id in request.candidates:
        state.add_news(world.item(news_id))
    return state.features(request.user, request.candidates, request.time)


def test_feature_lines_write_only_nonzero_entries_per_row():
    lines = feature_lines("|a ", np.array([[0.0, 2.0, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32))
    assert lines == ["|a 1:2 2:0.5", "|a ", "|a 0:1"]


def test_inclusion_probabilities_are_exact_for_top_slot_draw_then_order():
    pmf = np.array([0.05, 0.6, 0.1, 0.25])
    order, k = [1, 3, 2, 0], 2
    expected = np.zeros(4)  # enumerate the top-slot draw: slate = drawn + the best of the rest
    for first, p in enumerate(pmf):
        for i in [first] + [j for j in order if j != first][: k - 1]:
            expected[i] += p
    np.testing.assert_allclose(inclusion_probabilities(pmf, order, k), expected)


@needs_vw
@pytest.mark.parametrize("name", sorted(PEERS))
def test_served_slate_has_one_valid_probability_per_shown_item(name):
    policy, batch = VWPolicy(name, seed=0), _first_batch()
    shown = policy.recommend(batch, 10)
    served, _, probabilities = policy._served
    assert served is batch and len(set(shown)) == 10
    assert np.all((probabilities[shown] > 0) & (probabilities[shown] <= 1))
    policy.learn(batch, shown, [False] * 9 + [True], None)
    assert policy._served is None


@needs_vw
def test_fit_on_logs_ranks_a_later_day_better_than_chance():
    world = World(WorldConfig(n_users=100), seed=11)
    logs = log_random_order(world, world.now + 2 * DAY, np.random.default_rng(0))
    news = {n: world.item(n) for imp in logs for n in imp.candidates + imp.history}
    train, test = time_split(Dataset(logs, news), test_days=1)
    policy = VWPolicy("vw-squarecb", seed=0)
    policy.fit(train)
    assert evaluate(policy, train, test)["auc"] > 0.6


@needs_vw
@pytest.mark.parametrize("name", sorted(PEERS))
def test_vw_peer_learning_live_beats_random(name):
    results = {}
    for label, policy in (("random", RandomPolicy(seed=0)), (name, VWPolicy(name, seed=0))):
        results[label] = run_live(policy, World(WorldConfig(n_users=200), seed=4), FeatureState(), 2500)
    warm = {label: r.ctr(skip_fraction=0.4) for label, r in results.items()}
    assert warm[name] > 1.2 * warm["random"], warm


def test_missing_vowpalwabbit_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vowpalwabbit", None)  # makes `import vowpalwabbit` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[peers\]'"):
        VWPolicy("vw-egreedy")
