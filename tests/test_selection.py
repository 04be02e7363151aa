"""Offline settings chosen on validation days inside the training window, never on the days reported."""
from __future__ import annotations

import pytest
import torch

from drn.evaluate import DAY, time_split
from drn.mind import Dataset
from drn.model import NetworkConfig
from drn.selection import choose, score_validation, spans_validation, train_offline, validated_network
from drn.training import TrainConfig
from drn.world import logged_world, world_config

FAST = TrainConfig(epochs=1, buffer_impressions=256, batch_impressions=8, train_every=2, target_every=10)
SMALL = NetworkConfig(hidden=(16,))


@pytest.fixture(scope="module")
def logs() -> Dataset:
    world, impressions = logged_world(world_config(n_users=60, warmup_days=0.5), seed=4, days=3)
    return Dataset(impressions, {n: world.item(n) for imp in impressions for n in imp.candidates + imp.history})


def test_choice_is_made_on_the_last_training_day_and_picks_the_better_setting(logs):
    train, test = time_split(logs, 1)
    # a step size of 0 leaves the network at its random start: validation must see that and pick the other
    choice = choose(train, FAST, seed=0, learning_rates=(0.0, 1e-2), max_epochs=2, network=SMALL)
    last_day = max(imp.time for imp in train.impressions) // DAY
    labelled_last_day = [imp for imp in train.impressions if imp.time // DAY == last_day and imp.labels]
    assert choice.validation_impressions == len(labelled_last_day)
    assert all(imp.time < min(t.time for t in test.impressions) for imp in labelled_last_day)
    assert choice.learning_rate == 1e-2
    assert len(choice.tried) == 4 and {row["epochs"] for row in choice.tried} == {1, 2}
    best = max(row["auc"] for row in choice.tried)
    assert choice.validation["auc"] == best > max(row["auc"] for row in choice.tried if row["learning_rate"] == 0.0)


def test_the_validated_network_is_the_one_chosen_and_an_ensemble_averages_its_members(logs):
    train, _ = time_split(logs, 1)
    choice, network, batches = validated_network(train, FAST, seed=0, learning_rates=(0.0, 1e-2), max_epochs=1,
                                                 network=SMALL)
    assert len(batches) == choice.validation_impressions
    assert score_validation(network, batches) == choice.validation
    _, untrained, _ = validated_network(train, FAST, seed=1, learning_rates=(0.0,), max_epochs=1, network=SMALL)
    pair = score_validation([network, untrained], batches)
    assert pair != choice.validation and score_validation([network, network], batches)["auc"] == pytest.approx(
        choice.validation["auc"])


def test_train_offline_reports_the_choice_or_why_it_made_none(logs):
    train, _ = time_split(logs, 1)
    trainer, summary = train_offline(train, FAST, seed=0, learning_rates=(1e-2,), max_epochs=1, network=SMALL)
    assert summary["learning_rate"] == 1e-2 and summary["epochs"] == 1 and "validation_auc" in summary
    assert trainer.network is not None and trainer.buffer.size > 0
    one_day = Dataset([imp for imp in train.impressions if imp.time // DAY == train.impressions[0].time // DAY],
                      train.news)
    assert not spans_validation(one_day)
    _, summary = train_offline(one_day, FAST, seed=0, network=SMALL)
    assert summary["epochs"] == FAST.epochs and summary["choice"].startswith("configured: the window spans")
    _, summary = train_offline(train, FAST, seed=0, choose_settings=False, network=SMALL)
    assert summary["choice"] == "configured" and summary["learning_rate"] == FAST.learning_rate


def test_a_retrain_that_went_wrong_keeps_the_validated_network(logs, monkeypatch):
    from drn import selection
    train, _ = time_split(logs, 1)
    real, calls = selection.score_validation, []

    def score(network, batches):  # choose scores once (one step size, one pass); the retrain's look is the second
        calls.append(network)
        result = real(network, batches)
        return result if len(calls) == 1 else {**result, "auc": 0.0}

    monkeypatch.setattr(selection, "score_validation", score)
    trainer, summary = train_offline(train, FAST, seed=0, learning_rates=(1e-2,), max_epochs=1, network=SMALL)
    assert summary["choice"]["kept"].startswith("the validated network")
    monkeypatch.setattr(selection, "score_validation", real)
    _, _, validated = selection._choose(train, FAST, 0, (1e-2,), 1, 1, SMALL, None)
    assert all(torch.equal(trainer.network.state_dict()[k], validated[k]) for k in validated)
