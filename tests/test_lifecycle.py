"""The lifecycle steps without Prefect or MLflow: gate, minor-update decisions, replay lineage, round seeds, and the
two training steps on a tiny simulated world."""
from __future__ import annotations

import dataclasses

import math

import numpy as np
import pytest
import torch

from drn import lifecycle
from drn.bundle import bundle_of, network_of
from drn.exploration import dbgd_step, explore_weights, explorer_seeds
from drn.features import warmed
from drn.learners import LearnerConfig, RoundRecipe
from drn.logstore import EXPLOIT, EXPLORE, NO_TEAM, Click, ImpressionRecord, LoggedImpression, Round
from drn.mind import load_dataset
from drn.model import NetworkConfig, build_network
from drn.registry import VersionInfo
from drn.training import TrainConfig
from drn.world import generate_logs

TINY = TrainConfig(epochs=1, buffer_impressions=64, batch_impressions=8, train_every=4)
ROUND = Round(round_id=7, model_version="3", seed=1234, alpha=0.1, opened_at=0.0)


@pytest.fixture(scope="module")
def bundle():
    return bundle_of(build_network(NetworkConfig(hidden=(8,)), seed=0))


def impressions(n: int, clicked_team: int, teams=(EXPLOIT, EXPLORE, EXPLOIT, EXPLORE)) -> list[LoggedImpression]:
    served = tuple(f"n{i}" for i in range(len(teams)))
    out = []
    for i in range(n):
        rec = ImpressionRecord(f"i{i}", "u1", float(i), served, served, teams, "3", ROUND.round_id, ROUND.seed)
        out.append(LoggedImpression(rec, (Click(served[teams.index(clicked_team)], i + 0.5),)))
    return out


# ---------------------------------------------------------------------------------------------------------- gate
def test_gate_passes_with_nothing_promoted():
    assert lifecycle.gate({"auc": 0.5, "mrr": 0.1, "ndcg@10": 0.2}, None).passed


@pytest.mark.parametrize("candidate, tolerance, passed", [
    ({"auc": 0.60, "mrr": 0.30, "ndcg@10": 0.40}, 0.0, True),  # equal
    ({"auc": 0.59, "mrr": 0.30, "ndcg@10": 0.40}, 0.0, False),  # worse on one metric
    ({"auc": 0.59, "mrr": 0.30, "ndcg@10": 0.40}, 0.02, True),  # within tolerance
    ({"auc": 0.70, "mrr": 0.40, "ndcg@10": 0.50}, -0.2, False),  # a strict gate demands a gain of 0.2
    ({"auc": math.nan, "mrr": 0.30, "ndcg@10": 0.40}, 1.0, False),  # NaN never passes
    ({"mrr": 0.30, "ndcg@10": 0.40}, 1.0, False),  # a missing metric never passes
])
def test_gate(candidate, tolerance, passed):
    result = lifecycle.gate(candidate, {"auc": 0.60, "mrr": 0.30, "ndcg@10": 0.40}, tolerance)
    assert result.passed is passed
    assert ("auc" in result.reason) or passed


# -------------------------------------------------------------------------------------------------- minor update
def test_minor_update_steps_towards_the_winning_explore_network(bundle):
    decision = lifecycle.minor_update(bundle, "3", ROUND, impressions(60, EXPLORE), LearnerConfig(eta=0.05))
    assert decision.outcome.winner == "explore" and decision.bundle is not None
    expected = dbgd_step(bundle.weights, explore_weights(bundle.weights, ROUND.seed, ROUND.alpha), 0.05)
    assert all(torch.equal(decision.bundle.weights[k], expected[k]) for k in expected)
    assert decision.bundle.config == bundle.config and decision.record()["stepped"] is True


def test_minor_update_draws_w_tilde_as_the_rounds_recipe_says(bundle):
    tensor_round = dataclasses.replace(ROUND, recipe={"noise": "tensor"})
    decision = lifecycle.minor_update(bundle, "3", tensor_round, impressions(60, EXPLORE), LearnerConfig(eta=0.05))
    expected = dbgd_step(bundle.weights, explore_weights(bundle.weights, ROUND.seed, ROUND.alpha, "tensor"), 0.05)
    assert all(torch.equal(decision.bundle.weights[k], expected[k]) for k in expected)


def test_minor_update_keeps_weights_when_exploit_wins(bundle):
    decision = lifecycle.minor_update(bundle, "3", ROUND, impressions(60, EXPLOIT))
    assert decision.outcome.winner == "exploit" and decision.bundle is None
    assert decision.record()["winner"] == "exploit" and decision.record()["stepped"] is False


def test_minor_update_with_too_little_feedback_keeps_the_round_open(bundle):
    decision = lifecycle.minor_update(bundle, "3", ROUND, impressions(5, EXPLORE))
    assert decision.pending and decision.bundle is None and "kept open" in decision.reason


