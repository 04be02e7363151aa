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

The pipeline runs the same learners across processes: a round's `RoundRecipe` (in the log store) tells serving how to
make lists (`round_weights`, `round_list`) and the minor update how to learn from them; the steps themselves
(`mgd_winners`, `pdgd_step`, `sgd_challenger`) are the functions the in-process learners below call.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy.special import expit

from drn.exploration import (ALPHA, ETA, Noise, StepForm, Weights, dbgd_step, explore_weights, explorer_seeds,
                             mean_weights)
from drn.features import FeatureBatch
from drn.interleaving import (DEFAULT_METHOD, MAX_ROUND_IMPRESSIONS, MIN_DECISIVE, SIGNIFICANCE, Interleaved, Method,
                              Outcome, interleaver, round_outcome, team_draft_multileave, untagged)
from drn.model import DuelingQNetwork
from drn.options import option
from drn.policy import rankings, top_k

EXPLORERS = 4  # mgd: explore networks per round (the MGD paper's gains grow with their number; cost is per network)
PL_TEMPERATURE = 0.0025  # pdgd: Plackett-Luce over Q / temperature; Q is in clicks per shown item, so its spread over
#   a request's candidates is a few hundredths: this keeps the top of the list likely and the rest possible (chosen
#   with the step size below by `drn bench tune` on its tuning seeds, benchmarks/LEARNING.md)
PDGD_LEARNING_RATE = 3e-5  # pdgd: plain gradient step on the round's pairwise log-likelihood (summed per impression;
#   its gradient scales with 1 / temperature)
SGD_STEPS = 20  # sgd: gradient steps the candidate takes on the round's feedback (kept by `drn bench tune`)
SGD_LEARNING_RATE = 1e-3  # sgd: Adam step size of those steps (the major update's fine-tuning size; kept by the tuning)
SGD_BATCH = 16  # sgd: impressions per step


class LearnerName(StrEnum):
    """The minor learners (see the module docstring)."""

    DBGD = "dbgd"
    MGD = "mgd"
    PDGD = "pdgd"
    SGD = "sgd"


LEARNER_NAMES = tuple(LearnerName)
DEFAULT_LEARNER = LearnerName.DBGD  # the paper's; the minor-update flow's parameter `learner` picks another


@dataclass(frozen=True)
class RoundRecipe:
    """How a round is served, kept on the round in the log store so that serving and the minor update read one record
    instead of settings kept equal by hand. Fields a round was logged without read as their defaults, which is what
    everything ran then."""

    learner: LearnerName = DEFAULT_LEARNER
    noise: Noise = Noise.ELEMENT  # how explore networks are drawn (explore_weights)
    interleaving: Method = DEFAULT_METHOD  # how two lists merge (more than two: team-draft multileaving)
    explorers: int = EXPLORERS  # mgd: explore networks in the round
    temperature: float = PL_TEMPERATURE  # pdgd: lists are Plackett-Luce samples over Q / temperature
    challenger: str | None = None  # a gate round: this registered version is interleaved against W instead, and
    #   served in W's place when it wins (a major update's or sgd's candidate, drn.lifecycle.challenge)
    promote_on_tie: bool = False  # a gate round's challenger is also served when the round ties: it replaces W when
    #   it does not lose (sgd's challengers, and a major update's, drn.lifecycle.challenge)
    decisive: int | None = None  # a gate round decides at this many decisive impressions, or earlier on a clear
    #   result (drn.interleaving.gate_outcome); None: when an exploration round would (LearnerConfig.min_decisive)

    def __post_init__(self) -> None:
        _as_options(self, learner=LearnerName, noise=Noise, interleaving=Method)
        if not (isinstance(self.explorers, int) and self.explorers >= 1):
            raise ValueError(f"explorers must be an integer >= 1, got {self.explorers!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.decisive is not None and not (isinstance(self.decisive, int) and self.decisive >= 1):
            raise ValueError(f"decisive must be an integer >= 1 or None, got {self.decisive!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> RoundRecipe:
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})

    def exploring(self) -> RoundRecipe:
        """The same learner's exploration round (no challenger)."""
        return replace(self, challenger=None, promote_on_tie=False, decisive=None)

    @property
    def needs_features(self) -> bool:
        """Whether learning from the round needs each impression's features (replayed from the log store): PDGD's
        step, and SGD's next challenger, which every SGD round trains (gate rounds too)."""
        return self.learner is LearnerName.SGD or (self.learner is LearnerName.PDGD and self.challenger is None)


