"""Baselines of DRN.md's tables, on the same features and interface as DRN: random, popularity, LinUCB."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from drn.features import SCHEMA, FeatureBatch
from drn.mind import Impression
from drn.policy import Policy, top_k

# Popularity ranks by recent clicks; longer windows and exposure only break ties among items with equal counts.
POPULARITY_WEIGHTS = {"news.clicks_24h": 1.0, "news.clicks_1w": 0.1, "news.impressions_24h": 0.01}
LINUCB_ALPHA = 0.5  # width of the upper confidence bound (Li et al. 2010): larger explores more
LINUCB_RIDGE = 1.0  # prior precision of the ridge regression: keeps A invertible before any feedback


class RandomPolicy(Policy):
    """Uniformly random order: the floor every learner must beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self.rng.random(len(batch.candidates))


class PopularityPolicy(Policy):
    """Most clicked in the last 24 hours first (counts from the online feature state, so it follows the news)."""

    name = "popularity"

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return sum(weight * batch.column(name) for name, weight in POPULARITY_WEIGHTS.items())


class LinUCBPolicy(Policy):
    """LinUCB (Li et al. 2010) with one shared linear model on the per-candidate features.

    It uses the action part of the vector (news, user-news, freshness) plus a bias: the user/context part is the
    same for every candidate of a request, so in a linear model it cannot change the ranking.
    """

    name = "linucb"

    def __init__(self, alpha: float = LINUCB_ALPHA, ridge: float = LINUCB_RIDGE, dim: int = SCHEMA.action_dim):
        self.alpha = alpha
        self.a = ridge * np.eye(dim + 1)
        self.b = np.zeros(dim + 1)
        self._solved: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _design(batch: FeatureBatch) -> np.ndarray:
        return np.hstack([batch.action.astype(np.float64), np.ones((len(batch.candidates), 1))])

    def _solve(self) -> tuple[np.ndarray, np.ndarray]:
        if self._solved is None:
            a_inv = np.linalg.inv(self.a)
            self._solved = (a_inv, a_inv @ self.b)
        return self._solved

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self._design(batch) @ self._solve()[1]

    def upper_bounds(self, batch: FeatureBatch) -> np.ndarray:
        x = self._design(batch)
        a_inv, theta = self._solve()
        return x @ theta + self.alpha * np.sqrt(np.einsum("ij,jk,ik->i", x, a_inv, x))

    def recommend(self, batch: FeatureBatch, k: int) -> list[int]:
        return top_k(self.upper_bounds(batch), k)

    def learn(self, batch: FeatureBatch, shown: Sequence[int], clicked: Sequence[bool], impression: Impression) -> None:
        x = self._design(batch)[list(shown)]
        self.a += x.T @ x
        self.b += x.T @ np.asarray(clicked, dtype=np.float64)
        self._solved = None


BASELINES = {"random": RandomPolicy, "popularity": PopularityPolicy, "linucb": LinUCBPolicy}
