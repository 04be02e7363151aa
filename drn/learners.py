"""Minor-update learners behind one interface: how a list is served while a round runs, what each impression
teaches, and what the end of a round (every T_D) does to the served weights W.

- `dbgd`: the paper's, Dueling Bandit Gradient Descent (Yue & Joachims 2009): one explore network
  W~ = W + alpha U(-1, 1) W, team draft of W and W~, and W += eta (W~ - W) when W~ wins the round;
- `mgd`: Multileave Gradient Descent (Schuth et al., WSDM 2016): several explore networks at once, team-draft
  multileaving, and a step towards the mean of those that beat W;
- `pdgd`: Pairwise Differentiable Gradient Descent (Oosterhuis & de Rijke, CIKM 2018): lists sampled from a
  Plackett-Luce model over Q / temperature, and a gradient step on the clicks' pairwise preferences, each weighted
  so that position bias cancels;
- `sgd`: incremental training, as real-time systems do: a copy of W takes a few gradient steps on the round's own
  feedback, is interleaved against W in the next round, and replaces W when it does not lose.

Rounds decide by the rule of `drn.interleaving` (pending until enough decisive impressions, then a sign test), the
same rule as the minor-update flow. `pdgd` needs no test: its step is an unbiased gradient.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy.special import expit

from drn.exploration import ALPHA, ETA, dbgd_step, explore_weights
from drn.features import FeatureBatch
from drn.interleaving import (DEFAULT_METHOD, MAX_ROUND_IMPRESSIONS, MIN_DECISIVE, SIGNIFICANCE, Outcome,
                              interleaver, round_outcome, team_draft_multileave)
from drn.model import DuelingQNetwork
from drn.policy import rankings, top_k

EXPLORERS = 4  # mgd: explore networks per round (the MGD paper's gains grow with their number; cost is per network)
PL_TEMPERATURE = 0.005  # pdgd: Plackett-Luce over Q / temperature; Q is in clicks per shown item, so its spread over
#   a request's candidates is a few hundredths: this keeps the top of the list likely and the rest possible (chosen
#   with the step size below on tuning seeds, benchmarks/LEARNING.md)
PDGD_LEARNING_RATE = 1e-5  # pdgd: plain gradient step on the round's pairwise log-likelihood (summed per impression;
#   its gradient scales with 1 / temperature)
SGD_STEPS = 20  # sgd: gradient steps the candidate takes on the round's feedback
SGD_LEARNING_RATE = 1e-3  # sgd: Adam step size of those steps (the major update's fine-tuning size)
SGD_BATCH = 16  # sgd: impressions per step


@dataclass(frozen=True)
class LearnerConfig:
    """Every knob of the minor learners; the defaults are the flows' (drn.exploration, drn.interleaving)."""

    alpha: float = ALPHA  # explore radius: W~ = W + alpha * U(-1, 1) * W
    eta: float = ETA  # step towards a winning explore network: W' = W + eta * (W~ - W)
    step_form: str = "standard"  # or "literal": the paper's printed W' = W + eta * W~
    noise: str = "element"  # U(-1, 1) per weight, or "tensor": one scalar per tensor
    interleaving: str = DEFAULT_METHOD
    min_decisive: int = MIN_DECISIVE
    max_round_impressions: int = MAX_ROUND_IMPRESSIONS
    significance: float = SIGNIFICANCE
    explorers: int = EXPLORERS
    temperature: float = PL_TEMPERATURE
    pdgd_learning_rate: float = PDGD_LEARNING_RATE
    sgd_steps: int = SGD_STEPS
    sgd_learning_rate: float = SGD_LEARNING_RATE
    seed: int = 0


