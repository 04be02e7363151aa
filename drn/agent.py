"""The DRN agent: one policy class for offline evaluation and the online loop.

Greedy ranking by Q(s, a), or epsilon-greedy, or a minor learner of drn.learners (what each T_D does to W), with
optional major updates (replay training every T_R). `fit` trains a fresh network offline by double DQN on logs,
with the step size and passes chosen on the logs' last day (`drn.selection`) unless `choose_settings` is off.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from drn.exploration import EpsilonGreedy
from drn.features import FeatureBatch, Sample
from drn.learners import LearnerConfig, learner
from drn.mind import Dataset, Impression
from drn.model import DuelingQNetwork, NetworkConfig, build_network
from drn.policy import Policy, top_k
from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN
from drn.selection import train_offline
from drn.training import MAJOR_LEARNING_RATE, MAJOR_TRAIN_EVERY, ReplayBuffer, TrainConfig, Trainer

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
    steps_per_impression: float = 1 / MAJOR_TRAIN_EVERY  # major update: gradient steps per impression logged since
    #   the last one
    major_learning_rate: float = MAJOR_LEARNING_RATE  # fine-tuning step of warm-started major updates
    seed: int = 0


GREEDY_EXPLORERS = ("none", "egreedy")


class DRNPolicy(Policy):
    """The DRN agent: greedy or epsilon-greedy, or a minor learner, with optional major updates."""

    name = "drn"

    def __init__(self, network: DuelingQNetwork | None = None, config: OnlineConfig = OnlineConfig(),
                 train_config: TrainConfig = TrainConfig(), name: str = "drn", replay: ReplayBuffer | None = None,
                 progress: Callable[[str], None] | None = None, choose_settings: bool = True):
        """`replay`: experience already logged (e.g. the offline training's buffer); major updates replay it
        together with the new feedback, as DRN's major update replays everything logged. `progress` and
        `choose_settings` are `fit`'s."""
        self.config, self.train_config, self.name = config, train_config, name
        self.progress, self.choose_settings = progress, choose_settings
        self.training_summary: dict = {}
        self.rng = np.random.default_rng(config.seed)
        self.egreedy = EpsilonGreedy(config.epsilon, self.rng) if config.explorer == "egreedy" else None
        self._memos: dict[str, object] = {}
        self._next_minor = self._next_major = None
        self._new_impressions = 0
        self.events: list[dict] = []  # what each update decided, for plots and tests
        self._attach(network or build_network(NetworkConfig(), seed=train_config.seed), replay)

    def _attach(self, network: DuelingQNetwork, replay: ReplayBuffer | None) -> None:
        """Serve and update `network`: the major updates' trainer and the minor learner's round work on it."""
        self.network, self.trainer, self.minor = network, None, None
        if self.config.major_updates:
            self.trainer = Trainer(network, replace(self.train_config, learning_rate=self.config.major_learning_rate))
            if replay is not None:
                self.trainer.buffer = copy.deepcopy(replay)
        if self.config.explorer not in GREEDY_EXPLORERS:
            self.minor = learner(self.config.explorer, replace(self.config.learner, seed=self.config.seed))
            self.minor.start(network)

    def fit(self, train_data: Dataset) -> None:
        trainer, self.training_summary = train_offline(train_data, self.train_config, self.train_config.seed,
                                                       choose_settings=self.choose_settings, progress=self.progress)
        self._attach(trainer.network, trainer.buffer)

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
