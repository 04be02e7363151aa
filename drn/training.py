"""Double DQN with a target network and experience replay: offline training and the major update.

Samples stream from the logs through the online feature state (`features.replay`) into a replay buffer of
bounded size, so memory stays flat however long the log is. A transition is one impression:
  s   = the user's state at the request,      a = the kept candidates (clicked ones + sampled negatives),
  r_a = click(a) + beta * activeness reward   (the user's activeness right after their next return),
  s'  = the user's next impression (its state and kept candidates), or terminal when the user does not come
        back within `next_state_horizon_s` or the log ends.
Target (double DQN): y = r + gamma * Q(s', argmax_a' Q(s', a'; W); W'), W' refreshed every `target_every` steps.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from drn.activeness import BETA, LAMBDA0, SA, UserActiveness, survival, total_reward
from drn.features import FeatureState, Sample, replay, warmed
from drn.mind import Dataset, Impression, NewsItem
from drn.model import DuelingQNetwork

ProgressFn = Callable[[int, int], None]


# A major update's step size and cadence, chosen on the tuning seeds (`drn bench tune --learners major`). The step is
# smaller than offline training's: a few hours of self-selected feedback (only what the policy itself showed) should
# refine the offline fit, not overwrite it. The pipeline's and the in-process loop's major updates both use them.
MAJOR_LEARNING_RATE = 3e-4
MAJOR_EPOCHS = 1  # a major update passes once over the impressions logged since the last one
MAJOR_TRAIN_EVERY = 8  # a major update's one pass steps after every 8 new impressions: its window is hours of logs,
#   and at offline training's cadence it would take a handful of steps


@dataclass(frozen=True)
class TrainConfig:
    gamma: float = 0.4  # DRN.md discount of future reward; 0 gives the paper's "DN" (no future reward)
    beta: float = BETA  # weight of the activeness reward in r = r_click + beta * r_active
    learning_rate: float = 3e-3  # Adam step size when a window is too short to choose one (drn.selection chooses)
    weight_decay: float = 1e-5  # L2 on weights: the features are sparse and MIND-sized logs are small
    batch_impressions: int = 32  # transitions (impressions) per gradient step
    train_every: int = 32  # a gradient step after this many new impressions enter the buffer: with a batch of 32,
    #   each transition is drawn about once per pass (every 4 drew it 8 times, and overfitted; benchmarks/LEARNING.md)
    buffer_impressions: int = 4096  # replay capacity: bounds memory however long the log is
    epochs: int = 5  # passes over the log when a window is too short to choose them (the buffer keeps filling across
    #   passes): about what drn.selection chose on the tuning seeds' windows
    target_every: int = 50  # gradient steps between copies of W into the target network W'
    max_positives: int = 4  # clicked candidates kept per impression
    negatives: int = 8  # unclicked candidates sampled per impression (the rest carry no extra signal per step)
    next_state_horizon_s: float = 7 * 86400.0  # a user not back within this is a terminal transition
    activeness_lambda0: float = LAMBDA0  # hazard of the survival model (DRN.md); scale it with a compressed clock
    activeness_sa: float = SA  # activeness jump on each return
    seed: int = 0

    @property
    def actions_per_impression(self) -> int:
        return self.max_positives + self.negatives

    def to_dict(self) -> dict:
        return asdict(self)


class ReplayBuffer:
    """Fixed-size ring buffer of impression transitions, stored as padded float32 arrays."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int, actions: int):
        self.capacity, self.size, self.next = capacity, 0, 0
        self.state = np.zeros((capacity, state_dim), np.float32)
        self.action = np.zeros((capacity, actions, action_dim), np.float32)
        self.mask = np.zeros((capacity, actions), np.float32)
        self.reward = np.zeros((capacity, actions), np.float32)
        self.next_state = np.zeros((capacity, state_dim), np.float32)
        self.next_action = np.zeros((capacity, actions, action_dim), np.float32)
        self.next_mask = np.zeros((capacity, actions), np.float32)
        self.done = np.zeros(capacity, np.float32)

    def add(self, step: "_Step", reward: np.ndarray, following: "_Step | None") -> None:
        i, m = self.next, len(step.rows)
        self.state[i], self.action[i, :m], self.action[i, m:] = step.state, step.action, 0.0
        self.mask[i] = 0.0
        self.mask[i, :m] = 1.0
        self.reward[i] = 0.0
        self.reward[i, :m] = reward
        self.done[i] = float(following is None)
        self.next_mask[i] = 0.0
        if following is not None:
            n = len(following.rows)
            self.next_state[i], self.next_action[i, :n], self.next_action[i, n:] = following.state, following.action, 0.0
            self.next_mask[i, :n] = 1.0
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=min(size, self.size))
        return {name: torch.from_numpy(getattr(self, name)[idx]) for name in
                ("state", "action", "mask", "reward", "next_state", "next_action", "next_mask", "done")}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))