class MinorLearner:
    """One round at a time: `serve` lists, `observe` their clicks, `end_round` every T_D (may change W in place)."""

    name = "learner"

    def __init__(self, config: LearnerConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self._rounds = 0

    def start(self, network: DuelingQNetwork) -> None:
        """Open a round around the current W (at the start, and whenever W changed, e.g. by a major update)."""
        self._rounds += 1

    def serve(self, network: DuelingQNetwork, batch: FeatureBatch, k: int) -> tuple[list[int], Any]:
        """Candidate indices to show, in order, and what `observe` needs to learn from their clicks."""
        raise NotImplementedError

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        raise NotImplementedError

    def end_round(self, network: DuelingQNetwork) -> dict:
        """Decide the round; returns what was decided ({"winner", "stepped"}) for plots and tests."""
        raise NotImplementedError

    def _round_seed(self) -> int:
        return self.config.seed * 1_000_003 + self._rounds

    def _outcome(self, impressions: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Outcome:
        c = self.config
        return round_outcome(impressions, c.interleaving, min_decisive=c.min_decisive,
                             max_impressions=c.max_round_impressions, significance=c.significance)


def _teams_and_clicks(teams: tuple[int, ...], clicked: Sequence[bool]) -> tuple[tuple[int, ...], list[int]]:
    """An interleaved impression as round_outcome reads it: its teams and the positions clicked."""
    return teams, [p for p, c in enumerate(clicked) if c]


class _Duel(MinorLearner):
    """W against one challenger network, interleaved: the serving half that DBGD and SGD share."""

    def __init__(self, config: LearnerConfig):
        super().__init__(config)
        self.interleave = interleaver(config.interleaving)
        self.challenger: DuelingQNetwork | None = None
        self.round: list[tuple[tuple[int, ...], list[int]]] = []

    def serve(self, network: DuelingQNetwork, batch: FeatureBatch, k: int) -> tuple[list[int], Any]:
        scores = network.score(batch)
        if self.challenger is None:
            return top_k(scores, k), None
        exploit, explore = ([str(i) for i in r] for r in rankings(np.stack([scores, self.challenger.score(batch)])))
        mixed = self.interleave(exploit, explore, k, self.rng)
        return [int(i) for i in mixed.served], tuple(mixed.teams)

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        if memo is not None:
            self.round.append(_teams_and_clicks(memo, clicked))


class DBGD(_Duel):
    name = "dbgd"

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        c = self.config
        self.challenger = copy.deepcopy(network)
        self.challenger.load_state_dict(explore_weights(network.state_dict(), self._round_seed(), c.alpha, c.noise))
        self.round = []

    def end_round(self, network: DuelingQNetwork) -> dict:
        outcome = self._outcome(self.round)
        if outcome.pending:
            return {"winner": outcome.winner, "stepped": False}
        if outcome.explore_won:
            c = self.config
            network.load_state_dict(dbgd_step(network.state_dict(), self.challenger.state_dict(), c.eta, c.step_form))
        self.start(network)
        return {"winner": outcome.winner, "stepped": outcome.explore_won}


class MGD(MinorLearner):
    name = "mgd"

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        c = self.config
        base = network.state_dict()
        self.explorers = [explore_weights(base, self._round_seed() * 64 + j, c.alpha, c.noise)
                          for j in range(c.explorers)]
        self.nets = [copy.deepcopy(network) for _ in self.explorers]
        for net, weights in zip(self.nets, self.explorers):
            net.load_state_dict(weights)
        self.round: list[tuple[tuple[int, ...], list[int]]] = []

    def serve(self, network: DuelingQNetwork, batch: FeatureBatch, k: int) -> tuple[list[int], Any]:
        scores = np.stack([network.score(batch)] + [net.score(batch) for net in self.nets])
        mixed = team_draft_multileave([[str(i) for i in r] for r in rankings(scores)], k, self.rng)
        return [int(i) for i in mixed.served], tuple(mixed.teams)

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        self.round.append(_teams_and_clicks(memo, clicked))

    def end_round(self, network: DuelingQNetwork) -> dict:
        """Pending until `min_decisive` impressions credited some team more than another (or the round is full);
        then each explorer against W as a duel over the round (other teams' slots earn neither side credit), by
        the sign test; W steps towards the mean of the explorers that won theirs."""
        c = self.config
        decisive = sum(_decisive(teams, clicked, len(self.nets) + 1) for teams, clicked in self.round)
        if decisive < c.min_decisive and len(self.round) < c.max_round_impressions:
            return {"winner": "pending", "stepped": False}
        duels = [round_outcome([(_as_duel(teams, j), clicked) for teams, clicked in self.round], c.interleaving,
                               min_decisive=0, significance=c.significance) for j in range(1, len(self.nets) + 1)]
        winners = [self.explorers[j] for j, duel in enumerate(duels) if duel.explore_won]
        if winners:
            mean = {key: torch.stack([w[key] for w in winners]).mean(0) if winners[0][key].is_floating_point()
                    else winners[0][key] for key in winners[0]}
            network.load_state_dict(dbgd_step(network.state_dict(), mean, c.eta, c.step_form))
        self.start(network)
        return {"winner": f"{len(winners)} of {len(duels)} explorers", "stepped": bool(winners)}


def _decisive(teams: Sequence[int], clicked: Sequence[int], n_teams: int) -> bool:
    """Whether the clicks credited one team more than another in this impression."""
    credit = np.bincount([teams[p] for p in set(clicked)], minlength=n_teams)
    return bool(credit.max() > credit.min())


def _as_duel(teams: Sequence[int], explorer: int) -> tuple[int, ...]:
    """A multileaved list's teams as W (0) against one explorer (1); every other team's slot earns no credit."""
    return tuple(0 if t == 0 else 1 if t == explorer else -1 for t in teams)


def plackett_luce_log_prob(scores: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Log-probability of each placement of `order` (a top-k list) under Plackett-Luce over `scores`: position i
    draws order[i] from the items not yet placed with P proportional to exp(score). They sum to the list's."""
    left = np.ones(len(scores), dtype=bool)
    out = np.empty(len(order))
    for i, item in enumerate(order):
        out[i] = scores[item] - np.logaddexp.reduce(scores[left])
        left[item] = False
    return out


class PDGD(MinorLearner):
    name = "pdgd"

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        self.round: list[tuple[FeatureBatch, list[int], np.ndarray, list[bool]]] = []

    def serve(self, network: DuelingQNetwork, batch: FeatureBatch, k: int) -> tuple[list[int], Any]:
        """A Plackett-Luce sample of the list (sorting by score + Gumbel noise draws exactly that), top k."""
        scores = network.score(batch).astype(np.float64) / self.config.temperature
        order = np.argsort(-(scores + self.rng.gumbel(size=len(scores))), kind="stable")[:k]
        return order.tolist(), scores

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        if any(clicked):
            self.round.append((batch, list(shown), memo, list(clicked)))

    def end_round(self, network: DuelingQNetwork) -> dict:
        """One gradient step on the round's preferences: each clicked item over each unclicked one placed above
        the last click or right below it, weighted by rho = P(swapped) / (P(list) + P(swapped)) under the scores it
        was sampled with (which makes the estimate unbiased with respect to position bias)."""
        if not self.round:
            self.start(network)
            return {"winner": "no clicks", "stepped": False}
        network.train()
        network.zero_grad()
        loss = sum(self._impression_loss(network, *impression) for impression in self.round)
        loss.backward()
        with torch.no_grad():
            for parameter in network.parameters():
                if parameter.grad is not None:
                    parameter -= self.config.pdgd_learning_rate * parameter.grad
        network.eval()
        lists = len(self.round)
        self.start(network)
        return {"winner": f"{lists} clicked lists", "stepped": True}

    def _impression_loss(self, network: DuelingQNetwork, batch: FeatureBatch, shown: list[int], scores: np.ndarray,
                         clicked: list[bool]) -> torch.Tensor:
        last = max(i for i, c in enumerate(clicked) if c)
        considered = range(min(last + 2, len(shown)))
        pairs = [(i, j) for i in considered if clicked[i] for j in considered if not clicked[j]]
        if not pairs:
            return torch.zeros(())
        base = plackett_luce_log_prob(scores, shown).sum()
        rho = []
        for i, j in pairs:
            swapped = list(shown)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            rho.append(expit(plackett_luce_log_prob(scores, swapped).sum() - base))
        q = _shown_q(network, batch, shown) / self.config.temperature
        won, lost = zip(*pairs)
        margins = q[list(won)] - q[list(lost)]
        return -(torch.as_tensor(rho, dtype=q.dtype) * torch.nn.functional.logsigmoid(margins)).sum()


class SGD(_Duel):
    name = "sgd"

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        self.challenger = None  # the first round (and the one after a major update) only collects feedback
        self.round = []
        self.samples: list[tuple[FeatureBatch, list[int], list[bool]]] = []

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        super().observe(batch, shown, memo, clicked)
        self.samples.append((batch, list(shown), list(clicked)))

    def end_round(self, network: DuelingQNetwork) -> dict:
        """Keep the challenger when its round did not lose; then train the next one on this round's feedback."""
        event = {"winner": "collecting", "stepped": False}
        if self.challenger is not None:
            outcome = self._outcome(self.round)
            if outcome.pending:
                return {"winner": outcome.winner, "stepped": False}
            kept = outcome.winner != "exploit"
            if kept:
                network.load_state_dict(self.challenger.state_dict())
            event = {"winner": outcome.winner, "stepped": kept}
        samples = self.samples
        super().start(network)
        self.challenger = self._trained(network, samples) if samples else None
        self.round, self.samples = [], []
        return event

    def _trained(self, network: DuelingQNetwork, samples: list) -> DuelingQNetwork:
        """A copy of W after `sgd_steps` Adam steps of click regression on the shown items of `samples`."""
        c = self.config
        challenger = copy.deepcopy(network)
        optimizer = torch.optim.Adam(challenger.parameters(), lr=c.sgd_learning_rate)
        challenger.train()
        for _ in range(c.sgd_steps):
            picks = self.rng.choice(len(samples), min(SGD_BATCH, len(samples)), replace=False)
            loss = torch.zeros(())
            for index in picks:
                batch, shown, clicked = samples[index]
                q = _shown_q(challenger, batch, shown)
                loss = loss + ((q - torch.as_tensor(clicked, dtype=q.dtype)) ** 2).mean()
            optimizer.zero_grad()
            (loss / len(picks)).backward()
            optimizer.step()
        challenger.eval()
        return challenger


def _shown_q(network: DuelingQNetwork, batch: FeatureBatch, shown: Sequence[int]) -> torch.Tensor:
    """Q of the shown items of a request, in served order, with gradients (the learners' losses read it)."""
    action = torch.from_numpy(batch.action[list(shown)])[None]
    return network(torch.from_numpy(batch.state)[None], action)[0]


LEARNERS: dict[str, type[MinorLearner]] = {cls.name: cls for cls in (DBGD, MGD, PDGD, SGD)}


def learner(name: str, config: LearnerConfig) -> MinorLearner:
    """The minor learner named by configuration."""
    if name not in LEARNERS:
        raise ValueError(f"unknown minor learner {name!r}; choose one of {sorted(LEARNERS)}")
    return LEARNERS[name](config)

