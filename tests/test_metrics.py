import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from drn.metrics import RankingMetrics, auc, mrr, ndcg


def test_auc_matches_sklearn_including_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 2, 20)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 5, 20).astype(float)
        assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_mind_benchmark_formulas():
    labels, scores = [0, 1, 0, 1], [0.9, 0.8, 0.1, 0.7]
    assert mrr(labels, scores) == pytest.approx((1 / 2 + 1 / 3) / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg(labels, scores, 5) == pytest.approx(dcg / (1 + 1 / np.log2(3)))
    assert ndcg([1, 0], [0.0, 0.0], 5) == 1.0  # ties keep candidate order


def test_accumulator_leaves_out_all_equal_labels_from_auc():
    m = RankingMetrics()
    m.add([1, 1, 1], [0.1, 0.2, 0.3])
    m.add([0, 1], [0.2, 0.1])
    out = m.result()
    assert out["auc"] == 0.0 and out["impressions"] == 2 and out["mrr"] == pytest.approx(((1 + 1 / 2 + 1 / 3) / 3 + 1 / 2) / 2)