def test_minor_update_ignores_a_round_served_with_another_version(bundle):
    decision = lifecycle.minor_update(bundle, "4", ROUND, impressions(60, EXPLORE))
    assert decision.outcome is None and decision.bundle is None and decision.record()["winner"] == "stale"


def test_clicks_on_positions_without_a_team_earn_no_credit(bundle):
    logged = impressions(60, NO_TEAM, teams=(EXPLOIT, EXPLORE, NO_TEAM))
    decision = lifecycle.minor_update(bundle, "3", ROUND, logged, LearnerConfig(max_round_impressions=60))
    assert decision.outcome.clicks_b == 0 and decision.outcome.clicks_a == 0 and decision.bundle is None
    assert decision.outcome.winner == "insufficient"


# ------------------------------------------------------------------------------------------- lineage and rounds
def _recipe_round(**recipe) -> Round:
    return dataclasses.replace(ROUND, recipe=RoundRecipe(**recipe).to_dict())


def test_mgd_steps_towards_the_mean_of_the_explore_networks_that_beat_w(bundle):
    """Team 2 (the second explore network) gets every click: W steps towards it alone, regenerated from the seed."""
    round_ = _recipe_round(learner="mgd", explorers=3)
    decision = lifecycle.minor_update(bundle, "3", round_, impressions(60, 2, teams=(0, 1, 2, 3)),
                                      LearnerConfig(eta=0.5))
    assert decision.verdict == "1 of 3 explorers" and decision.metrics["mgd.winners"] == 1
    second = explore_weights(bundle.weights, explorer_seeds(ROUND.seed, 3)[1], ROUND.alpha)
    expected = dbgd_step(bundle.weights, second, 0.5)
    assert all(torch.allclose(decision.bundle.weights[k], expected[k]) for k in expected)
    lost = lifecycle.minor_update(bundle, "3", round_, impressions(60, 0, teams=(0, 1, 2, 3)))
    assert lost.bundle is None and lost.verdict == "0 of 3 explorers"
    assert lifecycle.minor_update(bundle, "3", round_, impressions(5, 2, teams=(0, 1, 2, 3))).pending


@pytest.fixture(scope="module")
def clicked_lists():
    """Lists of one request of the world with the features serving computed, the third shown item clicked."""
    from drn.features import FeatureState
    from drn.world import World, WorldConfig
    world = World(WorldConfig(n_users=30, warmup_days=0.5), seed=0)
    request = world.next_request()
    batch = FeatureState({n: world.item(n) for n in request.candidates}).features(request.user, request.candidates,
                                                                                   request.time)
    return [(batch, [0, 1, 2, 3], [False, False, True, False])] * 30


def test_pdgd_takes_the_gradient_step_of_the_rounds_clicked_lists(bundle, clicked_lists):
    from drn.learners import pdgd_step
    round_ = _recipe_round(learner="pdgd", temperature=0.05)
    decision = lifecycle.minor_update(bundle, "3", round_, [], LearnerConfig(pdgd_learning_rate=1e-3),
                                      lists=clicked_lists)
    expected = network_of(bundle)
    assert pdgd_step(expected, clicked_lists, 0.05, 1e-3) == 30 == decision.metrics["pdgd.clicked_lists"]
    assert all(torch.equal(decision.bundle.weights[k], v) for k, v in expected.state_dict().items())
    assert lifecycle.minor_update(bundle, "3", round_, [], lists=[]).pending  # no clicks yet: nothing to learn


def test_sgd_trains_a_challenger_on_the_round_and_keeps_one_that_does_not_lose(bundle, clicked_lists):
    collecting = _recipe_round(learner="sgd")
    first = lifecycle.minor_update(bundle, "3", collecting, [], lists=clicked_lists)
    assert first.verdict == "collected" and first.bundle is None and first.candidate is not None
    assert any(not torch.equal(first.candidate.weights[k], bundle.weights[k]) for k in bundle.weights)
    assert lifecycle.minor_update(bundle, "3", collecting, [], lists=clicked_lists[:5]).pending
    gate = _recipe_round(learner="sgd", challenger="4", promote_on_tie=True)
    tied = impressions(30, EXPLOIT) + impressions(30, EXPLORE)
    kept = lifecycle.minor_update(bundle, "3", gate, tied, lists=clicked_lists, challenger=first.candidate)
    assert kept.verdict == "tie" and kept.promote and kept.challenger == "4" and kept.candidate is not None
    lost = lifecycle.minor_update(bundle, "3", gate, impressions(60, EXPLOIT), lists=clicked_lists,
                                  challenger=first.candidate)
    assert lost.verdict == "exploit" and not lost.promote
    unsure = _recipe_round(challenger="4")  # a gate round that does not promote on a tie
    assert not lifecycle.minor_update(bundle, "3", unsure, tied).promote


