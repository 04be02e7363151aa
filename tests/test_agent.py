"""The DRN agent: offline quality on MIND, and the online loop (DBGD minor updates, major updates) in the world."""
import copy

import pytest
import torch

from drn.agent import DRNPolicy, OnlineConfig
from drn.baselines import PopularityPolicy
from drn.evaluate import evaluate
from drn.features import SCHEMA, FeatureState
from drn.learners import LearnerConfig
from drn.model import NetworkConfig, build_network, set_threads
from drn.online import run_live
from drn.training import TrainConfig
from drn.world import World, WorldConfig


@pytest.mark.slow
def test_drn_beats_popularity_on_mind_time_split(mind_split):
    set_threads()
    train, test = mind_split
    drn = DRNPolicy(train_config=TrainConfig(epochs=2), choose_settings=False)  # the choice: tests/test_selection.py
    drn.fit(train)
    drn_auc = evaluate(drn, train, test)["auc"]
    popularity_auc = evaluate(PopularityPolicy(), train, test)["auc"]
    assert drn_auc > popularity_auc + 0.02, (drn_auc, popularity_auc)


def _linear(weights: dict[str, float]):
    """A one-layer Q-network whose advantage reads the named feature blocks with the given weights."""
    net = build_network(NetworkConfig(hidden=()), seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for name, value in weights.items():
            part, where = SCHEMA.index(name)
            offset = 0 if part == "state" else SCHEMA.state_dim
            net.advantage[0].weight[0, offset + where.start: offset + where.stop] = value
    return net


def _greedy_ctr(net, impressions=1500) -> float:
    world = World(WorldConfig(n_users=300), seed=3)
    return run_live(DRNPolicy(copy.deepcopy(net)), world, FeatureState(), impressions).ctr()


@pytest.mark.slow
def test_dbgd_minor_updates_lift_a_degraded_model():
    set_threads()
    # Personal overlap and freshness matter in the world; the degraded model reads them but also prefers old news.
    degraded = _linear({"user_news.overlap_all": 1.0, "user_news.overlap_24h": 0.5, "freshness.decay": 1.0,
                        "news.clicks_1h": 0.3, "freshness.log_age_hours": 1.5})
    agent = DRNPolicy(copy.deepcopy(degraded), OnlineConfig(explorer="dbgd", learner=LearnerConfig(alpha=0.5, eta=0.5), seed=1))
    run_live(agent, World(WorldConfig(n_users=300), seed=2), FeatureState(), 6000)
    minors = [e for e in agent.events if e["kind"] == "minor"]
    assert len(minors) > 20 and any(e["stepped"] for e in minors)
    before, after = _greedy_ctr(degraded), _greedy_ctr(agent.network)
    assert after > before * 1.4, (before, after)


def test_online_loop_runs_minor_and_major_updates_on_world_time():
    set_threads()
    net = build_network(NetworkConfig(hidden=(16,)), seed=0)
    config = OnlineConfig(explorer="dbgd", major_updates=True, minor_every_s=1800, major_every_s=3600)
    agent = DRNPolicy(net, config, TrainConfig(batch_impressions=8, buffer_impressions=512))
    result = run_live(agent, World(WorldConfig(n_users=100), seed=0), FeatureState(), 600)
    hours = (result.times[-1] - result.times[0]) / 3600
    minors = [e for e in agent.events if e["kind"] == "minor"]
    majors = [e for e in agent.events if e["kind"] == "major"]
    assert abs(len(minors) - 2 * hours) <= 2 and abs(len(majors) - hours) <= 2
    assert all(e["steps"] > 0 for e in majors) and agent.trainer.steps > 0
    assert all(s == 10 for s in result.shown) and 0 < result.ctr() < 0.5


def test_egreedy_explores_and_greedy_does_not():
    net = build_network(NetworkConfig(hidden=(16,)), seed=0)
    world = World(WorldConfig(n_users=50), seed=0)
    request = world.next_request()
    batch = FeatureState().features(request.user, request.candidates, request.time)
    greedy = DRNPolicy(copy.deepcopy(net))
    egreedy = DRNPolicy(copy.deepcopy(net), OnlineConfig(explorer="egreedy", epsilon=1.0))
    assert all(greedy.recommend(batch, 10) == greedy.recommend(batch, 10) for _ in range(3))
    assert len({tuple(egreedy.recommend(batch, 10)) for _ in range(5)}) > 1
