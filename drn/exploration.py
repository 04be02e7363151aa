"""Exploration: Dueling Bandit Gradient Descent over torch state_dicts, and epsilon-greedy for comparison.

DBGD (Yue & Joachims 2009) as DRN uses it (DRN.md, "Exploration"): perturb the served weights W into an explore
network W~, interleave both networks' rankings, and if W~ wins the round step W towards it.

W~ is a pure function of (W, seed, alpha, noise): serving regenerates it from the round seed it logs, and the
minor update regenerates the bit-identical W~ to step towards. The noise is drawn on the CPU from a
torch.Generator seeded with `seed`, over the state_dict keys in sorted order, so it depends on neither the
dict's insertion order nor any global RNG state.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from drn.interleaving import DEFAULT_METHOD, METHODS

ALPHA = 0.1  # exploration radius: dW = ALPHA * U(-1, 1) * W (DRN.md)
ETA = 0.05  # DBGD step size towards a winning explore network (DRN.md)
NOISE_SHAPES = ("element", "tensor")  # U(-1, 1) drawn per element (default) or one scalar per tensor
STEP_FORMS = ("standard", "literal")  # standard: W + eta (W~ - W); literal, as the paper prints it: W + eta W~

PIPELINE_LEARNERS = ("dbgd",)  # minor learners serving and the minor-update flow run (drn.learners has more in-process)

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RoundRecipe:
    """How an exploration round is served, kept on the round in the log store so that serving and the minor update
    read one record instead of two settings kept equal by hand. A round logged before recipes existed reads as the
    defaults, which is what everything ran then."""

    learner: str = "dbgd"
    noise: str = "element"  # how W~ is drawn (explore_weights)
    interleaving: str = DEFAULT_METHOD
    challenger: str | None = None  # a gate round: this registered version, not W~, is interleaved against W; it is
    #   promoted only when it wins the round (a major update's candidate, drn.lifecycle.challenge)

    def __post_init__(self) -> None:
        if self.learner not in PIPELINE_LEARNERS:
            raise ValueError(f"learner must be one of {PIPELINE_LEARNERS} in the pipeline, got {self.learner!r}")
        if self.noise not in NOISE_SHAPES:
            raise ValueError(f"noise must be one of {NOISE_SHAPES}, got {self.noise!r}")
        if self.interleaving not in METHODS:
            raise ValueError(f"interleaving must be one of {sorted(METHODS)}, got {self.interleaving!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def exploring(self) -> RoundRecipe:
        """The same serving choices for an exploration round (W~ from noise, no challenger)."""
        return replace(self, challenger=None)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> RoundRecipe:
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})


def explore_weights(weights: Weights, seed: int, alpha: float = ALPHA, noise: str = "element") -> Weights:
    """W~ = W + alpha * U(-1, 1) * W for every float tensor; other tensors (integer buffers) are copied."""
    if noise not in NOISE_SHAPES:
        raise ValueError(f"noise must be one of {NOISE_SHAPES}, got {noise!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    explored: Weights = {}
    for key in sorted(weights):
        w = weights[key]
        if not w.is_floating_point():
            explored[key] = w.clone()
            continue
        w_cpu = w.detach().cpu()
        shape = w_cpu.shape if noise == "element" else ()
        u = torch.rand(shape, generator=generator, dtype=w_cpu.dtype) * 2 - 1
        explored[key] = (w_cpu + alpha * u * w_cpu).to(w.device)
    return {key: explored[key] for key in weights}


def dbgd_step(weights: Weights, explore: Weights, eta: float = ETA, form: str = "standard") -> Weights:
    """Move W towards the winning W~: standard W + eta * (W~ - W), or literal W + eta * W~ (which also rescales W).

    Integer buffers keep W's values.
    """
    if form not in STEP_FORMS:
        raise ValueError(f"form must be one of {STEP_FORMS}, got {form!r}")
    if weights.keys() != explore.keys():
        raise ValueError(f"weights and explore weights differ in keys: {sorted(weights.keys() ^ explore.keys())}")
    stepped: Weights = {}
    for key, w in weights.items():
        w = w.detach()
        if not w.is_floating_point():
            stepped[key] = w.clone()
        elif form == "standard":
            stepped[key] = w + eta * (explore[key].detach() - w)
        else:
            stepped[key] = w + eta * explore[key].detach()
    return stepped


@dataclass
class EpsilonGreedy:
    """The epsilon-greedy explorer DRN compares DBGD with: each position is, with probability epsilon, filled by
    an item drawn uniformly from those not yet placed (possibly the greedy one), else by the best-scored one."""

    epsilon: float
    rng: np.random.Generator

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

    def rank(self, scores: Sequence[float]) -> list[int]:
        """Indices into `scores`, in serving order (ties in score keep index order)."""
        remaining = sorted(range(len(scores)), key=lambda i: -scores[i])
        order = []
        while remaining:
            explore = self.rng.random() < self.epsilon
            pick = int(self.rng.integers(len(remaining))) if explore else 0
            order.append(remaining.pop(pick))
        return order
