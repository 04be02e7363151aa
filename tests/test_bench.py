"""The learning benchmark's read-outs: interactions to reach 90% of the best CTR, paired claims, the tables."""
from __future__ import annotations

import copy

import pytest

from drn.bench import (CLAIMS, POLICIES, BenchConfig, OraclePolicy, interactions_to_reach, markdown_tables, recovery,
                       summarise)
from drn.features import FeatureState
from drn.online import LiveResult, run_live
from drn.world import World, world_config


def _result(ctr_by_block: list[float], block: int = 500) -> LiveResult:
    """A live run whose every impression shows 10 items, with the given CTR per block of impressions."""
    result = LiveResult()
    for i, ctr in enumerate(ctr_by_block):
        for j in range(block):
            result.times.append(float(i * block + j))
            result.shown.append(10)
            result.activeness.append(0.5)
            result.clicks.append(int((j + 1) * 10 * ctr) - int(j * 10 * ctr))  # 10 * ctr clicks an impression
    return result


def test_interactions_to_reach_and_paired_claims():
    seed = {name: _result([0.1] * 6) for name in POLICIES}
    seed["linucb"] = _result([0.0, 0.1, 0.2, 0.2, 0.2, 0.2])  # the best; reaches 90% of .2 within its 3rd block
    seed["random"] = _result([0.04] * 6)  # never reaches
    seed["oracle"] = _result([0.5] * 6)  # a reference, not the best policy: every target stays at linucb's
    config = BenchConfig(warmup_fraction=0.0)
    reach = interactions_to_reach([seed], config)
    assert reach["random"] == [None]
    best = seed["linucb"].ctr(0.0)
    assert best < 0.2 and 1000 < reach["linucb"][0] <= 2000
    results = summarise([seed, seed], config)
    claim = results["claims"]["linucb > popularity"]
    assert claim["ctr_difference"] == pytest.approx(best - 0.1) and claim["holds_in_seeds"] == 2
    assert claim["ctr_ratio"] == pytest.approx(best / 0.1)
    table = markdown_tables(results)
    assert table.count("\n") == len(POLICIES) + len(CLAIMS) + 5 and "| linucb > popularity |" in table


def test_recovery_after_drift_counts_impressions_back_to_90pct_of_the_pre_drift_ctr():
    config = BenchConfig(impressions=6000, drift_share=0.5)
    seed = {name: _result([0.1] * 12) for name in POLICIES}  # never dips: back at once (one window after)
    seed["linucb"] = _result([0.1] * 6 + [0.02, 0.05, 0.1, 0.1, 0.1, 0.1])  # a window [t - 1000, t) after the drift
    #   reaches .09 once 800 of its impressions are past the .02 and .05 blocks: t = 1800
    seed["random"] = _result([0.1] * 6 + [0.02] * 6)  # never back
    back = recovery([seed], config)
    assert back["popularity"] == [1000] and back["random"] == [None]
    assert back["linucb"][0] in (1800, 1801)
    assert "| linucb |" in markdown_tables(summarise([seed], config))


def _oracle_ctr(world: World, interactions: bool, impressions: int = 600) -> tuple[float, list[int]]:
    """CTR of an oracle serving a copy of `world`, and the first request's list."""
    world = copy.deepcopy(world)
    policy = OraclePolicy(world, interactions)
    first = []
    original = policy.recommend
    policy.recommend = lambda batch, k: first.append(original(batch, k)) or first[-1]
    return run_live(policy, world, FeatureState(), impressions).ctr(), first[0]


def test_the_oracle_ranks_by_true_click_probability_and_prices_the_interaction_terms():
    logistic = World(world_config("logistic", n_users=100, warmup_days=1.0), seed=3)
    request = copy.deepcopy(logistic).next_request()
    ctr, first = _oracle_ctr(logistic, True)
    truth = [logistic.click_probability(request.user, n, 0, request.time) for n in request.candidates]
    assert first == sorted(range(len(truth)), key=lambda i: -truth[i])[:len(first)]
    # a world without interaction terms: knowing them changes nothing
    assert _oracle_ctr(logistic, False)[0] == ctr
    interaction = World(world_config("interaction", n_users=100, warmup_days=1.0), seed=3)
    assert _oracle_ctr(interaction, True)[0] > _oracle_ctr(interaction, False)[0]


def test_the_oracle_refuses_a_list_its_world_did_not_just_issue():
    world = World(world_config("logistic", n_users=20, warmup_days=0.5), seed=1)
    state = FeatureState()
    request = world.next_request()
    for news_id in request.candidates:
        state.add_news(world.item(news_id))
    batch = state.features(request.user, request.candidates[1:], request.time)
    with pytest.raises(RuntimeError, match="just issued"):
        OraclePolicy(world).recommend(batch, 5)
