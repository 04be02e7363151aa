"""The one interface every recommender implements: score and rank a request's candidates, learn from feedback.

Baselines, the DRN agent and its exploring variants all plug into the same offline evaluation and the same live
world loop through it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from drn.features import FeatureBatch, FeatureState, replay
from drn.mind import Dataset, Impression


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, best first; ties keep candidate order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k].tolist()


def rankings(scores: np.ndarray) -> list[list[int]]:
    """`top_k` of every row of a (rankers, candidates) score matrix, all candidates, in one sort."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable").tolist()


class Policy:
    """Base policy: greedy top-k by `scores`; learns nothing unless a subclass says so."""

    name = "policy"

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        """Greedy scores, higher is better (offline evaluation ranks with these; weights stay frozen there)."""
        raise NotImplementedError

    def recommend(self, batch: FeatureBatch, k: int) -> list[int]:
        """Indices of the candidates to show, in order (exploring policies override this)."""
        return top_k(self.scores(batch), k)

    def learn(self, batch: FeatureBatch, shown: Sequence[int], clicked: Sequence[bool], impression: Impression) -> None:
        """Feedback on a served list: `shown` indexes batch rows in served order, `clicked` matches it."""

    def fit(self, train: Dataset) -> None:
        """Offline learning from logs: every logged candidate counts as shown (MIND shows all candidates)."""
        state = FeatureState(train.news)
        for sample in replay(train.impressions, state):
            labels = sample.impression.labels or (0,) * len(sample.impression.candidates)
            self.learn(sample.batch, range(len(labels)), [bool(y) for y in labels], sample.impression)
