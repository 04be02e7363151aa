import copy

import numpy as np
import pytest
import torch

from drn.activeness import UserActiveness
from drn.features import SCHEMA, FeatureState, replay
from drn.mind import Dataset, Impression, NewsItem
from drn.model import NetworkConfig, build_network, network_from_weights
from drn.training import TrainConfig, Trainer, double_dqn_targets, train
from drn.world import World, WorldConfig, log_random_order, DAY

TINY = NetworkConfig(hidden=(16,))
FAST = TrainConfig(epochs=1, buffer_impressions=256, batch_impressions=8, train_every=2, target_every=10)


@pytest.fixture(scope="module")
def world_logs():
    world = World(WorldConfig(n_users=80), seed=5)
    logs = log_random_order(world, world.now + 1 * DAY, np.random.default_rng(0))
    news = {n: world.item(n) for imp in logs for n in imp.candidates + imp.history}
    return Dataset(logs, news)


def _batch(rng: np.random.Generator, b: int = 4, n: int = 3) -> dict[str, torch.Tensor]:
    ds, da = SCHEMA.state_dim, SCHEMA.action_dim
    f = lambda *shape: torch.from_numpy(rng.random(shape, dtype=np.float32))
    next_mask = torch.ones(b, n)
    next_mask[0, 2] = 0.0
    return {"state": f(b, ds), "action": f(b, n, da), "mask": torch.ones(b, n), "reward": f(b, n),
            "next_state": f(b, ds), "next_action": f(b, n, da), "next_mask": next_mask,
            "done": torch.tensor([0.0, 0.0, 1.0, 0.0])}


def test_double_dqn_target_picks_with_online_and_values_with_target_network():
    batch = _batch(np.random.default_rng(0))
    online, target = build_network(TINY, seed=1), build_network(TINY, seed=2)
    y = double_dqn_targets(batch, online, target, gamma=0.4)
    with torch.no_grad():
        q_online = online(batch["next_state"], batch["next_action"]).masked_fill(batch["next_mask"] == 0, -torch.inf)
        q_target = target(batch["next_state"], batch["next_action"])
    for i in range(4):
        best = int(q_online[i].argmax())
        future = 0.0 if batch["done"][i] else float(q_target[i, best])
        assert y[i].numpy() == pytest.approx((batch["reward"][i] + 0.4 * future).numpy(), abs=1e-5)
    # Not the target's own max (that would be plain DQN), unless both networks agree.
    plain = batch["reward"] + 0.4 * q_target.masked_fill(batch["next_mask"] == 0, -torch.inf).max(1).values[:, None]
    assert not torch.allclose(y[[0, 1, 3]], plain[[0, 1, 3]])


def test_gamma_zero_is_dn_reward_only():
    batch = _batch(np.random.default_rng(1))
    y = double_dqn_targets(batch, build_network(TINY), build_network(TINY, seed=3), gamma=0.0)
    assert torch.equal(y, batch["reward"])


def test_mean_aggregation_centres_advantages_over_real_candidates():
    net = build_network(NetworkConfig(hidden=(8,), aggregation="mean"), seed=0)
    rng = np.random.default_rng(2)
    state = torch.from_numpy(rng.random((1, SCHEMA.state_dim), dtype=np.float32))
    action = torch.from_numpy(rng.random((1, 5, SCHEMA.action_dim), dtype=np.float32))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    q = net(state, action, mask)[0, :3]
    assert float(q.mean()) == pytest.approx(float(net.value(state)), abs=1e-5)
    with pytest.raises(ValueError, match="aggregation"):
        build_network(NetworkConfig(aggregation="max"))


def test_training_is_deterministic_and_learns(world_logs):
    runs = []
    for _ in range(2):
        net = build_network(TINY, seed=0)
        summary = train(net, world_logs, FAST)
        runs.append((net.state_dict(), summary))
    (w1, s1), (w2, s2) = runs
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert s1["steps"] > 50 and np.isfinite(s1["loss"])
    assert not torch.equal(w1["advantage.0.weight"], build_network(TINY, seed=0).state_dict()["advantage.0.weight"])


def test_a_window_whose_users_come_once_still_trains_one_step_per_train_every_impressions(world_logs):
    # each user's first impression only: no transition completes during the pass, all enter the buffer at its end
    firsts = list({imp.user: imp for imp in reversed(world_logs.impressions)}.values())[::-1]
    assert len(firsts) > FAST.batch_impressions
    network = build_network(TINY, seed=0)
    before = copy.deepcopy(network.state_dict())
    summary = train(network, Dataset(firsts, world_logs.news), FAST)
    assert summary["steps"] == len(firsts) // FAST.train_every
    assert any(not torch.equal(before[k], network.state_dict()[k]) for k in before)