# ------------------------------------------------------------------------------ a round's lists, as serving makes them
def round_weights(recipe: RoundRecipe, weights: Weights, seed: int, alpha: float) -> list[Weights]:
    """What serving scores beside W in an exploration round, in team order (team 1 first): DBGD's W~, MGD's explore
    networks; nothing for PDGD (it samples from W) and SGD (its challengers are registered versions, so they come in
    gate rounds). A gate round's challenger is loaded by the caller from the registry."""
    if recipe.learner is LearnerName.DBGD:
        return [explore_weights(weights, seed, alpha, recipe.noise)]
    if recipe.learner is LearnerName.MGD:
        return [explore_weights(weights, s, alpha, recipe.noise) for s in explorer_seeds(seed, recipe.explorers)]
    return []


def round_list(recipe: RoundRecipe, scores: np.ndarray, ids: Sequence[str], k: int,
               rng: np.random.Generator) -> Interleaved:
    """The list a round serves from its networks' scores (row 0: W, then the teams in order): two lists
    interleaved as the recipe says, more multileaved; W alone is PDGD's Plackett-Luce sample (with each position's
    probability) or, for SGD collecting feedback, W's top k."""
    if len(scores) == 1:
        if recipe.learner is LearnerName.PDGD:
            scaled = scores[0].astype(np.float64) / recipe.temperature
            order = plackett_luce_sample(scaled, k, rng)
            probabilities = tuple(np.exp(plackett_luce_log_prob(scaled, order)).tolist())
            return replace(untagged(ids, order), propensities=probabilities)
        return untagged(ids, top_k(scores[0], k))
    ranked = [[ids[i] for i in ranking] for ranking in rankings(scores)]
    if len(ranked) == 2:
        return interleaver(recipe.interleaving)(ranked[0], ranked[1], k, rng)
    return team_draft_multileave(ranked, k, rng)


@dataclass(frozen=True)
class LearnerConfig:
    """Every knob of the minor learners; the defaults are the flows' (drn.exploration, drn.interleaving)."""

    alpha: float = ALPHA  # explore radius: W~ = W + alpha * U(-1, 1) * W
    eta: float = ETA  # step towards a winning explore network: W' = W + eta * (W~ - W)
    step_form: StepForm = StepForm.STANDARD  # or "literal": the paper's printed W' = W + eta * W~
    noise: Noise = Noise.ELEMENT  # U(-1, 1) per weight, or "tensor": one scalar per tensor
    interleaving: Method = DEFAULT_METHOD
    min_decisive: int = MIN_DECISIVE
    max_round_impressions: int = MAX_ROUND_IMPRESSIONS
    significance: float = SIGNIFICANCE
    explorers: int = EXPLORERS
    temperature: float = PL_TEMPERATURE
    pdgd_learning_rate: float = PDGD_LEARNING_RATE
    sgd_steps: int = SGD_STEPS
    sgd_learning_rate: float = SGD_LEARNING_RATE
    seed: int = 0

    def __post_init__(self) -> None:
        _as_options(self, step_form=StepForm, noise=Noise, interleaving=Method)


def _as_options(config: object, **choices: type[StrEnum]) -> None:
    """Turn a frozen config's string fields into their enums, refusing values outside the choices."""
    for name, enum in choices.items():
        object.__setattr__(config, name, option(enum, getattr(config, name), name))


