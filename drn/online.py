"""The online loop in-process: a policy serves the simulated world, learns from its clicks, and the DRN agent
runs its minor (a learner of drn.learners, every T_D) and major (replay training, every T_R) updates on world time.

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
from drn.exploration import EpsilonGreedy
from drn.features import FeatureBatch, FeatureState, Sample
from drn.learners import LearnerConfig, learner
from drn.mind import Impression
from drn.model import DuelingQNetwork
from drn.policy import Policy, top_k
from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN
from drn.training import MAJOR_LEARNING_RATE, ReplayBuffer, TrainConfig, Trainer
from drn.world import SLATE_SIZE, World

MINUTE = 60.0


@dataclass(frozen=True)
class OnlineConfig:
    explorer: str = "none"  # "none" (greedy), "egreedy" (DRN.md's EG comparison) or a minor learner of
    #   drn.learners (dbgd, mgd, pdgd, sgd), which decides what each T_D does to W
    major_updates: bool = False  # replay training every `major_every_s`
    minor_every_s: float = MINOR_EVERY_MIN * MINUTE  # T_D: a round's end (it may stay open, see drn.learners)
    major_every_s: float = MAJOR_EVERY_MIN * MINUTE  # T_R
    learner: LearnerConfig = LearnerConfig()  # the minor learners' knobs (their seed is `seed`)
    epsilon: float = 0.1  # epsilon-greedy: chance that a slot is filled at random
    steps_per_impression: float = 0.25  # major update: gradient steps per impression logged since the last one
    major_learning_rate: float = MAJOR_LEARNING_RATE  # fine-tuning step of warm-started major updates
    seed: int = 0


GREEDY_EXPLORERS = ("none", "egreedy")


class OnlineDRN(Policy):
    """The DRN agent online: greedy or epsilon-greedy, or a minor learner, with optional major updates."""

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
        self.minor = None
        if config.explorer not in GREEDY_EXPLORERS:
            self.minor = learner(config.explorer, replace(config.learner, seed=config.seed))
            self.minor.start(network)
        self._memos: dict[str, object] = {}
        self._next_minor = self._next_major = None
        self._new_impressions = 0
        self.events: list[dict] = []  # what each update decided, for plots and tests

    # ---- serving ------------------------------------------------------------------------------------------
    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self.network.score(batch)

    def recommend(self, batch: FeatureBatch, k: int) -> list[int]:
        if self.minor is not None:
            shown, memo = self.minor.serve(self.network, batch, k)
            self._memos[_key(batch, shown)] = memo
            return shown
        scores = self.scores(batch)
        return self.egreedy.rank(scores)[:k] if self.egreedy is not None else top_k(scores, k)

    # ---- learning -----------------------------------------------------------------------------------------
    def learn(self, batch: FeatureBatch, shown: Sequence[int], clicked: Sequence[bool], impression: Impression) -> None:
        now = impression.time
        if self._next_minor is None:
            self._next_minor, self._next_major = now + self.config.minor_every_s, now + self.config.major_every_s
        if self.minor is not None:
            self.minor.observe(batch, shown, self._memos.pop(_key(batch, list(shown))), clicked)
        if self.trainer is not None:
            shown_batch = FeatureBatch(batch.state, batch.action[list(shown)], impression.candidates)
            self.trainer.observe(Sample(impression, shown_batch))
            self._new_impressions += 1
        if self.minor is not None and now >= self._next_minor:
            self.events.append({"time": now, "kind": "minor", **self.minor.end_round(self.network)})
            self._next_minor = _next_slot(self._next_minor, now, self.config.minor_every_s)
        if self.trainer is not None and now >= self._next_major:
            self._major_update(now)
            self._next_major = _next_slot(self._next_major, now, self.config.major_every_s)

    def _major_update(self, now: float) -> None:
        """Replay training over the buffer (everything logged, bounded), warm-started from the served weights."""
        steps = int(self._new_impressions * self.config.steps_per_impression)
        for _ in range(steps):
            self.trainer.gradient_step()
        self.network.eval()
        self._new_impressions = 0
        self.events.append({"time": now, "kind": "major", "steps": steps})
        if self.minor is not None:
            self.minor.start(self.network)  # W changed: the round must be opened around the new W


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

    def extend(self, later: LiveResult) -> None:
        """Append a later part of the same run."""
        for name in ("times", "clicks", "shown", "activeness"):
            getattr(self, name).extend(getattr(later, name))

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