def test_replay_buffer_stays_bounded_as_logs_grow(world_logs):
    trainer = Trainer(build_network(TINY), FAST)
    trainer.fit(world_logs.impressions, world_logs.news)
    assert len(world_logs.impressions) > 2 * FAST.buffer_impressions
    assert trainer.buffer.size == FAST.buffer_impressions
    assert trainer.buffer.state.shape[0] == FAST.buffer_impressions


def test_warm_start_continues_from_given_weights(world_logs):
    trained = build_network(TINY, seed=0)
    train(trained, world_logs, FAST)
    warm = network_from_weights(TINY.to_dict(), copy.deepcopy(trained.state_dict()))
    fresh_distance = sum(float((a - b).abs().sum()) for a, b in
                         zip(trained.state_dict().values(), build_network(TINY, seed=9).state_dict().values()))
    train(warm, world_logs, TrainConfig(epochs=1, buffer_impressions=64, batch_impressions=8, train_every=8, seed=1))
    moved = sum(float((a - b).abs().sum()) for a, b in zip(trained.state_dict().values(), warm.state_dict().values()))
    assert 0 < moved < fresh_distance


def test_streamed_logs_train_exactly_like_a_list(world_logs, tmp_path):
    from drn.mind import MindFormatError, iter_time_ordered, write_behaviors
    write_behaviors(tmp_path / "behaviors.tsv", world_logs.impressions[:300])
    listed, streamed = build_network(TINY, seed=0), build_network(TINY, seed=0)
    as_list = [imp for imp in iter_time_ordered(tmp_path / "behaviors.tsv")]
    Trainer(listed, FAST).fit(as_list, world_logs.news)
    Trainer(streamed, FAST).fit(lambda: iter_time_ordered(tmp_path / "behaviors.tsv"), world_logs.news)
    assert all(torch.equal(a, b) for a, b in zip(listed.state_dict().values(), streamed.state_dict().values()))
    write_behaviors(tmp_path / "behaviors.tsv", world_logs.impressions[:3][::-1])
    with pytest.raises(MindFormatError, match="not in time order"):
        list(iter_time_ordered(tmp_path / "behaviors.tsv"))


def _rewards(impressions: list[Impression], config: TrainConfig) -> list[float]:
    """The reward of each transition the trainer stores, in the order it stores them (clicks are 0 here)."""
    news = {n: NewsItem(n, "sports", "", "") for n in ("n1", "n2")}
    trainer = Trainer(build_network(NetworkConfig(), seed=0), config)
    for sample in replay(impressions, FeatureState(news)):
        trainer.observe(sample)
    trainer.end_pass()
    return trainer.buffer.reward[: trainer.buffer.size, 0].tolist()


def test_a_reported_return_is_when_the_user_came_back_in_the_activeness_reward():
    """/feedback returns feed the reward: a user who reported coming back an hour after an impression counts as
    back then, though their next request came a day later; one who never requested again, as back at the return."""
    hour, config = 3600.0, TrainConfig(beta=1.0, next_state_horizon_s=48 * 3600.0)
    later = Impression("i2", "u1", 24 * hour, (), ("n1", "n2"), (0, 0))
    silent = [Impression("i1", "u1", 0.0, (), ("n1", "n2"), (0, 0)), later]
    told = [Impression("i1", "u1", 0.0, (), ("n1", "n2"), (0, 0), returned=hour),
            Impression("i2", "u1", 24 * hour, (), ("n1", "n2"), (0, 0), returned=25 * hour)]
    tracker = UserActiveness(lambda0=config.activeness_lambda0, sa=config.activeness_sa)
    tracker.observe_return("u1", 0.0)
    back_in_an_hour, back_in_a_day = tracker.reward("u1", 0.0, hour), tracker.reward("u1", 0.0, 24 * hour)
    assert back_in_an_hour > back_in_a_day
    assert _rewards(silent, config)[0] == pytest.approx(back_in_a_day)
    first, terminal = _rewards(told, config)
    assert first == pytest.approx(back_in_an_hour)
    assert terminal > _rewards(silent, config)[1]  # the last request's user came back (reported), not away