class MinorLearner:
    """One round at a time: `serve` lists, `observe` their clicks, `end_round` every T_D (may change W in place)."""

    name = "learner"

    def __init__(self, config: LearnerConfig):
        self.config = config
        self.recipe = RoundRecipe(learner=self.name, noise=config.noise, interleaving=config.interleaving,
                                  explorers=config.explorers, temperature=config.temperature)
        self.rng = np.random.default_rng(config.seed)
        self._rounds = 0

    def start(self, network: DuelingQNetwork) -> None:
        """Open a round around the current W (at the start, and whenever W changed, e.g. by a major update)."""
        self._rounds += 1

    def serve(self, network: DuelingQNetwork, batch: FeatureBatch, k: int) -> tuple[list[int], Any]:
        """Candidate indices to show, in order, and their teams when the list is interleaved (what `observe` needs
        to learn from its clicks): made by `round_list` from W's and the round's networks' scores, as serving does."""
        networks = [network, *self._round_networks()]
        scores = np.stack([net.score(batch) for net in networks])
        mixed = round_list(self.recipe, scores, [str(i) for i in range(len(batch.candidates))], k, self.rng)
        return [int(i) for i in mixed.served], tuple(mixed.teams) if len(networks) > 1 else None

    def _round_networks(self) -> list[DuelingQNetwork]:
        """What the round scores beside W, in team order (none: W alone)."""
        return []

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
        self.challenger: DuelingQNetwork | None = None
        self.round: list[tuple[tuple[int, ...], list[int]]] = []

    def _round_networks(self) -> list[DuelingQNetwork]:
        return [] if self.challenger is None else [self.challenger]

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        if memo is not None:
            self.round.append(_teams_and_clicks(memo, clicked))


class DBGD(_Duel):
    name = LearnerName.DBGD

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
    name = LearnerName.MGD

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        c = self.config
        base = network.state_dict()
        self.explorers = [explore_weights(base, s, c.alpha, c.noise) for s in explorer_seeds(self._round_seed(),
                                                                                            c.explorers)]
        self.nets = [copy.deepcopy(network) for _ in self.explorers]
        for net, weights in zip(self.nets, self.explorers):
            net.load_state_dict(weights)
        self.round: list[tuple[tuple[int, ...], list[int]]] = []

    def _round_networks(self) -> list[DuelingQNetwork]:
        return self.nets

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        self.round.append(_teams_and_clicks(memo, clicked))

    def end_round(self, network: DuelingQNetwork) -> dict:
        c = self.config
        winners = mgd_winners(self.round, len(self.nets), c.interleaving, min_decisive=c.min_decisive,
                              max_impressions=c.max_round_impressions, significance=c.significance)
        if winners is None:
            return {"winner": "pending", "stepped": False}
        if winners:
            mean = mean_weights([self.explorers[j] for j in winners])
            network.load_state_dict(dbgd_step(network.state_dict(), mean, c.eta, c.step_form))
        self.start(network)
        return {"winner": f"{len(winners)} of {len(self.nets)} explorers", "stepped": bool(winners)}


def mgd_winners(impressions: Sequence[tuple[Sequence[int], Sequence[int]]], explorers: int, interleaving: str, *,
                min_decisive: int, max_impressions: int, significance: float) -> list[int] | None:
    """The explorers (0-based) that beat W in a multileaved round, or None while it is pending: until
    `min_decisive` impressions credited some team more than another (or the round holds `max_impressions`). Each
    explorer is then judged against W as a duel over the round (other teams' slots earn neither side credit), by
    the sign test."""
    decisive = sum(_decisive(teams, clicked, explorers + 1) for teams, clicked in impressions)
    if decisive < min_decisive and len(impressions) < max_impressions:
        return None
    duels = [round_outcome([(_as_duel(teams, j), clicked) for teams, clicked in impressions], interleaving,
                           min_decisive=0, significance=significance) for j in range(1, explorers + 1)]
    return [j for j, duel in enumerate(duels) if duel.explore_won]


def _decisive(teams: Sequence[int], clicked: Sequence[int], n_teams: int) -> bool:
    """Whether the clicks credited one team more than another in this impression."""
    credit = np.bincount([teams[p] for p in set(clicked) if teams[p] >= 0], minlength=n_teams)
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