@dataclass
class _Step:
    """One impression reduced to what a transition needs."""

    time: float
    state: np.ndarray
    action: np.ndarray
    clicks: np.ndarray
    rows: np.ndarray
    returned: float | None  # a reported return after it: the user was back then, whatever they requested


def _keep(sample: Sample, config: TrainConfig, rng: np.random.Generator) -> _Step:
    labels = np.asarray(sample.impression.labels or (0,) * len(sample.impression.candidates))
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(positives) > config.max_positives:
        positives = rng.choice(positives, config.max_positives, replace=False)
    if len(negatives) > config.negatives:
        negatives = rng.choice(negatives, config.negatives, replace=False)
    rows = np.sort(np.concatenate([positives, negatives]))
    return _Step(sample.impression.time, sample.batch.state, sample.batch.action[rows], labels[rows].astype(np.float32),
                 rows, sample.impression.returned)


def double_dqn_targets(batch: dict[str, torch.Tensor], online: nn.Module, target: nn.Module, gamma: float) -> torch.Tensor:
    """y = r + gamma * Q(s', argmax_a' Q(s', a'; W); W') for every kept action (zero future when terminal)."""
    with torch.no_grad():
        invalid = batch["next_mask"] == 0
        chooser = online(batch["next_state"], batch["next_action"], batch["next_mask"]).masked_fill(invalid, -torch.inf)
        best = chooser.argmax(dim=1, keepdim=True)
        evaluated = target(batch["next_state"], batch["next_action"], batch["next_mask"]).gather(1, best).squeeze(1)
        future = torch.where(batch["done"] > 0, torch.zeros_like(evaluated), evaluated)
        return batch["reward"] + gamma * future.unsqueeze(1)