def test_a_major_candidates_gate_round_decides_at_its_size_and_promotes_unless_the_served_model_won(tmp_path, bundle):
    from drn.interleaving import GATE_DECISIVE
    from drn.logstore import LogStore
    with LogStore.at(tmp_path) as logs:
        lifecycle.open_round(logs, "3", 0.1, 0.0, RoundRecipe(learner="mgd", explorers=2))
        gate = dataclasses.replace(lifecycle.challenge(logs, "3", "4", 0.1, 1.0), round_id=ROUND.round_id,
                                   seed=ROUND.seed)
    recipe = RoundRecipe.from_dict(gate.recipe)  # read back from the store
    assert (recipe.challenger, recipe.promote_on_tie, recipe.decisive) == ("4", True, GATE_DECISIVE)
    assert (recipe.learner, recipe.explorers) == ("mgd", 2)  # served as the latest exploration
    half = GATE_DECISIVE // 2
    assert lifecycle.minor_update(bundle, "3", gate, impressions(half, EXPLOIT) + impressions(half - 1, EXPLORE)).pending
    tied = lifecycle.minor_update(bundle, "3", gate, impressions(half, EXPLOIT) + impressions(half, EXPLORE))
    assert tied.verdict == "tie" and tied.promote and tied.challenger == "4"
    lost = lifecycle.minor_update(bundle, "3", gate, impressions(half + 20, EXPLOIT) + impressions(half - 20, EXPLORE))
    assert lost.verdict == "exploit" and not lost.promote
    clear = lifecycle.minor_update(bundle, "3", gate, impressions(40, EXPLORE) + impressions(5, EXPLOIT))
    assert clear.verdict == "explore" and clear.promote  # a clear win need not wait for GATE_DECISIVE
    with pytest.raises(ValueError, match="decisive"):
        RoundRecipe(decisive=0)


def test_round_lists_replays_the_features_serving_ranked_with(tmp_path):
    """Each round impression's features are those of a state that saw every impression logged before it."""
    from drn.features import FeatureState, replay
    folder = tmp_path / "world"
    generate_logs(folder, days=1, users=10, seed=5)
    data = load_dataset(folder)
    logged = [LoggedImpression(ImpressionRecord(imp.impression_id, imp.user, imp.time, imp.candidates,
                                                imp.candidates, (NO_TEAM,) * len(imp.candidates), "3"),
                               tuple(Click(n, imp.time) for n, y in zip(imp.candidates, imp.labels) if y))
              for imp in data.impressions[:40]]
    lists = lifecycle.round_lists(data.news, logged[:30], logged[30:])
    expected = [sample.batch for sample in replay([imp.to_impression() for imp in logged], FeatureState(data.news))]
    for (batch, shown, clicked), want, imp in zip(lists, expected[30:], logged[30:]):
        assert np.array_equal(batch.state, want.state) and np.array_equal(batch.action, want.action)
        assert shown == list(range(len(imp.record.served)))
        assert clicked == [n in imp.clicked for n in imp.record.served]


def _info(version: str, kind: str, parent: str | None, window=None) -> VersionInfo:
    return VersionInfo(version, kind, parent, "None", [], {}, 0.0, None, data_window=window)


def test_replay_starts_after_the_nearest_window_trained_ancestor():
    versions = {v.version: v for v in (_info("1", "offline", None, (0.0, 10.0)), _info("2", "minor", "1", (10., 11.)),
                                       _info("3", "minor", "2", (11.0, 12.0)), _info("4", "major", "3", (10.0, 20.0)),
                                       _info("5", "minor", "4", (20.0, 21.0)))}
    assert lifecycle.replay_start(versions, "3") == 10.0
    assert lifecycle.replay_start(versions, "5") == 20.0
    assert lifecycle.replay_start(versions, "1") == 10.0
    assert lifecycle.replay_start({"1": _info("1", "minor", None)}, "1") is None


def test_round_seeds_are_reproducible_distinct_and_fit_a_bigint():
    seeds = {lifecycle.new_round_seed(v, t) for v in ("1", "2") for t in (0.0, 1.5, 1e9)}
    assert len(seeds) == 6 and all(0 <= s < 2 ** 63 for s in seeds)
    assert lifecycle.new_round_seed("1", 1.5) == lifecycle.new_round_seed("1", 1.5)


def test_data_window_is_half_open_around_the_times():
    start, end = lifecycle.data_window([li.to_impression() for li in impressions(3, EXPLORE)])
    assert start == 0.0 and 2.0 < end < 2.0 + 1e-9


# --------------------------------------------------------------------------------------------- training steps
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    generate_logs(folder, days=2, users=6, seed=5)
    return folder