def plackett_luce_sample(scores: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """A top-k list drawn from Plackett-Luce over `scores` (sorting by score + Gumbel noise draws exactly that)."""
    return np.argsort(-(scores + rng.gumbel(size=len(scores))), kind="stable")[:k].tolist()


ClickedList = tuple[FeatureBatch, Sequence[int], Sequence[bool]]  # a request's features, shown indices, clicks


class PDGD(MinorLearner):
    name = LearnerName.PDGD

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        self.round: list[ClickedList] = []

    def observe(self, batch: FeatureBatch, shown: Sequence[int], memo: Any, clicked: Sequence[bool]) -> None:
        if any(clicked):
            self.round.append((batch, list(shown), list(clicked)))

    def end_round(self, network: DuelingQNetwork) -> dict:
        c = self.config
        lists = pdgd_step(network, self.round, c.temperature, c.pdgd_learning_rate)
        self.start(network)
        return {"winner": f"{lists} clicked lists" if lists else "no clicks", "stepped": bool(lists)}


def pdgd_step(network: DuelingQNetwork, lists: Sequence[ClickedList], temperature: float,
              learning_rate: float) -> int:
    """One gradient step of W (in place) on a round's preferences: each clicked item over each unclicked one placed
    above the last click or right below it, weighted by rho = P(swapped) / (P(list) + P(swapped)) under the
    Plackett-Luce model the lists were sampled from (W's scores / temperature), which makes the estimate unbiased
    with respect to position bias. Returns how many lists had a click."""
    clicked_lists = [item for item in lists if any(item[2])]
    if not clicked_lists:
        return 0
    with torch.no_grad():
        sampled_by = [network.score(batch).astype(np.float64) / temperature for batch, _, _ in clicked_lists]
    network.train()
    network.zero_grad()
    loss = sum(_pdgd_loss(network, batch, list(shown), scores, list(clicked), temperature)
               for (batch, shown, clicked), scores in zip(clicked_lists, sampled_by))
    loss.backward()
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.grad is not None:
                parameter -= learning_rate * parameter.grad
    network.eval()
    return len(clicked_lists)


def _pdgd_loss(network: DuelingQNetwork, batch: FeatureBatch, shown: list[int], scores: np.ndarray,
               clicked: list[bool], temperature: float) -> torch.Tensor:
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
    q = _shown_q(network, batch, shown) / temperature
    won, lost = zip(*pairs)
    margins = q[list(won)] - q[list(lost)]
    return -(torch.as_tensor(rho, dtype=q.dtype) * torch.nn.functional.logsigmoid(margins)).sum()


class SGD(_Duel):
    name = LearnerName.SGD

    def start(self, network: DuelingQNetwork) -> None:
        super().start(network)
        self.challenger = None  # the first round (and the one after a major update) only collects feedback
        self.round = []
        self.samples: list[ClickedList] = []

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
        c = self.config
        self.challenger = (sgd_challenger(network, samples, c.sgd_steps, c.sgd_learning_rate, self.rng)
                           if samples else None)
        self.round, self.samples = [], []
        return event


def sgd_challenger(network: DuelingQNetwork, samples: Sequence[ClickedList], steps: int, learning_rate: float,
                   rng: np.random.Generator) -> DuelingQNetwork:
    """A copy of W after `steps` Adam steps of click regression on the shown items of `samples`."""
    challenger = copy.deepcopy(network)
    optimizer = torch.optim.Adam(challenger.parameters(), lr=learning_rate)
    challenger.train()
    for _ in range(steps):
        picks = rng.choice(len(samples), min(SGD_BATCH, len(samples)), replace=False)
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
assert tuple(LEARNERS) == LEARNER_NAMES


def learner(name: str, config: LearnerConfig) -> MinorLearner:
    """The minor learner named by configuration."""
    if name not in LEARNERS:
        raise ValueError(f"unknown minor learner {name!r}; choose one of {sorted(LEARNERS)}")
    return LEARNERS[name](config)

