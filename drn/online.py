"""The online loop in-process: a policy serves the simulated world, learns from its clicks, and the DRN agent
runs its minor (DBGD, every T_D) and major (replay training, every T_R) updates on world time.

This is the whole DRN loop without servers, for experiments and tests; the flows and the HTTP service run the
same drn functions around a registry and a log store.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import threadpoolctl
import torch

from drn.activeness import UserActiveness
from drn.exploration import ALPHA, ETA, EpsilonGreedy, dbgd_step, explore_weights
from drn.features import FeatureBatch, FeatureState, Sample
from drn.interleaving import (DEFAULT_METHOD, MAX_ROUND_IMPRESSIONS, MIN_DECISIVE, SIGNIFICANCE, interleaver,
                              round_outcome)
from drn.mind import Impression
from drn.model import DuelingQNetwork
from drn.policy import Policy, rankings, top_k
from drn.training import ReplayBuffer, TrainConfig, Trainer
from drn.world import SLATE_SIZE, World

MINUTE = 60.0


@dataclass(frozen=True)
class OnlineConfig:
    explorer: str = "none"  # "none" (greedy), "egreedy" (DRN.md's EG comparison) or "dbgd" (interleaved W vs W~)
    major_updates: bool = False  # replay training every `major_every_s`
    minor_every_s: float = 30 * MINUTE  # T_D: one exploration round, then a DBGD step if explore won
    major_every_s: float = 60 * MINUTE  # T_R
    alpha: float = ALPHA  # explore radius: W~ = W + alpha * U(-1, 1) * W
    eta: float = ETA  # DBGD step: W' = W + eta * (W~ - W)
    step_form: str = "standard"  # or "literal": the paper's printed W' = W + eta * W~
    noise: str = "element"  # U(-1, 1) per weight, or "tensor": one scalar per tensor
    interleaving: str = DEFAULT_METHOD
    min_decisive: int = MIN_DECISIVE  # when a round decides: the minor-update flow's rule (drn.interleaving)
    max_round_impressions: int = MAX_ROUND_IMPRESSIONS
    significance: float = SIGNIFICANCE
    epsilon: float = 0.1  # epsilon-greedy: chance that a slot is filled at random
    steps_per_impression: float = 0.25  # major update: gradient steps per impression logged since the last one
    major_learning_rate: float = 1e-3  # fine-tuning step of warm-started major updates: smaller than offline
    #   training's, so a few hours of self-selected feedback (only what the policy itself showed) refine the
    #   offline fit instead of overwriting it
    seed: int = 0


class OnlineDRN(Policy):
    """The DRN agent online: greedy, epsilon-greedy or DBGD exploration, with optional major updates."""

    def __init__(self, network: DuelingQNetwork, config: OnlineConfig = OnlineConfig(),
                 train_config: TrainConfig = TrainConfig(), name: str = "drn", replay: ReplayBuffer | None = None):
        """`replay`: experience already logged (e.g. the offline training's buffer); major updates replay it
        together with the new feedback, as DRN's major update replays everything logged."""
        self.network, self.config, self.name = network, config, name
        self.rng = np.random.default_rng(config.seed)
        self.trainer = None
        if config.major_updates:
            self.trainer = Trainer(network, replace(train_config, learning_rate=config.major_learning_rate))
            if replay is not None:
                self.trainer.buffer = copy.deepcopy(replay)
        self.egreedy = EpsilonGreedy(config.epsilon, self.rng) if config.explorer == "egreedy" else None
        self.interleave = interleaver(config.interleaving)
        self._explore_net = copy.deepcopy(network) if config.explorer == "dbgd" else None
        self._round_seed = 0
        self._round: list[tuple[Sequence[int], Sequence[int]]] = []  # (teams, clicked positions) this round
        self._teams: dict[str, tuple[int, ...]] = {}
        self._next_minor = self._next_major = None
        self._new_impressions = 0
        self.events: list[dict] = []  # what each update decided, for plots and tests
        if self._explore_net is not None:
            self._open_round()

    # ---- serving ------------------------------------------------------------------------------------------
    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self.network.score(batch)

    def recommend(self, batch: FeatureBatch, k: int) -> list[int]:
        scores = self.scores(batch)
        if self.egreedy is not None:
            return self.egreedy.rank(scores)[:k]
        if self._explore_net is None:
            return top_k(scores, k)
        exploit, explore = ([str(i) for i in ranking]
                            for ranking in rankings(np.stack([scores, self._explore_net.score(batch)])))
        mixed = self.interleave(exploit, explore, k, self.rng)
        shown = [int(i) for i in mixed.served]
        self._teams[_key(batch, shown)] = tuple(mixed.teams)
        return shown

    # ---- learning -----------------------------------------------------------------------------------------
    def learn(self, batch: FeatureBatch, shown: Sequence[int], clicked: Sequence[bool], impression: Impression) -> None:
        now = impression.time
        if self._next_minor is None:
            self._next_minor, self._next_major = now + self.config.minor_every_s, now + self.config.major_every_s
        if self._explore_net is not None:
            teams = self._teams.pop(_key(batch, list(shown)))
            self._round.append((teams, [p for p, c in enumerate(clicked) if c]))
        if self.trainer is not None:
            shown_batch = FeatureBatch(batch.state, batch.action[list(shown)], impression.candidates)
            self.trainer.observe(Sample(impression, shown_batch))
            self._new_impressions += 1
        if self._explore_net is not None and now >= self._next_minor:
            self._minor_update(now)
            self._next_minor = _next_slot(self._next_minor, now, self.config.minor_every_s)
        if self.trainer is not None and now >= self._next_major:
            self._major_update(now)
            self._next_major = _next_slot(self._next_major, now, self.config.major_every_s)

    def _open_round(self) -> None:
        self._round_seed += 1
        explore = explore_weights(self.network.state_dict(), self.config.seed * 1_000_003 + self._round_seed,
                                  self.config.alpha, self.config.noise)
        self._explore_net.load_state_dict(explore)
        self._round = []

    def _minor_update(self, now: float) -> None:
        """DBGD: a round with too few decisive impressions stays open; a decided one steps towards W~ when its side
        of the interleaving won, and a new round opens."""
        c = self.config
        outcome = round_outcome(self._round, c.interleaving, min_decisive=c.min_decisive,
                                max_impressions=c.max_round_impressions, significance=c.significance)
        if outcome.pending:
            self.events.append({"time": now, "kind": "minor", "winner": outcome.winner, "stepped": False})
            return
        if outcome.explore_won:
            stepped = dbgd_step(self.network.state_dict(), self._explore_net.state_dict(), c.eta, c.step_form)
            self.network.load_state_dict(stepped)
        self.events.append({"time": now, "kind": "minor", "winner": outcome.winner, "stepped": outcome.explore_won})
        self._open_round()

    def _major_update(self, now: float) -> None:
        """Replay training over the buffer (everything logged, bounded), warm-started from the served weights."""
        steps = int(self._new_impressions * self.config.steps_per_impression)
        for _ in range(steps):
            self.trainer.gradient_step()
        self.network.eval()
        self._new_impressions = 0
        self.events.append({"time": now, "kind": "major", "steps": steps})
        if self._explore_net is not None:
            self._open_round()  # W changed: the round's W~ must be regenerated from the new W


def _next_slot(due: float, now: float, every: float) -> float:
    """The next deadline on a fixed grid (like a schedule every T), skipping slots that passed without traffic."""
    return due + every * (1 + (now - due) // every)


def _key(batch: FeatureBatch, shown: Sequence[int]) -> str:
    """Identifies a served list between recommend() and learn() of the same request."""
    return f"{id(batch)}:{','.join(map(str, shown))}"


@dataclass
class LiveResult:
    """Per-impression outcomes of a live run, in world-time order."""

    times: list[float] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    activeness: list[float] = field(default_factory=list)  # the user's activeness right after this request

    def ctr(self, skip_fraction: float = 0.0) -> float:
        start = int(len(self.clicks) * skip_fraction)
        return float(np.sum(self.clicks[start:]) / max(np.sum(self.shown[start:]), 1))

    def mean_activeness(self, skip_fraction: float = 0.0) -> float:
        start = int(len(self.activeness) * skip_fraction)
        return float(np.mean(self.activeness[start:]))


def run_live(policy: Policy, world: World, state: FeatureState, impressions: int, k: int = SLATE_SIZE,
             activeness: UserActiveness | None = None,
             progress: Callable[[int, int], None] | None = None) -> LiveResult:
    """Serve `impressions` requests of the world with `policy`, through the same feature code as serving."""
    result, known = LiveResult(), set()
    activeness = activeness or UserActiveness()
    for done in range(1, impressions + 1):
        request = world.next_request()
        for news_id in request.candidates:
            if news_id not in known:
                state.add_news(world.item(news_id))
                known.add(news_id)
        batch = state.features(request.user, request.candidates, request.time)
        shown_idx = policy.recommend(batch, k)
        shown = tuple(request.candidates[i] for i in shown_idx)
        response = world.respond(request, shown)
        click_time = dict(response.clicks)
        state.record_impression(request.user, shown, request.time)
        for news_id, time in response.clicks:
            state.record_click(request.user, news_id, time)
        labels = tuple(int(n in click_time) for n in shown)
        impression = Impression(request.request_id, request.user, request.time, (), shown, labels,
                                tuple(click_time[n] for n in shown if n in click_time))
        policy.learn(batch, shown_idx, [bool(y) for y in labels], impression)
        result.times.append(request.time)
        result.clicks.append(sum(labels))
        result.shown.append(len(shown))
        result.activeness.append(activeness.observe_return(request.user, request.time))
        if progress:
            progress(done, impressions)
    return result


def set_threads() -> None:
    """One thread per process for torch and for numpy's BLAS: these networks are small, benchmark processes run
    side by side, and OpenBLAS's second thread spins while it waits, costing more CPU than it saves on products
    this small."""
    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)
