"""Exploration: Dueling Bandit Gradient Descent over torch state_dicts, and epsilon-greedy for comparison.

DBGD (Yue & Joachims 2009) as DRN uses it (DRN.md, "Exploration"): perturb the served weights W into an explore
network W~, interleave both networks' rankings, and if W~ wins the round step W towards it.

W~ is a pure function of (W, seed, alpha, noise): serving regenerates it from the round seed it logs, and the
minor update regenerates the bit-identical W~ to step towards. The noise is drawn on the CPU from a
torch.Generator seeded with `seed`, over the state_dict keys in sorted order, so it depends on neither the
dict's insertion order nor any global RNG state.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from drn.options import option

ALPHA = 0.1  # exploration radius: dW = ALPHA * U(-1, 1) * W (DRN.md)
ETA = 0.05  # DBGD step size towards a winning explore network (DRN.md)


class Noise(StrEnum):
    """How W~'s U(-1, 1) is drawn."""

    ELEMENT = "element"  # one draw per weight (the default)
    TENSOR = "tensor"  # one scalar per tensor


class StepForm(StrEnum):
    """DBGD's step towards a winning W~."""

    STANDARD = "standard"  # W + eta (W~ - W)
    LITERAL = "literal"  # as the paper prints it: W + eta W~


Weights = dict[str, torch.Tensor]


def explore_weights(weights: Weights, seed: int, alpha: float = ALPHA, noise: Noise = Noise.ELEMENT) -> Weights:
    """W~ = W + alpha * U(-1, 1) * W for every float tensor; other tensors (integer buffers) are copied."""
    noise = option(Noise, noise, "noise")
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
        shape = w_cpu.shape if noise is Noise.ELEMENT else ()
        u = torch.rand(shape, generator=generator, dtype=w_cpu.dtype) * 2 - 1
        explored[key] = (w_cpu + alpha * u * w_cpu).to(w.device)
    return {key: explored[key] for key in weights}


def explorer_seeds(seed: int, count: int) -> list[int]:
    """The seeds of a multileaved round's `count` explore networks, distinct per round seed (63 bits, as rounds')."""
    return [(seed * 64 + j) % 2**63 for j in range(count)]


def mean_weights(sets: Sequence[Weights]) -> Weights:
    """The element-wise mean of several networks' weights (integer buffers: the first set's)."""
    first = sets[0]
    return {key: torch.stack([w[key] for w in sets]).mean(0) if first[key].is_floating_point() else first[key]
            for key in first}


def dbgd_step(weights: Weights, explore: Weights, eta: float = ETA, form: StepForm = StepForm.STANDARD) -> Weights:
    """Move W towards the winning W~: standard W + eta * (W~ - W), or literal W + eta * W~ (which also rescales W).

    Integer buffers keep W's values.
    """
    form = option(StepForm, form, "form")
    if weights.keys() != explore.keys():
        raise ValueError(f"weights and explore weights differ in keys: {sorted(weights.keys() ^ explore.keys())}")
    stepped: Weights = {}
    for key, w in weights.items():
        w = w.detach()
        if not w.is_floating_point():
            stepped[key] = w.clone()
        elif form is StepForm.STANDARD:
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
