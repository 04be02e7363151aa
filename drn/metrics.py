"""Ranking metrics as the MIND benchmark computes them (per impression, then averaged): AUC, MRR and nDCG.

Ties in scores keep candidate order (a stable sort), so a constant scorer gets the logged order, not a bias of
its own. Impressions whose labels are all equal are left out of AUC, as in the MIND benchmark; impressions
without a click are left out of MRR and nDCG (they are undefined there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.stats import rankdata


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of one impression (ties count half), via the rank-sum statistic."""
    labels = np.asarray(labels)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs at least one clicked and one unclicked candidate")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def mrr(labels: Sequence[int], scores: Sequence[float]) -> float:
    ranked = np.asarray(labels, dtype=np.float64)[_order(scores)]
    return float(np.sum(ranked / np.arange(1, len(ranked) + 1)) / np.sum(ranked))


def _dcg(ranked: np.ndarray, k: int) -> float:
    top = ranked[:k]
    return float(np.sum((2.0 ** top - 1.0) / np.log2(np.arange(len(top)) + 2.0)))


def ndcg(labels: Sequence[int], scores: Sequence[float], k: int) -> float:
    labels = np.asarray(labels, dtype=np.float64)
    return _dcg(labels[_order(scores)], k) / _dcg(np.sort(labels)[::-1], k)


@dataclass
class RankingMetrics:
    """Accumulates per-impression AUC, MRR, nDCG@5 and nDCG@10 over an evaluation run."""

    values: dict[str, list[float]] = field(default_factory=lambda: {"auc": [], "mrr": [], "ndcg@5": [], "ndcg@10": []})

    def add(self, labels: Sequence[int], scores: Sequence[float]) -> None:
        labels = np.asarray(labels)
        clicks = int(labels.sum())
        if 0 < clicks < len(labels):
            self.values["auc"].append(auc(labels, scores))
        if clicks:
            self.values["mrr"].append(mrr(labels, scores))
            self.values["ndcg@5"].append(ndcg(labels, scores, 5))
            self.values["ndcg@10"].append(ndcg(labels, scores, 10))

    def result(self) -> dict[str, float]:
        out = {name: (float(np.mean(v)) if v else float("nan")) for name, v in self.values.items()}
        out["impressions"] = len(self.values["mrr"])
        return out
