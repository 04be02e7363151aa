"""Baselines of DRN.md's tables, on the same features and interface as DRN: random, popularity, LinUCB."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from drn.features import SCHEMA, FeatureBatch
from drn.mind import Impression
from drn.policy import Policy, top_k

# Popularity ranks by the last hour's clicks (news goes stale within hours); the 6 h and 24 h counts break ties.
POPULARITY_WEIGHTS = {"news.clicks_1h": 1.0, "news.clicks_6h": 0.1, "news.clicks_24h": 0.01}
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
    """Most clicked in the last hour first (counts from the online feature state, so it follows the news)."""

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
        self.a_inv = np.eye(dim + 1) / ridge  # inverse of A = ridge * I + sum x x^T, kept current by Woodbury
        self.b = np.zeros(dim + 1)
        self.theta = np.zeros(dim + 1)

    @staticmethod
    def _design(batch: FeatureBatch) -> np.ndarray:
        return np.hstack([batch.action.astype(np.float64), np.ones((len(batch.candidates), 1))])

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self._design(batch) @ self.theta

    def upper_bounds(self, batch: FeatureBatch) -> np.ndarray:
        x = self._design(batch)
        return x @ self.theta + self.alpha * np.sqrt(np.einsum("ij,jk,ik->i", x, self.a_inv, x))

    def recommend(self, batch: FeatureBatch, k: int) -> list[int]:
        return top_k(self.upper_bounds(batch), k)

    def learn(self, batch: FeatureBatch, shown: Sequence[int], clicked: Sequence[bool], impression: Impression) -> None:
        """Rank-k Woodbury update of A^-1 (k = items shown): far cheaper than inverting A per request."""
        x = self._design(batch)[list(shown)]
        ax = self.a_inv @ x.T
        self.a_inv -= ax @ np.linalg.solve(np.eye(len(x)) + x @ ax, ax.T)
        self.b += x.T @ np.asarray(clicked, dtype=np.float64)
        self.theta = self.a_inv @ self.b


BASELINES = {"random": RandomPolicy, "popularity": PopularityPolicy, "linucb": LinUCBPolicy}