def test_offline_train_evaluates_candidate_and_promoted_on_the_same_days(world, bundle):
    first = lifecycle.offline_train(str(world), TINY, seed=0)
    assert first.baseline is None and 0.0 <= first.metrics["auc"] <= 1.0
    second = lifecycle.offline_train(str(world), TINY, seed=1, promoted=first.bundle)
    assert second.baseline["impressions"] == second.metrics["impressions"]
    assert second.baseline["auc"] == pytest.approx(first.metrics["auc"])  # the same model on the same days
    times = [imp.time for imp in load_dataset(world).impressions]
    assert second.data_window[0] == min(times) and second.data_window[1] > max(times)


def _as_logged(dataset) -> list[LoggedImpression]:
    """A dataset's impressions as the log store gives them: every candidate served, no teams, model "1"."""
    return [LoggedImpression(ImpressionRecord(imp.impression_id, imp.user, imp.time, imp.candidates, imp.candidates,
                                              (NO_TEAM,) * len(imp.candidates), "1"),
                             tuple(Click(n, imp.time) for n in imp.clicked)) for imp in dataset.impressions]


def test_major_update_warm_starts_from_the_promoted_weights(world):
    promoted = lifecycle.offline_train(str(world), TINY, seed=0).bundle
    dataset = load_dataset(world)
    logged = _as_logged(dataset)
    candidate = lifecycle.major_update(promoted, logged, dataset.news, TINY, holdout_fraction=0.25)
    assert candidate.baseline["impressions"] == candidate.metrics["impressions"] > 0
    assert candidate.training["steps"] > 0
    assert any(not torch.equal(candidate.bundle.weights[k], promoted.weights[k]) for k in promoted.weights)
    with pytest.raises(ValueError):
        lifecycle.major_update(promoted, logged, dataset.news, TINY, holdout_fraction=1.0)


def test_a_major_update_keeps_the_latest_impressions_before_its_window_in_its_replay_memory(world):
    promoted = lifecycle.offline_train(str(world), TINY, seed=0).bundle
    dataset = load_dataset(world)
    logged = _as_logged(dataset)
    before, window = logged[:-40], logged[-40:]
    assert len(before) > TINY.buffer_impressions
    earlier, memory = lifecycle.memory_split(dataset.news, iter(before), TINY.buffer_impressions)
    latest = before[-TINY.buffer_impressions:]
    assert [imp.impression_id for imp in memory] == [imp.record.impression_id for imp in latest]
    first = window[0].record
    whole = lifecycle.warm_state(dataset.news, before).features(first.user, first.candidates, first.time)
    split = warmed(memory, dataset.news, earlier).features(first.user, first.candidates, first.time)
    assert np.array_equal(whole.state, split.state) and np.array_equal(whole.action, split.action)
    alone = lifecycle.major_update(promoted, window, dataset.news, TINY, holdout_fraction=0.25)
    remembering = lifecycle.major_update(promoted, window, dataset.news, TINY, holdout_fraction=0.25, before=before)
    assert alone.training["remembered"] == 0 < remembering.training["remembered"] <= TINY.buffer_impressions
    assert remembering.training["steps"] == alone.training["steps"]  # the memory is drawn on, not trained on alone
    assert any(not torch.equal(remembering.bundle.weights[k], alone.bundle.weights[k]) for k in promoted.weights)


def test_major_update_replays_from_the_feature_state_of_everything_logged_before(world, monkeypatch):
    """The window's first samples carry the users' clicks from before it (as serving computed their features), and
    both models are evaluated from that state."""
    from drn.agent import DRNPolicy
    from drn.evaluate import evaluate
    from drn.mind import Dataset
    from drn.training import Trainer
    promoted = lifecycle.offline_train(str(world), TINY, seed=0).bundle
    dataset = load_dataset(world)
    logged = _as_logged(dataset)
    before, window = logged[:-40], logged[-40:]
    seen = []
    observe = Trainer.observe
    monkeypatch.setattr(Trainer, "observe", lambda self, sample: (seen.append(sample.batch.state.copy()),
                                                                   observe(self, sample))[1])
    cold = lifecycle.major_update(promoted, window, dataset.news, TINY, holdout_fraction=0.25)
    cold_states, seen[:] = list(seen), []
    warm = lifecycle.major_update(promoted, window, dataset.news, TINY, holdout_fraction=0.25, before=before)
    assert np.count_nonzero(seen[0]) > np.count_nonzero(cold_states[0])  # a user with a past, not a stranger
    impressions = [imp.to_impression() for imp in window]
    expected = evaluate(DRNPolicy(network_of(promoted)), Dataset(impressions[:30], dataset.news),
                        Dataset(impressions[30:], dataset.news), start=lifecycle.warm_state(dataset.news, before))
    assert warm.baseline == pytest.approx(expected) and warm.baseline != cold.baseline
