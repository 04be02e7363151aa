import numpy as np
import pytest

from drn.baselines import LinUCBPolicy, PopularityPolicy, RandomPolicy
from drn.evaluate import evaluate, time_split
from drn.features import FeatureState
from drn.mind import Dataset
from drn.online import run_live
from drn.world import DAY, World, WorldConfig, log_random_order


@pytest.fixture(scope="module")
def world_split():
    world = World(WorldConfig(n_users=200), seed=11)
    logs = log_random_order(world, world.now + 3 * DAY, np.random.default_rng(0))
    news = {n: world.item(n) for imp in logs for n in imp.candidates + imp.history}
    return time_split(Dataset(logs, news), test_days=1)


def test_popularity_beats_random_on_mind_time_split(mind_split):
    train, test = mind_split
    random_auc = evaluate(RandomPolicy(seed=0), train, test)["auc"]
    popularity_auc = evaluate(PopularityPolicy(), train, test)["auc"]
    assert popularity_auc > random_auc + 0.02, (popularity_auc, random_auc)


def test_popularity_beats_random_and_linucb_beats_both_on_world_logs(world_split):
    train, test = world_split
    random_auc = evaluate(RandomPolicy(seed=0), train, test)["auc"]
    popularity_auc = evaluate(PopularityPolicy(), train, test)["auc"]
    linucb = LinUCBPolicy()
    linucb.fit(train)
    linucb_auc = evaluate(linucb, train, test)["auc"]
    assert abs(random_auc - 0.5) < 0.03
    assert popularity_auc > random_auc + 0.02
    assert linucb_auc > popularity_auc + 0.05


def test_linucb_beats_popularity_live_after_warm_up():
    results = {}
    for name, policy in (("popularity", PopularityPolicy()), ("linucb", LinUCBPolicy())):
        results[name] = run_live(policy, World(WorldConfig(n_users=200), seed=4), FeatureState(), 2500)
    warm = {name: r.ctr(skip_fraction=0.4) for name, r in results.items()}
    assert warm["linucb"] > 1.3 * warm["popularity"], warm


def test_linucb_woodbury_update_matches_direct_solution(world_split):
    train, _ = world_split
    policy = LinUCBPolicy(ridge=2.0)
    small = Dataset(train.impressions[:40], train.news)
    policy.fit(small)
    state, xs, ys = FeatureState(train.news), [], []
    from drn.features import replay
    for sample in replay(small.impressions, state):
        xs.append(LinUCBPolicy._design(sample.batch))
        ys.extend(sample.impression.labels)
    x = np.vstack(xs)
    theta = np.linalg.solve(2.0 * np.eye(x.shape[1]) + x.T @ x, x.T @ np.asarray(ys, dtype=float))
    np.testing.assert_allclose(policy.theta, theta, rtol=1e-6, atol=1e-8)