class Trainer:
    """Streams logs into the replay buffer and takes double-DQN steps; warm-starts from given weights."""

    def __init__(self, network: DuelingQNetwork, config: TrainConfig = TrainConfig(),
                 progress: ProgressFn | None = None):
        self.config, self.network, self.progress = config, network, progress
        self.target = copy.deepcopy(network)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        self.buffer = ReplayBuffer(config.buffer_impressions, network.config.state_dim, network.config.action_dim,
                                   config.actions_per_impression)
        self.steps, self.losses = 0, []
        self.begin_pass()

    def fit(self, impressions: Sequence[Impression] | Callable[[], Iterable[Impression]],
            news: Mapping[str, NewsItem], start: FeatureState | None = None) -> dict:
        """Train for `epochs` passes over time-ordered logs; returns a summary of what happened.

        `impressions` is a list, or a callable that opens a fresh stream per pass (e.g. reading a time-ordered
        behaviors.tsv line by line), so a log larger than memory never has to be loaded. `start`: the feature
        state at the logs' beginning (a major update's: everything logged before its window), copied for each
        pass; None: an empty one.
        """
        open_stream = impressions if callable(impressions) else (lambda: impressions)
        total = len(impressions) * self.config.epochs if not callable(impressions) else None
        fresh = (lambda: copy.deepcopy(start)) if start is not None else (lambda: FeatureState(news))
        return self.fit_samples(lambda: replay(open_stream(), fresh()), total)

    def fit_samples(self, open_samples: Callable[[], Iterable[Sample]], total: int | None = None) -> dict:
        """Train for `epochs` passes over time-ordered samples, a fresh stream per pass: the features a replay of
        the logs computes, wherever they were computed (`fit`'s replay, or shards on a cluster)."""
        torch.manual_seed(self.config.seed)
        seen = 0
        for _ in range(self.config.epochs):
            self.begin_pass()
            count, steps_before = 0, self.steps
            for count, sample in enumerate(open_samples(), start=1):
                self.observe(sample)
                if count % self.config.train_every == 0:
                    self.gradient_step()
                if self.progress:
                    self.progress(seen + count, total)
            seen += count
            self.end_pass()
            # The steps skipped while the buffer held less than a batch are taken now that the pass's last
            # transitions are in: in a short window whose users come back only after it (a major update's first
            # hour), every transition enters at the end, and without this the candidate is the parent, unchanged.
            for _ in range(count // self.config.train_every - (self.steps - steps_before)):
                self.gradient_step()
        self.network.eval()
        return self.summary(seen // self.config.epochs)

    def summary(self, impressions: int) -> dict:
        recent = self.losses[-100:]
        return {"steps": self.steps, "loss": float(np.mean(recent)) if recent else float("nan"),
                "buffer_bytes": self.buffer.nbytes, "impressions": impressions,
                "loss_curve": loss_curve(self.losses)}

    def remember(self, samples: Iterable[Sample]) -> int:
        """Put the transitions of earlier samples (in time order) in the replay buffer, with no gradient step: the
        memory later steps draw on beside the new data. Each user's last one waits for a next state a new pass does
        not give, and is left out. Returns how many transitions entered the buffer."""
        self.begin_pass()
        before = self.buffer.size
        for sample in samples:
            self.observe(sample)
        return self.buffer.size - before

    def begin_pass(self) -> None:
        """Start a pass over a log: user activeness and pending next states restart with it."""
        self._activeness = UserActiveness(lambda0=self.config.activeness_lambda0, sa=self.config.activeness_sa)
        self._pending: OrderedDict[str, _Step] = OrderedDict()  # each user's last step, awaiting the next

    def observe(self, sample: Sample) -> None:
        """Add one impression (in time order); it completes the same user's previous transition."""
        user, now = sample.impression.user, sample.impression.time
        self._expire(now)
        step = _keep(sample, self.config, self.rng)
        previous = self._pending.pop(user, None)
        if previous is not None:
            back = now if previous.returned is None else min(max(previous.returned, previous.time), now)
            returned = self._activeness.reward(user, previous.time, back)
            self.buffer.add(previous, total_reward(previous.clicks, returned, self.config.beta), step)
        self._activeness.observe_return(user, now)
        self._pending[user] = step

    def end_pass(self) -> None:
        """The log ended: every user still waiting closes with a terminal transition."""
        self._expire(float("inf"))

    def _expire(self, now: float) -> None:
        """Users not back within the horizon (or at the log's end) close with a terminal transition."""
        horizon = self.config.next_state_horizon_s
        while self._pending:
            user, step = next(iter(self._pending.items()))
            if now - step.time <= horizon:
                break
            self._pending.popitem(last=False)
            self.buffer.add(step, total_reward(step.clicks, self._terminal_activeness(user, step), self.config.beta), None)

    def _terminal_activeness(self, user: str, step: _Step) -> float:
        """A user who did not request again within the horizon: their activeness after a reported return inside it,
        else what is left of it after the horizon away."""
        horizon = self.config.next_state_horizon_s
        if step.returned is not None and 0.0 <= step.returned - step.time <= horizon:
            return self._activeness.reward(user, step.time, step.returned)
        return self._activeness.activeness(user, step.time) * survival(horizon, self.config.activeness_lambda0)

    def gradient_step(self) -> None:
        if self.buffer.size < min(self.config.batch_impressions, self.buffer.capacity):
            return
        self.network.train()
        batch = self.buffer.sample(self.rng, self.config.batch_impressions)
        targets = double_dqn_targets(batch, self.network, self.target, self.config.gamma)
        q = self.network(batch["state"], batch["action"], batch["mask"])
        loss = (((q - targets) ** 2) * batch["mask"]).sum() / batch["mask"].sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        self.losses.append(loss.item())
        if self.steps % self.config.target_every == 0:
            self.target.load_state_dict(self.network.state_dict())


CURVE_POINTS = 200  # a run's training-loss curve is kept as at most this many (step, mean loss) points


def loss_curve(losses: Sequence[float], points: int = CURVE_POINTS) -> list[tuple[int, float]]:
    """(last step of the bin, mean loss over the bin): the whole run's curve at a size a tracking store keeps."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).astype(int)
    return [(int(end), float(np.mean(losses[start:end]))) for start, end in zip(edges[:-1], edges[1:])]


def train(network: DuelingQNetwork, data: Dataset, config: TrainConfig = TrainConfig(),
          progress: ProgressFn | None = None, start: FeatureState | None = None,
          samples: Sequence[Sample] | None = None, memory: Sequence[Impression] = ()) -> dict:
    """Offline training / major update entry point: warm start = pass a network holding the given weights, and
    the feature state the data begins from as `start`. `samples`: the replay of `data` from `start`, already
    computed (by shards on a cluster); the trainer then reads them instead of replaying.

    `memory`: impressions logged just before `data`, which `start` then precedes: replayed into the buffer first and
    drawn on by every step with `data`'s, as DRN's major update replays what was logged (fitted alone, the lists
    its own model chose pull a warm-started model off what it learned before)."""
    trainer = Trainer(network, config, progress)
    remembered = 0
    if memory:
        start = warmed((), data.news, start)  # a copy, moved on to data's beginning by the memory's replay
        remembered = trainer.remember(replay(memory, start))
    if samples is None:
        summary = trainer.fit(data.impressions, data.news, start)
    elif len(samples) != len(data.impressions):
        raise ValueError(f"{len(samples)} samples for {len(data.impressions)} impressions")
    else:
        summary = trainer.fit_samples(lambda: samples, len(samples) * config.epochs)
    return {**summary, "remembered": remembered}
