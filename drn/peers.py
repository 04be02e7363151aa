"""Vowpal Wabbit's contextual bandits as peers of DRN and LinUCB: same features, same `Policy` interface.

VW (`pip install -e '.[peers]'`) is an optional dependency, imported only when a peer is built.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from drn.features import SCHEMA, WINDOWS, FeatureBatch
from drn.mind import Impression
from drn.policy import Policy, top_k

# The request-level features VW sees (namespace s): time of day and weekday (the world's daily cycle) and how much
# the user clicks. The profiles stay out: the action rows already hold their overlap with each candidate.
SHARED_BLOCKS = ("context.hour_sin", "context.hour_cos", "context.weekday",
                 *(f"user.clicks_{w}" for w, _ in WINDOWS), "user.clicks_all")
SHARED_COLUMNS = np.concatenate([np.arange(SCHEMA.state_dim)[SCHEMA.index(name)[1]] for name in SHARED_BLOCKS])
VW_OPTIONS = " ".join((
    "--cb_explore_adf",  # contextual bandit, one example line per candidate (action-dependent features), pmf out
    "--cb_type mtr",  # regress the cost of the labelled item only (weighted 1/p): items can be learned one at a time
    # shared x action pairs (about 100 a candidate): hour x category, active user x item popularity. Without them
    # the shared features are the same for every candidate of a request and could not change the ranking.
    "-q sa",
    "--quiet",  # no progress table on stderr: the bench prints its own lines
))
# The explorer of each peer. SquareCB (Foster & Rakhlin 2020): inverse-gap weighting of the predicted costs, tighter
# as examples accumulate; epsilon-greedy: the best predicted candidate, or with probability 0.1 a uniform one.
PEERS = {"vw-squarecb": "--squarecb", "vw-egreedy": "--epsilon 0.1"}
CLICK_COST, SKIP_COST = 0.0, 1.0  # VW minimises cost; costs in [0, 1] are the range SquareCB's rate assumes


def workspace(options: str):
    """A VW workspace; the import is here because VW is optional for the rest of drn."""
    try:
        import vowpalwabbit
    except ImportError as error:
        raise ImportError("the Vowpal Wabbit peers need vowpalwabbit: pip install -e '.[peers]'") from error
    return vowpalwabbit.Workspace(options)


def feature_lines(prefix: str, matrix: np.ndarray) -> list[str]:
    """One VW text line per row, `prefix` then `column:value` of its nonzero entries (names are column numbers)."""
    rows, cols = np.nonzero(matrix)
    tokens = [f"{c}:{v:.6g}" for c, v in zip(cols.tolist(), matrix[rows, cols].tolist())]
    bounds = np.searchsorted(rows, np.arange(len(matrix) + 1)).tolist()
    return [prefix + " ".join(tokens[a:b]) for a, b in zip(bounds, bounds[1:])]


def inclusion_probabilities(pmf: np.ndarray, order: Sequence[int], k: int) -> np.ndarray:
    """P(candidate is in the slate) when the top slot is drawn from `pmf` and the other k-1 follow `order` (best
    first) without it: 1 for the first k-1 of `order`; the k-th is pushed out only by a draw from below it; the
    rest are shown only when drawn."""
    probabilities = np.asarray(pmf, dtype=np.float64).copy()
    ranked = np.asarray(order)
    probabilities[ranked[: k - 1]] = 1.0
    if len(ranked) >= k:
        probabilities[ranked[k - 1]] = min(1.0, float(np.sum(np.asarray(pmf)[ranked[:k]])))
    return probabilities


class VWPolicy(Policy):
    """A VW contextual bandit (`PEERS` names the explorer) ranking a slate of k from one pmf per request.

    The top slot is drawn from VW's pmf, the other k-1 follow VW's predicted cost (best first). Each shown item is
    learned as its own CB example (cost 1 - click) with its probability of being in the slate
    (`inclusion_probabilities`). Approximations: a click is taken as the item's alone, whatever its position and
    neighbours (position bias is ignored, as LinUCB ignores it), and SquareCB's schedule counts the k examples of a
    request as k rounds, so it tightens k times faster than for one pick per request. Logs (`fit`) show every
    candidate, so their items are learned with probability 1.
    """

    def __init__(self, name: str = "vw-squarecb", seed: int = 0):
        self.name = name
        # --random_seed fixes VW's own randomness; the draw of the top slot uses `rng`
        self.vw = workspace(f"{VW_OPTIONS} {PEERS[name]} --random_seed {seed}")
        self.rng = np.random.default_rng(seed)
        self._served: tuple[FeatureBatch, list[str], np.ndarray] | None = None  # last slate: batch, lines, P(shown)

    @staticmethod
    def lines(batch: FeatureBatch) -> list[str]:
        """The request as VW text: the shared line, then one line per candidate."""
        return feature_lines("shared |s ", batch.state[None, SHARED_COLUMNS]) + feature_lines("|a ", batch.action)

    def predict(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """VW's pmf over the candidates and its predicted cost of each."""
        examples = self.vw.parse(lines)
        pmf = np.asarray(self.vw.predict(examples), dtype=np.float64)
        costs = np.array([example.get_partial_prediction() for example in examples[1:]])
        self.vw.finish_example(examples)
        return pmf, costs

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return -self.predict(self.lines(batch))[1]

    def recommend(self, batch: FeatureBatch, k: int) -> list[int]:
        lines = self.lines(batch)
        pmf, costs = self.predict(lines)
        order = top_k(-costs, len(costs))
        first = int(self.rng.choice(len(pmf), p=pmf / pmf.sum()))
        self._served = (batch, lines, inclusion_probabilities(pmf, order, k))
        return [first] + [i for i in order if i != first][: k - 1]

    def learn(self, batch: FeatureBatch, shown: Sequence[int], clicked: Sequence[bool], impression: Impression) -> None:
        """One two-line example (shared line, the shown item with its label) per shown item: under MTR only the
        labelled item's regression is updated, so the other candidates need not be parsed again."""
        if self._served is not None and self._served[0] is batch:
            _, lines, probabilities = self._served
        else:  # a batch this policy did not serve: the logs, which show every candidate
            lines, probabilities = self.lines(batch), np.ones(len(batch.candidates))
        for i, click in zip(shown, clicked):
            cost = CLICK_COST if click else SKIP_COST
            self.vw.learn([lines[0], f"0:{cost:g}:{probabilities[i]:.6g} {lines[1 + i]}"])
        self._served = None
