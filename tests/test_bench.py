"""The learning benchmark's read-outs: interactions to reach 90% of the best CTR, paired claims, the tables."""
from __future__ import annotations

import pytest

from drn.bench import CLAIMS, POLICIES, BenchConfig, interactions_to_reach, markdown_tables, recovery, summarise
from drn.online import LiveResult


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
